#!/usr/bin/env bash
# Class-wise forgetting on ELI5-Category questions with all-MiniLM-L6-v2 (configs/eli5-minilm.toml):
# three categories × two run seeds (each seed its own M0, split and adapters), RFA with its
# defaults next to M0, M* and grad-diff / NPO. Writes docs/results/sweep/eli5-minilm-small/.
#   scripts/eli5-minilm-sweep.sh [RUNS_DIR] [DEVICE]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-runs/eli5-minilm-sweep}
device=${2:-cpu-flex}
rfa=${RFA_BIN:-$root/target/release/rfa}
classes=${CLASSES:-"0 3 7"}
seeds=${SEEDS:-"0 1"}
mkdir -p "$runs"
for seed in $seeds; do
  first=
  for c in $classes; do
    name=eli5-minilm-class$c-seed$seed
    common=(--config "$root/configs/eli5-minilm.toml" --runs-dir "$runs" --device "$device"
            --set "name=\"$name\"" --set "seed=$seed" --set "data.forget=\"class:$c\"")
    # M0 does not depend on what is forgotten: trained once per seed, copied (rfa train checks
    # its fingerprint and finds it complete).
    if [ -n "$first" ] && [ ! -d "$runs/$name/original" ]; then
      mkdir -p "$runs/$name" && cp -r "$runs/$first/original" "$runs/$name/"
    fi
    "$rfa" train "${common[@]}"
    first=${first:-$name}
    "$rfa" retrain "${common[@]}"
    # RFA's `auto` settings come from the build, not the configuration: it runs every time.
    "$rfa" unlearn "${common[@]}"
    for m in grad-diff npo; do
      [ -f "$runs/$name/$m/phase.json" ] || "$rfa" unlearn "${common[@]}" --method $m --set unlearn.lr=1e-3
    done
    "$rfa" eval "${common[@]}"
  done
done
out=$root/docs/results/sweep/eli5-minilm-small
mkdir -p "$out"
python3 - "$runs" "$out" <<'PY'
import json, sys, glob, os, statistics as st
runs, out = sys.argv[1], sys.argv[2]
cases = []
for d in sorted(glob.glob(os.path.join(runs, 'eli5-minilm-class*-seed*'))):
    if not os.path.isfile(os.path.join(d, 'report', 'report.json')):
        continue
    r = json.load(open(os.path.join(d, 'report', 'report.json')))
    cases.append({'case': os.path.basename(d), 'forget': r['forget'], 'classes': r['classes'],
                  'models': r['models'], 'rfa_runs': r.get('rfa_runs', [])})
json.dump(cases, open(os.path.join(out, 'cases.json'), 'w'), indent=1)
def m(c, n, k):
    for x in c['models']:
        if x['name'] == n: return x.get(k)
rows = ['| case | forgotten | M0 UA / RA / TA / MIA (gap) | M* TA | RFA UA / RA / TA / MIA | **RFA gap** | grad-diff gap | NPO gap | RFA stop | RFA s / M* s |',
        '|---|---|---|---:|---|---:|---:|---:|---|---:|']
for c in cases:
    f = lambda n: '%.1f / %.1f / %.1f / %.1f' % tuple(m(c, n, k) for k in ('ua','ra','ta','mia_efficacy'))
    stop = c['rfa_runs'][0]['stop'] if c['rfa_runs'] else None
    s = '%s after %d, kept %d' % (stop['reason'], stop['stopped_after_step'], stop['kept_step']) if stop else '—'
    cls = c['classes'][int(c['forget'].split(':')[1])] if c['forget'].split(':')[1].isdigit() else c['forget']
    rows.append('| %s | %s | %s (%.2f) | %.1f | %s | **%.2f** | %.2f | %.2f | %s | %.1f / %.1f |' % (
        c['case'], cls, f('original (M0)'), m(c,'original (M0)','average_gap'), m(c,'retrain (M*)','ta'),
        f('RFA'), m(c,'RFA','average_gap'), m(c,'grad-diff','average_gap') or float('nan'),
        m(c,'NPO','average_gap') or m(c,'npo','average_gap') or float('nan'), s,
        m(c,'RFA','seconds'), m(c,'retrain (M*)','seconds')))
gaps = [m(c,'RFA','average_gap') for c in cases]
ra = [m(c,'original (M0)','ra') - m(c,'RFA','ra') for c in cases]
summary = '\n'.join(rows) + '\n\nRFA: mean gap %.2f ± %.2f, worst %.2f; RA below M0\'s by at most %.2f points. Bars (gap ≤ 3, RA within 3 points of M0): gap %s, RA %s.\n' % (
    st.mean(gaps), st.stdev(gaps) if len(gaps) > 1 else 0, max(gaps), max(ra),
    'met' if max(gaps) <= 3 else 'not met', 'met' if max(ra) <= 3 else 'not met')
open(os.path.join(out, 'summary.md'), 'w').write(summary)
print(summary)
PY
