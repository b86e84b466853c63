#!/usr/bin/env bash
# The task term for language models (docs/RESULTS.md, "A task term for language models"): the
# development cases — seed 7, ELI5 categories 2 and 4, 100 questions per category, 64 tokens —
# on the pre-trained GPT-2-tiny of ../lm-targets-pretrained/backbone.toml and from scratch.
# Prints only Df's and Dr's perplexity factors (RFA / M0); M* and the test texts are not read.
# Usage (from the repository root, release build): docs/results/lm-task-term/run.sh SCRATCH_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
B=${RFA_BIN:-$root/target/release/rfa}
mkdir -p "$1" && cd "$1"
cp "$here/../lm-targets-pretrained/backbone.toml" .
sed -e 's/^name = .*/name = "lm-scratch"/' -e 's/^seed = .*/seed = 7/' \
  -e 's/^per_category = 300/per_category = 100/' -e 's/^max_len = 128/max_len = 64/' \
  "$root/configs/eli5-gpt2.toml" > scratch.toml
[ -d runs/lm-backbone/pretrained ] || $B pretrain --config backbone.toml --runs-dir runs --device cpu-flex
for c in 2 4; do
  sed "s/name = \"lm-backbone\"/name = \"lm-c$c\"/; s/forget = \"class:Mathematics\"/forget = \"class:$c\"/" backbone.toml > c$c.toml
  sed "s/name = \"lm-scratch\"/name = \"lms-c$c\"/; s/forget = \"class:Mathematics\"/forget = \"class:$c\"/" scratch.toml > s$c.toml
  for cfg in c$c s$c; do
    $B train --config $cfg.toml --runs-dir runs --device cpu-flex
    $B retrain --config $cfg.toml --runs-dir runs --device cpu-flex   # rfa eval needs M*; not read
  done
done
# layers, γ, λ (10 passes, target global-mean, as the configs)
variants="c_attn 0 0.1
c_attn 1 0.1
all-linear 0 0.1
all-linear 1 0.1
all-linear 1 0.3
all-linear 1 1
all-linear 0.3 0.1"
for cfg in c2 c4 s2 s4; do
  while read -r layers gamma lambda; do
    [[ $cfg == s* && $lambda != 0.1 ]] && continue
    [[ $cfg == s* && $layers == c_attn && $gamma == 1 ]] && continue
    [[ $cfg == s* && $gamma == 0.3 ]] && continue
    $B unlearn --config $cfg.toml --runs-dir runs --device cpu-flex --method rfa --force \
      --set unlearn.target=global-mean --set unlearn.targets=$layers \
      --set unlearn.retain_task_weight=$gamma --set unlearn.lambda=$lambda > /dev/null 2>&1
    $B eval --config $cfg.toml --runs-dir runs --device cpu-flex > /dev/null 2>&1
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' $cfg.toml)
    python3 - "$name" "$layers" "$gamma" "$lambda" <<'PY'
import json, sys
name, layers, gamma, lam = sys.argv[1:]
r = json.load(open(f'runs/{name}/report/report.json'))['language_model']['models']
m0 = next(x for x in r if x['name'].startswith('original'))
u = next(x for x in r if x['name'].startswith('RFA'))
fd, fr = u['ppl_forget'] / m0['ppl_forget'], u['ppl_retain'] / m0['ppl_retain']
print(f"{name} {layers:>10} γ {gamma} λ {lam}: Df x{fd:.3f} Dr x{fr:.3f} selectivity {fd / fr:.3f}", flush=True)
PY
  done <<< "$variants"
done
