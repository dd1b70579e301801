#!/usr/bin/env bash
# Regenerates scripts/xenvfb.order, the linker's --symbol-ordering-file for
# the xenvfb binary (Package.swift): the functions the device model runs,
# hottest first, as callgrind saw them while `xenvfb-bench backend` drove it
# through every setup (no display, Raw, ZRLE and Tight viewers, two viewers,
# the PNG display), libxl's and the real-Xen test's QMP commands, a resize
# from the first frame, key-to-screen, and shutdown.
#
# The order only moves code: a stale list (functions renamed since) costs
# resident memory, never correctness. Rerun it after larger changes and
# compare `scripts/memory.py` before and after (README, Performance: Memory).
# Needs valgrind (apt-get install valgrind). Valgrind cannot read this
# binary's DWARF, so it runs a copy with the debug information stripped.
# Usage: scripts/symbol-order.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
swift build -c release --static-swift-stdlib --product xenvfb
swift build -c release --static-swift-stdlib --product xenvfb-bench
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$bin/xenvfb" "$work/xenvfb.real"
strip --strip-debug "$work/xenvfb.real"
cp "$bin/xenvfb-bench" "$work/"
# xenvfb-bench runs ./xenvfb next to itself: the device model goes under callgrind.
cat > "$work/xenvfb" <<WRAP
#!/bin/sh
case " \$* " in
  *" --domid "*) exec valgrind -q --tool=callgrind --callgrind-out-file=$work/callgrind.%p.out --dump-instr=no \
                   --collect-jumps=no --demangle=no $work/xenvfb.real "\$@" ;;
  *) exec $work/xenvfb.real "\$@" ;;
esac
WRAP
chmod +x "$work/xenvfb"
"$work/xenvfb-bench" backend --seconds 2 --rounds 3 --workloads cursor,band,video,terminal
python3 scripts/symbol-order.py xenvfb.real "$work"/callgrind.*.out | grep -v '^0x' | awk '!seen[$0]++' > scripts/xenvfb.order
echo "symbol-order.sh: $(wc -l < scripts/xenvfb.order) functions in scripts/xenvfb.order" >&2
