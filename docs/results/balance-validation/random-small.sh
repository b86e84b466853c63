#!/usr/bin/env bash
# Validation round of unlearn.balance for random requests: a development seed's M0 on the demo
# subset, random 1 / 5 / 10 %, RFA with the given overrides; the probe checks only.
#   RFA_BIN=target/release/rfa docs/results/balance-validation/random-small.sh DIR TAG SEED [--set k=v ...]
set -uo pipefail
B=${RFA_BIN:-target/release/rfa}
R=${1:?usage: random-small.sh DIR TAG SEED [--set ...]}
tag=$2 seed=$3; shift 3
[ -e $R/m0-s$seed/original ] || $B train --runs-dir $R --name m0-s$seed --seed $seed --forget class:0 >/dev/null 2>&1
for p in 1 5 10; do
  name=$tag-s$seed-r$p
  rm -rf $R/$name; mkdir -p $R/$name; cp -r $R/m0-s$seed/original $R/$name/original
  $B train --runs-dir $R --name $name --seed $seed --forget random:$p >/dev/null 2>&1 || echo "train r$p failed"
  $B unlearn --runs-dir $R --name $name --seed $seed --forget random:$p --method rfa "$@" >/dev/null 2>&1 || echo "r$p failed"
done
python3 - "$R" "$tag" "$seed" <<'PY'
import json,sys
R,tag,seed=sys.argv[1:]
for p in [1,5,10]:
    d=json.load(open(f"{R}/{tag}-s{seed}-r{p}/rfa/unlearn_log.json"))
    s=d["stop"]; ch={x["step"]:x for x in s["checks"]}; k=ch[s["kept_step"]]; m0=ch[0]
    dist=lambda x: abs(x["membership_auc"]-50)+max(0,x["forget_accuracy"]-x["validation_accuracy"])
    print(f'r{p} {s["reason"]:12s} stop {s["stopped_after_step"]:3d} kept {s["kept_step"]:3d} distance {dist(m0):5.1f} -> {dist(k):5.1f} dDr {k["retain_accuracy"]-m0["retain_accuracy"]:+5.1f}')
PY
