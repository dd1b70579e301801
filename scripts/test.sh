#!/usr/bin/env bash
# Installs what the tests need, builds, and runs the whole test suite.
# Usage: scripts/test.sh [extra swift test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== test.sh: $* ($(date +%T))"; }
step "installing Debian packages"
scripts/deps.sh test
step "preparing test tools"
scripts/test-tools.sh
step "building"
swift build --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
swift build --build-tests >/dev/null
step "running the tests"
swift test --skip-build "$@"
step "checking the man page"
mandoc -Tlint -W warning man/xenvfb.1
step "done"
