#!/usr/bin/env bash
# The text rows of docs/RESULTS.md on CPU: IMDB with MiniLM (10 % and 5 % forgotten; the 5 % run
# reuses the 10 % run's original model, which is the same training on the same data and seed) and
# ELI5 with a small GPT-2 (one category forgotten). Assets: ../shared/data/get-assets.sh.
# Usage: scripts/text-results.sh [RUNS_DIR] [extra flags for the ELI5 run]
set -euo pipefail
runs=${1:-runs}
shift || true
bin=target/release/rfa
cargo build --release -p rfa
$bin demo --config configs/imdb-minilm.toml --runs-dir "$runs" --name imdb-minilm-random10 --forget random:10
mkdir -p "$runs/imdb-minilm-random5"
cp -r "$runs/imdb-minilm-random10/original" "$runs/imdb-minilm-random5/"
$bin demo --config configs/imdb-minilm.toml --runs-dir "$runs" --name imdb-minilm-random5 --forget random:5
$bin demo --config configs/eli5-gpt2.toml --runs-dir "$runs" "$@"
for r in imdb-minilm-random10 imdb-minilm-random5 "$(ls -t "$runs" | grep '^eli5' | head -1)"; do
  mkdir -p "docs/results/$r"
  cp "$runs/$r/report/report.md" "$runs/$r/report/report.json" "$runs/$r/config.toml" "docs/results/$r/"
  cp -r "$runs/$r/plots" "docs/results/$r/"
done
