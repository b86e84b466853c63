#!/usr/bin/env bash
# Validation round at full size: the development M0 of seed 7 (60,000 images; made by
# docs/results/full-size-cpu/run.sh's commands with --seed 7), classes forgotten by RFA with the
# given overrides, two CPU replicas; prints each check (step: share / Dr accuracy / λ multiple).
#   RFA_BIN=... docs/results/balance-validation/classes-full.sh DIR M0_DIR TAG "CLASSES" [--set ...]
set -uo pipefail
B=${RFA_BIN:-target/release/rfa}
R=${1:?usage} m0=${2:?usage} tag=${3:?usage} classes=${4:?usage}; shift 4
data=$HOME/.cache/rfa-assets/fashion-mnist
for c in $classes; do
  name=$tag-class$c-s7
  rm -rf $R/$name; mkdir -p $R/$name; cp -r $m0 $R/$name/original
  common=(--runs-dir $R --name $name --seed 7 --forget class:$c --set data.path=$data --devices 2)
  $B train "${common[@]}" > /dev/null 2>&1
  $B unlearn "${common[@]}" --method rfa "$@" > /dev/null 2>&1 || echo "class $c failed"
  python3 - $R/$name/rfa/unlearn_log.json $c <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); s=d["stop"]
t=s["check_seconds"]+d["stats_seconds"]+sum(x["seconds"] for x in d["steps"])
print(f'class {sys.argv[2]}:', s["reason"], "after", s["stopped_after_step"], "kept", s["kept_step"], "floor", round(s["retain_floor"],2), f"{t:.1f}s |", " ".join(f'{x["step"]}:{x["forgotten_class_share"]:.1f}/{x["retain_accuracy"]:.1f}/x{x.get("lambda_scale") or 1:g}' for x in s["checks"]))
PY
done
