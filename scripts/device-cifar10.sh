#!/usr/bin/env bash
# Runs on the GPU machine: full CIFAR-10 with `vit-small` trained EPOCHS epochs (batch 512, lr 2e-3),
# random 10 % forgetting, then class `cat` reusing the same M0 (its folder is copied, so the run
# resumes after its last epoch instead of training again). Expects .device/rfa.xz (see
# scripts/device-prepare.sh) and .device/cifar10_jpeg_q75.tar.gz. Results (reports, plots, logs;
# no weights) are packed into one archive in $OUT: the device tool returns a limited number of files.
set -uo pipefail
out=${OUT:-$(mktemp -d)}
epochs=${EPOCHS:-25}
work=$(mktemp -d)
bin=$(mktemp -d)
source scripts/device-unpack.sh
unpack rfa "$bin/rfa"
data=/tmp/cifar10
mkdir -p "$data" && tar xzf .device/cifar10_jpeg_q75.tar.gz -C "$data"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/device.txt"
common=(--device cuda --runs-dir "$work/runs" --set 'data.dataset="image-folder"' --set "data.path=\"$data\""
  --set 'model.preset="vit-small"' --set train.batch_size=512 --set train.lr=2e-3 --set train.epochs="$epochs"
  --set unlearn.epochs=1 --set unlearn.lr=2e-3)
t0=$(date +%s)
timeout "${LIMIT1:-230}" "$bin/rfa" demo --name cifar10-random10 "${common[@]}" --forget random:10 > "$work/random10.log" 2>&1
echo "random10 rc=$? at $(($(date +%s) - t0)) s" | tee -a "$work/timeline.txt"
mkdir -p "$work/runs/cifar10-class-cat"
cp -r "$work/runs/cifar10-random10/original" "$work/runs/cifar10-class-cat/"
timeout "${LIMIT2:-150}" "$bin/rfa" demo --name cifar10-class-cat "${common[@]}" --forget class:cat > "$work/class-cat.log" 2>&1
echo "class-cat rc=$? at $(($(date +%s) - t0)) s" | tee -a "$work/timeline.txt"
find "$work/runs" -name model.safetensors -delete
tar czf "$out/cifar10-results.tgz" -C "$work" .
grep -A6 "^| model" "$work"/*.log
