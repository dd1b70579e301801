#!/usr/bin/env bash
# Nobody can hold the device model: Tests/EndToEndTests/attack.py on the
# release build, with the 50 ms goal for QMP's p99 (README, "What a guest and
# its clients cannot do"). Builds xenvfb and xenvfb-testtool in release mode.
# Usage: scripts/attack.sh [SECONDS] [P99_LIMIT_MS]   (default 8 s, 50 ms)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
scripts/test-tools.sh
echo "== attack.sh: building (release, as debian/rules builds it) ($(date +%T))"
# The flags of debian/rules: after scripts/package.sh this rebuilds nothing
# but the test tool.
build=(swift build -c release --static-swift-stdlib -Xlinker -z -Xlinker now)
"${build[@]}" --product xenvfb 2>&1 | grep -E 'error|warning:' || true
"${build[@]}" --product xenvfb-testtool 2>&1 | grep -E 'error|warning:' || true
echo "== attack.sh: running ($(date +%T))"
exec .build-tools/venv/bin/python3 Tests/EndToEndTests/attack.py --standalone "$("${build[@]}" --show-bin-path)/xenvfb" "${1:-8}" "${2:-50}"
