#!/bin/bash
# Two labaid-broker builds under one labaid-bench, in pairs whose order alternates (A then B,
# then B then A) so that neither build always runs on the heels of the other; prints each pair's
# B/A ratio of durable submissions and dispatches a second and their medians. Use the older of
# the two builds' labaid-bench, so that both brokers meet the same load.
#
#   benches/compare_builds.sh BENCH BROKER_A BROKER_B [PAIRS] [DURATION]   # 8 pairs, 10s
#
# A broker newer than the bench may refuse its calls on limits the bench did not know to raise
# (the audit volume budget, say): give a wrapper script as that broker which adds them to the
# `[limits]` of the config the bench passes with `--config`.
set -euo pipefail
bench=${1:?labaid-bench to drive both}
a=${2:?first labaid-broker}
b=${3:?second labaid-broker}
pairs=${4:-8}
duration=${5:-10s}
out=$(mktemp -d "${TMPDIR:-/tmp}/compare-builds-XXXXXX")
trap 'rm -rf "$out"' EXIT

for i in $(seq 1 "$pairs"); do
  if (( i % 2 )); then order="a b"; else order="b a"; fi
  for which in $order; do
    if [[ $which == a ]]; then broker=$a; else broker=$b; fi
    "$bench" --broker "$broker" --scenario submit --scenario dispatch --duration "$duration" \
      --json >"$out/$which-$i.json" 2>"$out/$which-$i.err" ||
      { echo "pair $i, build $which failed: $(tail -1 "$out/$which-$i.err")" >&2; exit 1; }
  done
done

python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def rates(path):
    scenarios = {s["name"]: s for s in json.load(open(path))["scenarios"]}
    return {
        "submit": scenarios["submit"]["phases"][0]["per_second"],
        "dispatch": scenarios["dispatch"]["phases"][-1]["per_second"],
    }
for scenario in ("submit", "dispatch"):
    a = [rates(f"{out}/a-{i}.json")[scenario] for i in range(1, pairs + 1)]
    b = [rates(f"{out}/b-{i}.json")[scenario] for i in range(1, pairs + 1)]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{scenario}: A {statistics.median(a):,.0f}/s, B {statistics.median(b):,.0f}/s; "
          f"B/A per pair {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
PY
