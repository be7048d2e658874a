#!/bin/bash
# Fleet mode's kernel cost: 100,000 CrowdSec addresses loaded into the
# cs4 set in one nft transaction, then a delta of 10,000 (5,000 added,
# 5,000 lifted); medians of 5 rounds. Runs the kernel crate's live test
# `crowdsec_sets_drop_lift_and_yield_to_the_allowlist` (root; its own
# network namespaces, removed afterwards), which prints both timings and
# fails unless all 100,000 are listed. Targets (issue 10): < 2 s, < 0.5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
ROUNDS=${ROUNDS:-5}
nice -n 19 cargo test -q -p portcullis-kernel --profile ci --test live --no-run
full=(); delta=()
for i in $(seq "$ROUNDS"); do
  out=$(cargo test -q -p portcullis-kernel --profile ci --test live -- \
        crowdsec_sets_drop_lift_and_yield_to_the_allowlist --exact --nocapture 2>&1)
  line=$(grep -o 'loaded in [0-9.]*[mµ]*s; a delta of 10,000 in [0-9.]*[mµ]*s' <<<"$out") \
    || { echo "$out" >&2; exit 1; }
  ms() { awk '{ v=$1; if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /µs$/) { sub(/µs$/,"",v); print v/1000 } else { sub(/s$/,"",v); print v*1000 } }' <<<"$1"; }
  f=$(ms "$(awk '{print $3}' <<<"$line" | tr -d ';')"); d=$(ms "$(awk '{print $NF}' <<<"$line")")
  full+=("$f"); delta+=("$d")
  echo "round $i: 100k load ${f} ms, 10k delta ${d} ms"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median of $ROUNDS: 100,000 decisions in $(median "${full[@]}") ms (target < 2000); delta of 10,000 in $(median "${delta[@]}") ms (target < 500)"
