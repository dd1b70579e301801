#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/) with coverage and AddressSanitizer and
# runs each for a bounded time, starting from its committed seed corpus
# (Fuzz/corpus/<target>/). Prints executions per target; fails if a target
# crashes, leaks or breaks an invariant, keeping the input that did it.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]
#   -t SECONDS   run time per target (default $FUZZ_SECONDS, else 30)
#   TARGET       FuzzVfbRing FuzzVkbdRing FuzzVdisplRing FuzzGeometry FuzzXenstored
#                FuzzJSON FuzzQMPStream FuzzArgv FuzzRFB (default: all)
# Output (all under .build-fuzz/, which is the build's scratch path too):
#   corpus/<target>/     inputs found this run (the seeds are read only)
#   artifacts/<target>/  crash-*, leak-*, timeout-*, oom-* inputs
#   logs/<target>.log    libFuzzer's output
#   results.txt          target, executions, exec/s, new inputs, result
# Reproduce a crash: .build-fuzz/debug/<target> .build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
if [[ ${1:-} == -t ]]; then seconds=$2; shift 2; fi
all=(FuzzVfbRing FuzzVkbdRing FuzzVdisplRing FuzzGeometry FuzzXenstored FuzzJSON FuzzQMPStream FuzzArgv FuzzRFB)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
out=.build-fuzz
step() { echo "== fuzz.sh: $* ($(date +%T))"; }

# SwiftPM's --sanitize=fuzzer only links libFuzzer; coverage comes from
# -sanitize=fuzzer on every Swift compile. -parse-as-library because the
# targets have no top-level code (their entry is <Target>_main: SwiftPM links --defsym main=<Target>_main).
flags=(--scratch-path "$out" --sanitize=address -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library)
for t in "${targets[@]}"; do
    step "building $t"
    XENVFB_FUZZ=1 swift build "${flags[@]}" --product "$t" 2>&1 \
        | grep -vE '^\[[0-9]+/[0-9]+\]|Cannot export local symbol' || true
    [[ -x $out/debug/$t ]] || { echo "fuzz.sh: $t did not build" >&2; exit 1; }
done

mkdir -p "$out/logs"
results=$out/results.txt
printf '%-14s %12s %8s %6s  %s\n' target executions exec/s new result > "$results"
failed=0
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t artifacts=$out/artifacts/$t log=$out/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$corpus" -type f | wc -l)
    step "running $t for ${seconds}s"
    rc=0
    # detect_leaks: every input must free what it allocated (libFuzzer checks
    # per input). XCTest's own leaks at exit do not apply here.
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
        "$out/debug/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "Fuzz/corpus/$t" > "$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    new=$(( $(find "$corpus" -type f | wc -l) - before ))
    if [[ $rc -eq 0 ]]; then result=ok; else
        result="FAILED (rc $rc): $(ls "$artifacts" | tr '\n' ' ')"
        failed=1
        grep -E 'ERROR|invariant|Fatal error|SUMMARY' "$log" | head -5 || true
    fi
    printf '%-14s %12s %8s %6s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "$new" "$result" | tee -a "$results"
done
step "results ($results)"
cat "$results"
exit $failed
