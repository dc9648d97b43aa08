#!/usr/bin/env bash
# Fuzzes geosync's decoders of untrusted bytes with cargo-fuzz (libFuzzer):
#   resp        geosync::source::resp::parse (the master's replication stream)
#   rdb         geosync::source::rdb::RdbReader (the full-resync snapshot)
#   peer_batch  geosync::base::change::decode_batch + Value::to_flat/from_flat
#   handshake   geosync::mesh::server::caller_refusal + security::binds_node_der
#               (what a caller sends before any batch, and its certificate)
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#        FUZZ_TARGETS="rdb resp" scripts/fuzz.sh 300   (a subset)
#
# Each target starts from its seeds in fuzz/corpus/<target>/ plus what earlier
# runs found in fuzz/work/<target>/ (not committed; new inputs go there, so the
# seed corpus stays small). Prints the executions and execs/s of each target;
# exits non-zero if any target crashed, timed out or ran out of memory,
# leaving the input under fuzz/artifacts/<target>/ (see
# tests/fuzz_regressions.rs for turning it into a regression test).
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...) to rustc.
# The machines have only a stable toolchain, and RUSTC_BOOTSTRAP=1 makes it
# accept them: the stable toolchain ships the AddressSanitizer runtime. Should
# the ASan build fail, the targets are rebuilt without a sanitizer (Rust's own
# checks, debug assertions and overflow checks, still catch the bugs that
# matter in safe code).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || (( secs < 1 )); then
  echo "usage: $0 [SECONDS_PER_TARGET]   (a whole number, default 60)" >&2
  exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-resp rdb peer_batch handshake}"

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

sanitizer=address
echo "==> building fuzz targets (sanitizer: $sanitizer)" >&2
if ! cargo fuzz build --sanitizer "$sanitizer" >&2; then
  sanitizer=none
  echo "==> the ASan build failed; building without a sanitizer" >&2
  cargo fuzz build --sanitizer none >&2
fi

bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"

status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  before=$(ls "artifacts/$t" | sort)
  echo "==> fuzzing $t for ${secs}s (log: fuzz/$log)" >&2
  rc=0
  # Run the binaries built above, not `cargo fuzz run`, so that edits to src/
  # made while this runs are not rebuilt between targets. As cargo fuzz does:
  # artifacts go to artifacts/<target>/. -timeout: an input taking over 10 s
  # is a hang (left as timeout-*); -rss_limit_mb: over 2 GiB is a memory
  # blow-up (left as oom-*).
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$bin_dir/$t" \
    -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 "work/$t" "corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log" | tail -n1)
  rate=$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$log" | tail -n1)
  corpus=$(ls "work/$t" | wc -l)
  new=$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | sed '/^$/d')
  if (( rc != 0 )) || [[ -n $new ]]; then
    status=1
    echo "!! $t FAILED (exit $rc); last lines of fuzz/$log:" >&2
    grep -E '^(thread .* panicked|==[0-9]+==ERROR|SUMMARY|.*deadly signal|.*Test unit written)' "$log" | head -n 20 >&2 || true
    tail -n 40 "$log" >&2
    for a in $new; do echo "   input: fuzz/artifacts/$t/$a" >&2; done
    summary+=("$(printf '%-11s FAILED   executions %-10s execs/s %-7s (see fuzz/artifacts/%s/)' "$t" "${execs:-?}" "${rate:-?}" "$t")")
  else
    summary+=("$(printf '%-11s ok       executions %-10s execs/s %-7s corpus %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus")")
  fi
done

echo "==> fuzz summary (${secs}s per target, sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$status"
