#!/usr/bin/env bash
# Runs the test suite under AddressSanitizer and ThreadSanitizer, each in a
# scratch path of its own (.build-address, .build-thread), and prints how
# long each build and run took. Run scripts/test.sh first (it installs the
# Debian packages and the test tools the suite needs).
#
# Usage: scripts/sanitize.sh [address|thread]...   (default: both)
#   SANITIZE_SKIP_THREAD="Regex"  extra tests to skip under TSan (swift test --skip)
#
# Under ASan:
# - ASAN_OPTIONS=detect_leaks=0: XCTest's own allocations are reported as
#   leaks at exit (reference §6); leaks in our parsers are caught per input
#   by scripts/fuzz.sh instead.
# - handle_segv=0 and CrashChainingTests skipped: those tests crash a child
#   on purpose and check the Swift backtracer's report; under ASan the
#   backtracer's memory server reads the crashed stack and ASan reports that
#   read (dynamic-stack-buffer-overflow in CrashHandlerLinux.cpp), a report
#   about the runtime, not about xenvfb. They run in the plain and TSan suites.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizers=("$@")
[[ ${#sanitizers[@]} -gt 0 ]] || sanitizers=(address thread)
step() { echo "== sanitize.sh: $* ($(date +%T))"; }
summary=()
failed=0
for s in "${sanitizers[@]}"; do
    scratch=.build-$s
    skip=()
    case $s in
        address)
            export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:handle_segv=0}
            skip=(--skip CrashChainingTests) ;;
        thread)
            [[ -n ${SANITIZE_SKIP_THREAD:-} ]] && skip=(--skip "$SANITIZE_SKIP_THREAD") ;;
        *) echo "sanitize.sh: unknown sanitizer $s (address or thread)" >&2; exit 2 ;;
    esac
    step "building with --sanitize=$s"
    t0=$(date +%s)
    swift build --build-tests --scratch-path "$scratch" --sanitize="$s" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
    swift build --build-tests --scratch-path "$scratch" --sanitize="$s" >/dev/null
    t1=$(date +%s)
    step "running the tests under --sanitize=$s ${skip[*]}"
    rc=0
    swift test --skip-build --scratch-path "$scratch" --sanitize="$s" "${skip[@]}" > "$scratch/sanitize.log" 2>&1 || rc=$?
    t2=$(date +%s)
    reports=$(grep -cE '^(==[0-9]+==ERROR: AddressSanitizer|WARNING: ThreadSanitizer)' "$scratch/sanitize.log" || true)
    tail -3 "$scratch/sanitize.log"
    line="$s: build $((t1 - t0)) s, tests $((t2 - t1)) s, exit $rc, $reports sanitizer reports (log $scratch/sanitize.log)"
    summary+=("$line")
    if [[ $rc -ne 0 || $reports -ne 0 ]]; then
        failed=1
        grep -nE -A12 '^(==[0-9]+==ERROR: AddressSanitizer|WARNING: ThreadSanitizer)' "$scratch/sanitize.log" | head -60 || true
        grep -E '✘.*(failed|issue)' "$scratch/sanitize.log" | head -20 || true
    fi
done
step "results"
printf '%s\n' "${summary[@]}"
exit $failed
