#!/usr/bin/env bash
# Runs the test suite under AddressSanitizer and ThreadSanitizer, each in a
# scratch path of its own (.build-address, .build-thread), and prints how
# long each build and run took. Run scripts/test.sh first (it installs the
# Debian packages and the test tools the suite needs).
#
# Usage: scripts/sanitize.sh [address|thread]...   (default: both)
#   SANITIZE_SKIP_THREAD="Regex"  tests to skip under TSan (swift test --skip; see below)
#   SANITIZE_TIMEOUT=SECONDS      bound on each test run (default 1500)
#
# Under ASan:
# - ASAN_OPTIONS=detect_leaks=0: XCTest's own allocations are reported as
#   leaks at exit (allocations inside libXCTest); leaks in our parsers are caught per input
#   by scripts/fuzz.sh instead.
# - quarantine_size_mb=16: ASan keeps freed memory in a quarantine (256 MB by
#   default) to catch use-after-free, so a device model that churns through
#   VNC clients looks like it grows by tens of MB (34 -> 103 MB with the
#   default). With 16 MB, and ASan's size-class regions, 60 VNC clients
#   killed mid-frame still take it from 35 to 59 MB (the plain build: 17 ->
#   18 MB), so faults.py allows 56 MB of growth instead of 24 when
#   XENVFB_SANITIZER=address, which this script exports; QuotaAttackTests
#   likewise allow 80 MiB instead of 32 (the ASan build grew by up to 49.7).
# - handle_segv=0 and CrashChainingTests skipped: those tests crash a child
#   on purpose and check the Swift backtracer's report; under ASan the
#   backtracer's memory server reads the crashed stack and ASan reports that
#   read (dynamic-stack-buffer-overflow in CrashHandlerLinux.cpp), a report
#   about the runtime, not about xenvfb. They run in the plain and TSan suites.
# - DifferentialTests' aGuestGetsTheAnswersDebiansXenstoredGivesIt and
#   aGuestMeetsEachQuotaWhereDebiansXenstoredPutsIt (the same ring shim) skipped
#   (under TSan too): under either sanitizer it waits forever on Debian's
#   xenstored (run with the LD_PRELOAD ring shim); not yet understood. The
#   plain suite runs it.
#
# Under TSan, CrashChainingTests are skipped as well (the Swift backtracer
# they check trips TSan's own CHECKs), and EndToEndTests and
# XenStoreTests.ClientTests by default (SANITIZE_SKIP_THREAD overrides): libxenstore's watch thread is
# cancelled by xs_close while inside an intercepted read, and TSan aborts the
# whole run ("thread finished with ignores enabled"); with
# ignore_noninstrumented_modules=0 instead it reports lock inversions inside
# the Swift runtime's metadata cache. Those tests run under ASan.
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
            export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:handle_segv=0:quarantine_size_mb=16}
            skip=(--skip 'CrashChainingTests|aGuestGetsTheAnswersDebiansXenstoredGivesIt|aGuestMeetsEachQuotaWhereDebiansXenstoredPutsIt') ;;
        thread)
            t=${SANITIZE_SKIP_THREAD-EndToEndTests|XenStoreTests\.ClientTests|aGuestGetsTheAnswersDebiansXenstoredGivesIt|aGuestMeetsEachQuotaWhereDebiansXenstoredPutsIt|CrashChainingTests}
            [[ -n $t ]] && skip=(--skip "$t") ;;
        *) echo "sanitize.sh: unknown sanitizer $s (address or thread)" >&2; exit 2 ;;
    esac
    export XENVFB_SANITIZER=$s
    step "building with --sanitize=$s"
    t0=$(date +%s)
    swift build --build-tests --scratch-path "$scratch" --sanitize="$s" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
    swift build --build-tests --scratch-path "$scratch" --sanitize="$s" >/dev/null
    t1=$(date +%s)
    step "running the tests under --sanitize=$s ${skip[*]}"
    rc=0
    timeout -k 10 "${SANITIZE_TIMEOUT:-1500}" swift test --skip-build --scratch-path "$scratch" --sanitize="$s" "${skip[@]}" \
        > "$scratch/sanitize.log" 2>&1 || rc=$?
    [[ $rc -eq 124 ]] && echo "sanitize.sh: the $s run did not finish in ${SANITIZE_TIMEOUT:-1500} s" >&2
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
