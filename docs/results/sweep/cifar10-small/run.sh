#!/usr/bin/env bash
# CIFAR-10 --small (2,000 / 500 images, vit-small from scratch, 5 epochs: reproduce.rs's small
# CIFAR setting), class `airplane` and random 10 %, RFA with its defaults; M0 shared.
#   docs/results/sweep/cifar10-small/run.sh [RUNS_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
runs=${1:-/work/cifar-runs}
rfa=${RFA_BIN:-$root/target/release/rfa}
mkdir -p "$runs" && cd "$runs"
[ -f base.toml ] || "$rfa" demo --print-config > base.toml
sets=(--set 'data.dataset="image-folder"' --set 'data.path="~/.cache/rfa-assets/cifar10"'
      --set data.max_train=2000 --set data.max_test=500 --set 'model.preset="vit-small"'
      --set train.epochs=5 --set train.lr=1e-3 --set train.batch_size=128)
for spec in class:airplane random:10; do
  name=cifar10-${spec/:/-}-small
  common=(--config base.toml --runs-dir "$runs" "${sets[@]}" --set "name=\"$name\"" --set "data.forget=\"$spec\"")
  if [ "$spec" = random:10 ] && [ ! -d "$name/original" ]; then mkdir -p "$name"; cp -r cifar10-class-airplane-small/original "$name/"; fi
  $rfa train "${common[@]}"
  $rfa retrain "${common[@]}"
  $rfa unlearn "${common[@]}"   # RFA always re-runs: its auto settings come from the build
  $rfa eval "${common[@]}"
  mkdir -p "$root/docs/results/sweep/cifar10-small/$name"
  cp "$name/report/report.json" "$name/report/report.md" "$root/docs/results/sweep/cifar10-small/$name/"
done
