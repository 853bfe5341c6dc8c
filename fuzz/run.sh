#!/usr/bin/env bash
# On-demand fuzz run: every target side by side, one libFuzzer process each, niced.
#
#   fuzz/run.sh [SECONDS [TARGET...]]   # default: 600 s (the issue's 10 minutes), every target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain
# (`cargo +nightly`; cargo-fuzz builds with -Zsanitizer=address). Without
# nightly, it falls back to stable with RUSTC_BOOTSTRAP=1 (usually works).
# Corpora grow in fuzz/corpus/TARGET (ignored by git); the committed seeds in
# fuzz/seeds/TARGET are read too. A crash lands in fuzz/artifacts/TARGET and
# the run fails; turn it into a regression test (see fuzz/README.md).
# Prints each target's executions and result; logs in fuzz/target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
[ $# -gt 0 ] && targets=("$@") || targets=(clienthello proxyheader httphead config)
toolchain=+nightly
if ! cargo +nightly --version >/dev/null 2>&1; then
  toolchain=
  export RUSTC_BOOTSTRAP=1
fi
cargo $toolchain fuzz build -O -a
logs=target/fuzz-logs
mkdir -p "$logs"

# Per target: libFuzzer -max_len (the clienthello stream carries a 3-byte
# header; 4 KiB covers the largest real hello, ~2 KiB, with room to spare,
# and small caps in the header reach every TooLarge path; the proxyheader
# stream covers the 4 KiB header cap and what follows) and the per-input
# time limit that counts as a hang (a parse takes microseconds).
declare -A max_len=([clienthello]=4096 [proxyheader]=8192 [httphead]=4096 [config]=8192)
pids=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  nice -n 10 cargo $toolchain fuzz run -O -a "$target" "corpus/$target" "seeds/$target" "regressions/$target" -- \
    -max_total_time="$secs" -max_len="${max_len[$target]}" \
    -timeout=5 -rss_limit_mb=1024 -malloc_limit_mb=256 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || status=1
done
for target in "${targets[@]}"; do
  log=$logs/$target.log
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
  crash=$(grep -cE '^==[0-9]+==ERROR|panicked at|Test unit written' "$log" || true)
  echo "$target: executions=${runs:-?} crash_reports=$crash log=fuzz/$log"
done
exit $status
