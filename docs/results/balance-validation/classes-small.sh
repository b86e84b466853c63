#!/usr/bin/env bash
# Validation round of unlearn.balance (2026-12-07): a development seed's M0 on the demo subset,
# every class forgotten by RFA with the given overrides; prints what the stop rule read (the
# probes), never M* or the reported Dt.
#   RFA_BIN=target/release/rfa docs/results/balance-validation/classes-small.sh DIR TAG SEED [--set k=v ...]
set -uo pipefail
B=${RFA_BIN:-target/release/rfa}
R=${1:?usage: classes-small.sh DIR TAG SEED [--set ...]}
tag=$2 seed=$3; shift 3
[ -e $R/m0-s$seed/original ] || $B train --runs-dir $R --name m0-s$seed --seed $seed --forget class:0 >/dev/null 2>&1
for c in 0 1 2 3 4 5 6 7 8 9; do
  name=$tag-s$seed-c$c
  rm -rf $R/$name; mkdir -p $R/$name; cp -r $R/m0-s$seed/original $R/$name/original
  $B train --runs-dir $R --name $name --seed $seed --forget class:$c >/dev/null 2>&1
  $B unlearn --runs-dir $R --name $name --seed $seed --forget class:$c --method rfa "$@" >/dev/null 2>&1 || echo "c$c failed"
done
python3 - "$R" "$tag" "$seed" <<'PY'
import json,sys
R,tag,seed=sys.argv[1:]
ok=0;tot=0
for c in range(10):
    d=json.load(open(f"{R}/{tag}-s{seed}-c{c}/rfa/unlearn_log.json"))
    s=d["stop"]; ch={x["step"]:x for x in s["checks"]}; k=ch[s["kept_step"]]; m0=ch[0]
    t=s["check_seconds"]+d["stats_seconds"]+sum(x["seconds"] for x in d["steps"])
    ok+= s["reason"]=="forgotten"; tot+=t
    print(f'c{c} {s["reason"]:12s} stop {s["stopped_after_step"]:3d} kept {s["kept_step"]:3d} share {k["forgotten_class_share"]:5.1f} dDr {k["retain_accuracy"]-m0["retain_accuracy"]:+5.1f} val {k["validation_accuracy"]:.0f} ({m0["validation_accuracy"]:.0f}) {t:.2f}s')
print(f"{tag} seed {seed}: forgotten within guard {ok}/10, total {tot:.1f}s")
PY
