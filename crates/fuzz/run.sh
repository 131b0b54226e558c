#!/usr/bin/env bash
# Runs every fuzz target (or those named in $TARGETS) for a bounded time, in one process each, and
# prints per target the inputs executed, executions per second and whether it crashed. Exits
# non-zero when any target crashed; the crashing input is left in artifacts/<target>/.
#
#   crates/fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The corpus in
# corpus/<target>/ is read, never written: what a run finds goes to a scratch directory, so
# the repository's corpus changes only by `cargo fuzz cmin` (see README.md). Leak detection is
# off: LeakSanitizer reports the thread-local destructors of threads the store's readers spawn
# (glibc's __cxa_thread_atexit_impl), not labaid's memory, and a leak is not what these look for.
set -euo pipefail

secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
read -ra targets <<<"${TARGETS:-request_decode journal_read snapshot_read audit_verify hl7_parse fhir_bundle}"

cargo +nightly fuzz build --fuzz-dir "$here" -O -a >&2
mkdir -p logs
failed=0
printf '%-15s %12s %9s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
    log="logs/$t.log"
    work=$(mktemp -d)
    mkdir -p "corpus/$t"
    set +e
    cargo +nightly fuzz run --fuzz-dir "$here" -O -a "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    rm -rf "$work"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        result="no crash"
    else
        failed=1
        why=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+|ERROR: AddressSanitizer: [a-z-]+' "$log" || true)
        result="CRASH (${why:-exit $rc}): see crates/fuzz/$log and crates/fuzz/artifacts/$t/"
    fi
    printf '%-15s %12s %9s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
exit "$failed"
