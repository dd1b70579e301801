#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/) with coverage and AddressSanitizer and
# runs them, starting from their committed corpus (Fuzz/corpus/<target>/).
# Fails if a target crashes, leaks or breaks an invariant, keeping the input
# that did it.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]
#        scripts/fuzz.sh --long [--runs N] [--cap SECONDS] [--workers N] [TARGET...]
#   -t SECONDS   short mode (CI): run each target for SECONDS (default
#                $FUZZ_SECONDS, else 30) in one process; the committed corpus
#                is only read
#   --long       long mode: run each target, one after the other, to N
#                executions (default 10000000) with libFuzzer's fork mode on
#                --workers processes (default 2) under nice -n 10, stopping
#                at --cap seconds per target (default 10800) if N is not
#                reached; then add to Fuzz/corpus/<target>/ a minimal set of
#                the inputs found that reach features it does not
#                (-merge=1), to be committed. Allocation stacks are not recorded
#                (malloc_context_size=0, about 25% faster); rerun a crashing
#                input without --long options for the full report.
#   TARGET       FuzzVfbRing FuzzVkbdRing FuzzVdisplRing FuzzGeometry FuzzXenstored
#                FuzzJSON FuzzQMPStream FuzzArgv FuzzRFB (default: all)
# Output (all under .build-fuzz/, which is the build's scratch path too):
#   corpus/<target>/     inputs found (short mode; long mode's working set)
#   crashes/<target>/    crash-*, leak-*, timeout-*, oom-* inputs (not artifacts/:
#                        SwiftPM empties that one in its scratch path on every build)
#   logs/<target>.log    libFuzzer's output
#   results.txt          per target: executions, exec/s, coverage (cov: edges,
#                        ft: features, as libFuzzer counts them), corpus, result
# Reproduce a crash: .build-fuzz/release/<target> .build-fuzz/crashes/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
long=0 runs=10000000 cap=10800 workers=2
while [[ $# -gt 0 ]]; do
    case $1 in
        -t) seconds=$2; shift 2 ;;
        --long) long=1; shift ;;
        --runs) runs=$2; shift 2 ;;
        --cap) cap=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
all=(FuzzVfbRing FuzzVkbdRing FuzzVdisplRing FuzzGeometry FuzzXenstored FuzzJSON FuzzQMPStream FuzzArgv FuzzRFB)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
out=.build-fuzz bin=.build-fuzz/release
step() { echo "== fuzz.sh: $* ($(date +%T))"; }

# SwiftPM's --sanitize=fuzzer only links libFuzzer; coverage comes from
# -sanitize=fuzzer on every Swift compile. -parse-as-library because the
# targets have no top-level code (their entry is <Target>_main: SwiftPM links --defsym main=<Target>_main).
# Optimized (-c release, as libFuzzer advises for its targets): about 3 times
# the executions of -Onone. Swift's -O keeps every check that traps on hostile
# input (bounds, overflow, nil unwrap, precondition, exclusivity); it drops
# only assert() and debugPrecondition(), which Sources/ does not use.
# -enable-testing: two targets use @testable import.
flags=(-c release -Xswiftc -enable-testing --scratch-path "$out" --sanitize=address -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library)
for t in "${targets[@]}"; do
    step "building $t"
    XENVFB_FUZZ=1 swift build "${flags[@]}" --product "$t" 2>&1 \
        | grep -vE '^\[[0-9]+/[0-9]+\]|Cannot export local symbol' || true
    [[ -x $out/release/$t ]] || { echo "fuzz.sh: $t did not build" >&2; exit 1; }
done

mkdir -p "$out/logs"
results=$out/results.txt
# The field of libFuzzer's last status line ("#N: cov: C ft: F corp: K ...",
# "#N DONE cov: ..." in one process) named by $2.
status_field() { grep -E '^#[0-9]+' "$1" | tail -1 | sed -nE "s/.* $2: ([0-9]+).*/\1/p"; }

if [[ $long -eq 0 ]]; then
    printf '%-14s %12s %8s %6s  %s\n' target executions exec/s new result > "$results"
else
    printf '%-14s %12s %8s %6s %6s %11s %7s  %s\n' target executions exec/s cov ft corpus seconds result > "$results"
fi
failed=0
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t artifacts=$out/crashes/$t log=$out/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "Fuzz/corpus/$t"
    before=$(find "$corpus" -type f | wc -l)
    committed=$(find "Fuzz/corpus/$t" -type f | wc -l)
    rc=0
    start=$(date +%s)
    if [[ $long -eq 0 ]]; then
        step "running $t for ${seconds}s"
        # detect_leaks: every input must free what it allocated (libFuzzer checks
        # per input). XCTest's own leaks at exit do not apply here.
        SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
            "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
            -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "Fuzz/corpus/$t" > "$log" 2>&1 || rc=$?
    else
        step "running $t to $runs executions on $workers workers (at most ${cap}s)"
        # Fork mode: the workers' new inputs are merged into $corpus; the
        # first crash stops the run (its input is in $artifacts).
        SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:malloc_context_size=0} \
            nice -n 10 "$bin/$t" -fork="$workers" -runs="$runs" -max_total_time="$cap" -timeout=10 \
            -rss_limit_mb=2048 -max_len=8192 -artifact_prefix="$artifacts/" "$corpus" "Fuzz/corpus/$t" > "$log" 2>&1 || rc=$?
    fi
    elapsed=$(( $(date +%s) - start ))
    if [[ $long -eq 0 ]]; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    else
        execs=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -nE 's/^#([0-9]+).*/\1/p')
        speed=$(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) ))
    fi
    if [[ $rc -eq 0 ]]; then result=ok; else
        result="FAILED (rc $rc): $(ls "$artifacts" | tr '\n' ' ')"
        failed=1
        grep -E 'ERROR|invariant|Fatal error|SUMMARY' "$log" | head -5 || true
    fi
    if [[ $long -eq 0 ]]; then
        new=$(( $(find "$corpus" -type f | wc -l) - before ))
        printf '%-14s %12s %8s %6s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "$new" "$result" | tee -a "$results"
        continue
    fi
    # Into the committed corpus go only the inputs found that reach
    # features it does not (-merge=1 keeps what is there, seeds included,
    # and adds a minimal set of the rest).
    step "merging what $t found into Fuzz/corpus/$t (-merge=1)"
    if ! SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:malloc_context_size=0 nice -n 10 "$bin/$t" \
            -merge=1 -timeout=10 -rss_limit_mb=2048 -max_len=8192 "Fuzz/corpus/$t" "$corpus" > "$log.merge" 2>&1; then
        echo "fuzz.sh: merging $t's corpus failed (see $log.merge)" >&2
        failed=1
    fi
    printf '%-14s %12s %8s %6s %6s %11s %7s  %s\n' "$t" "${execs:-?}" "$speed" "$(status_field "$log" cov)" \
        "$(status_field "$log" ft)" "$committed→$(find "Fuzz/corpus/$t" -type f | wc -l)" "$elapsed" "$result" | tee -a "$results"
done
step "results ($results)"
cat "$results"
exit $failed
