#!/usr/bin/env bash
# On-demand heavy variants of tests/hardening.rs (the CI-sized ones run with
# `cargo test`): the same test code with the issue's full sizes.
#
#   benches/hardening/flood.sh            # 5,000 slowloris, 20,000 flooding sources
#   SLOWLORIS=N SOURCES=N LEGIT=N benches/hardening/flood.sh
#
# Runs the release build and prints each test's figures line (connections,
# close times, legitimate rounds and errors, sniroute's RSS before and at
# peak, descriptors, CPU). Needs Linux (/proc) and about 2 x SLOWLORIS
# descriptors: the open-files limit is raised here, both soft and hard.
set -euo pipefail
cd "$(dirname "$0")/../.."

slowloris=${SLOWLORIS:-5000}
sources=${SOURCES:-20000}
legit=${LEGIT:-100}
# Each slowloris connection costs a descriptor on each side, in separate
# processes; the margin covers legitimate clients, backends and the harness.
want=$((slowloris + sources / 10 + 4096))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
  ulimit -Hn "$want" 2>/dev/null || echo "note: cannot raise the hard open-files limit above $hard" >&2
fi
ulimit -Sn "$(ulimit -Hn)"
echo "open-files limit: $(ulimit -Sn); slowloris=$slowloris flood sources=$sources legit rounds>=$legit"

SNIROUTE_SLOWLORIS=$slowloris SNIROUTE_FLOOD_SOURCES=$sources SNIROUTE_LEGIT=$legit \
  cargo test --release --test hardening -- --nocapture --test-threads=1 2>&1 |
  tee target/hardening-flood.log |
  grep -E '^(slowloris|flood|fd exhaustion|backend faults|slow reader|client faults):|^test |^test result'
