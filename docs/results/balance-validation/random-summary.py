#!/usr/bin/env python3
"""The validation probes of random-small.sh's runs, per tag and seed (never M* or the reported Dt).

    docs/results/balance-validation/random-summary.py DIR TAG[,TAG…] SEED[,SEED…]

distance = |membership AUC − 50| + max(0, Df accuracy − validation accuracy), at step 0 (M0) and
at the kept adapter: how far Df is from looking like unseen data on the probes; dDr = the Dr
probe's accuracy, kept minus M0's.
"""
import json
import sys

R, tags, seeds = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
dist = lambda x: abs(x["membership_auc"] - 50) + max(0, x["forget_accuracy"] - x["validation_accuracy"])
for tag in tags:
    total = 0.0
    for seed in seeds:
        for p in [1, 5, 10]:
            d = json.load(open(f"{R}/{tag}-s{seed}-r{p}/rfa/unlearn_log.json"))
            s = d["stop"]
            ch = {x["step"]: x for x in s["checks"]}
            k, m0 = ch[s["kept_step"]], ch[0]
            sel = d.get("selected") or {}
            secs = d["stats_seconds"] + s["check_seconds"] + sum(x["seconds"] for x in d["steps"])
            total += dist(k)
            print(
                f'{tag} s{seed} r{p:<2} {s["reason"]:12s} stop {s["stopped_after_step"]:3d} kept {s["kept_step"]:3d} '
                f'distance {dist(m0):5.1f} -> {dist(k):5.1f}  dDr {k["retain_accuracy"] - m0["retain_accuracy"]:+5.1f}  '
                f'AUC {m0["membership_auc"]:.1f}->{k["membership_auc"]:.1f}  Df {m0["forget_accuracy"]:.1f}->{k["forget_accuracy"]:.1f}  '
                f'val {m0["validation_accuracy"]:.1f}->{k["validation_accuracy"]:.1f}  '
                f'selected {sel.get("samples", "all")}/{sel.get("of", "")}  {secs:.2f} s'
            )
    print(f"{tag}: sum of kept distances {total:.1f}")
