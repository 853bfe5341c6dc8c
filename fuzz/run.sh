#!/usr/bin/env bash
# On-demand fuzz run: every target, one libFuzzer process each, niced, at
# most FUZZ_JOBS (default 2) at a time so a shared machine keeps a core.
#
#   fuzz/run.sh [SECONDS [TARGET...]]   # default: 600 s per target, every target
#   FUZZ_JOBS=1 fuzz/run.sh 900         # one target at a time, 15 min each
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain
# (`cargo +nightly`; cargo-fuzz builds with -Zsanitizer=address). Without
# nightly, it falls back to stable with RUSTC_BOOTSTRAP=1 (usually works).
# Corpora grow in fuzz/corpus/TARGET (ignored by git); the committed seeds in
# fuzz/seeds/TARGET are read too. A crash lands in fuzz/artifacts/TARGET and
# the run fails; turn it into a regression test (see fuzz/README.md).
# Prints each target's executions, coverage (cov/ft), corpus size and result;
# logs in fuzz/target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
jobs=${FUZZ_JOBS:-2}
[ $# -gt 0 ] && targets=("$@") || targets=(clienthello proxyheader httphead config)
toolchain=+nightly
if ! cargo +nightly --version >/dev/null 2>&1; then
  toolchain=
  export RUSTC_BOOTSTRAP=1
fi
nice -n 19 cargo $toolchain fuzz build -O -a
logs=target/fuzz-logs
mkdir -p "$logs"

# Per target: libFuzzer -max_len (the clienthello stream carries a 3-byte
# header; 4 KiB covers the largest real hello, ~2 KiB, with room to spare,
# and small caps in the header reach every TooLarge path; the same for an
# httphead request head; the proxyheader stream covers the 4 KiB header cap
# and what follows; 16 KiB of config text holds the whole example file) and the per-input
# time limit that counts as a hang (a parse takes microseconds).
declare -A max_len=([clienthello]=4096 [proxyheader]=8192 [httphead]=4096 [config]=16384)
status=0
running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
  mkdir -p "corpus/$target"
  # libFuzzer writes new inputs to the first directory and stops at a
  # missing one: regressions/TARGET exists only once something was found.
  dirs=("corpus/$target" "seeds/$target")
  if [ -d "regressions/$target" ]; then dirs+=("regressions/$target"); fi
  echo "$(date -u +%H:%M:%S) $target: ${secs} s, log fuzz/$logs/$target.log"
  nice -n 19 cargo $toolchain fuzz run -O -a "$target" "${dirs[@]}" -- \
    -max_total_time="$secs" -max_len="${max_len[$target]}" \
    -timeout=5 -rss_limit_mb=1024 -malloc_limit_mb=256 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1 &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done
for target in "${targets[@]}"; do
  log=$logs/$target.log
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}' || true)
  # The last status line: `#N DONE cov: C ft: F corp: U/SIZE ...`.
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 || true)
  # libFuzzer's own reports (`==PID== ERROR: libFuzzer: ...`: crash, timeout,
  # OOM), ASan's (`==PID==ERROR: AddressSanitizer`) and Rust panics.
  crash=$(grep -cE '^==[0-9]+== ?ERROR|panicked at' "$log" || true)
  echo "$target: executions=${runs:-?} ${cov:-cov: ?} crash_reports=$crash log=fuzz/$log"
  for artifact in "artifacts/$target"/*; do
    if [ -e "$artifact" ]; then echo "  artifact: fuzz/$artifact"; fi
  done
done
exit $status
