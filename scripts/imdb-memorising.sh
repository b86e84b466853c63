#!/usr/bin/env bash
# Random forgetting on IMDB with a memorising all-MiniLM-L6-v2 (configs/imdb-minilm-memorising.toml):
# random 5 % and 10 %, RFA with its defaults next to M0, M* and grad-ascent / NPO / SalUn (LoRA,
# lr 1e-3); and, for 10 %, RFA with the targets from all of Dr (`unlearn.stats_precision = 0`) in
# a twin run folder sharing M0 and M*, to show what estimating the targets from a sample changes.
# Writes docs/results/sweep/imdb-memorising/cases.json.
#   scripts/imdb-memorising.sh [RUNS_DIR] [DEVICE]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-runs/imdb-memorising}
device=${2:-cpu-flex}
rfa=${RFA_BIN:-$root/target/release/rfa}
seed=${SEED:-0}
mkdir -p "$runs"
first=
run_case() { # NAME SHARE [extra --set for RFA]
  local name=$1 share=$2; shift 2
  local common=(--config "$root/configs/imdb-minilm-memorising.toml" --runs-dir "$runs"
                --device "$device" --set "name=\"$name\"" --set "seed=$seed"
                --set "data.forget=\"random:$share\"")
  # M0 does not depend on what is forgotten: trained once, copied (rfa train checks its
  # fingerprint and finds it complete).
  if [ -n "$first" ] && [ ! -d "$runs/$name/original" ]; then
    mkdir -p "$runs/$name" && cp -r "$runs/$first/original" "$runs/$name/"
  fi
  "$rfa" train "${common[@]}"
  first=${first:-$name}
  "$rfa" retrain "${common[@]}"
  "$rfa" unlearn "${common[@]}" "$@"   # RFA always re-runs: its auto settings come from the build
  if [ $# -eq 0 ]; then
    for m in grad-ascent npo salun; do
      [ -f "$runs/$name/$m/phase.json" ] || "$rfa" unlearn "${common[@]}" --method $m --set unlearn.lr=1e-3
    done
  fi
  "$rfa" eval "${common[@]}"
}
run_case imdb-memorising-random10-seed$seed 10
# The twin: M0 and M* copied, RFA reading all of Dr for its targets.
twin=imdb-memorising-random10-seed$seed-all-dr
if [ ! -d "$runs/$twin/retrain" ]; then
  mkdir -p "$runs/$twin" && cp -r "$runs/imdb-memorising-random10-seed$seed/retrain" "$runs/$twin/"
fi
run_case $twin 10 --set unlearn.stats_precision=0
run_case imdb-memorising-random5-seed$seed 5
out=$root/docs/results/sweep/imdb-memorising
mkdir -p "$out"
python3 - "$runs" "$out" <<'PY'
import json, sys, glob, os
runs, out = sys.argv[1], sys.argv[2]
cases = []
for d in sorted(glob.glob(os.path.join(runs, 'imdb-memorising-random*'))):
    p = os.path.join(d, 'report', 'report.json')
    if not os.path.isfile(p):
        continue
    r = json.load(open(p))
    log = json.load(open(os.path.join(d, 'rfa', 'unlearn_log.json')))
    cases.append({'case': os.path.basename(d), 'forget': r['forget'], 'models': r['models'],
                  'rfa_runs': r.get('rfa_runs', []), 'rfa_stats_samples': log.get('stats_samples'),
                  'rfa_stats_seconds': log.get('stats_seconds')})
json.dump(cases, open(os.path.join(out, 'cases.json'), 'w'), indent=1)
def m(c, n, k):
    for x in c['models']:
        if x['name'].startswith(n): return x.get(k)
print('| case | model | UA | RA | TA | MIA-Efficacy | average gap | time (s) |')
print('|---|---|---:|---:|---:|---:|---:|---:|')
for c in cases:
    for n in ['original', 'retrain', 'RFA', 'grad-ascent', 'npo', 'salun']:
        if m(c, n, 'ua') is None: continue
        print('| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |' % (c['case'], n, m(c,n,'ua'), m(c,n,'ra'), m(c,n,'ta'), m(c,n,'mia_efficacy'), m(c,n,'average_gap'), m(c,n,'seconds') or float('nan')))
    print('| | RFA targets from | %s of Dr, %.1f s | | | | | |' % (c['rfa_stats_samples'], c['rfa_stats_seconds'] or 0))
PY
