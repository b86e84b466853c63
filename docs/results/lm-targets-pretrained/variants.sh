#!/usr/bin/env bash
# Development cases (seed 7, categories 2 and 4, pre-trained backbone): LM targets compared on
# Df / Dr perplexity only, with γ = 0 (the language-model default then). Run in a scratch folder holding backbone.toml:
#   rfa pretrain --config backbone.toml --runs-dir runs --device cpu-flex
B=${RFA_BIN:-rfa}
for c in 2 4; do
  sed "s/name = \"lm-backbone\"/name = \"lm-c$c\"/; s/forget = \"class:Mathematics\"/forget = \"class:$c\"/" backbone.toml > c$c.toml
  $B train --config c$c.toml --runs-dir runs --device cpu-flex
  $B retrain --config c$c.toml --runs-dir runs --device cpu-flex   # rfa eval needs M*; not read
done
for c in 2 4; do
  for v in "global-mean c_attn" "per-position-mean c_attn" "own-token-mean c_attn" "global-mean all-linear" "own-token-mean all-linear"; do
    set -- $v
    $B unlearn --config c$c.toml --runs-dir runs --device cpu-flex --method rfa --force \
      --set unlearn.target=$1 --set unlearn.targets=$2 \
      --set unlearn.retain_task_weight=0 > /dev/null 2>&1 || { echo "c$c $v failed"; continue; }
    $B eval --config c$c.toml --runs-dir runs --device cpu-flex > /dev/null 2>&1
    python3 - "$c" "$1" "$2" <<'PY'
import json,sys
r=json.load(open(f'runs/lm-c{sys.argv[1]}/report/report.json'))['language_model']['models']
m0=[x for x in r if x['name'].startswith('original')][0]; u=[x for x in r if x['name'].startswith('RFA')][0]
fd, fr = u['ppl_forget']/m0['ppl_forget'], u['ppl_retain']/m0['ppl_retain']
print(f"cat {sys.argv[1]} {sys.argv[2]:>18} {sys.argv[3]:>10}: M0 Df {m0['ppl_forget']:.1f} Dr {m0['ppl_retain']:.1f} | Df x{fd:.3f} Dr x{fr:.3f} selectivity {fd/fr:.3f}")
PY
  done
done
