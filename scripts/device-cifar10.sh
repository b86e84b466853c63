#!/usr/bin/env bash
# Runs on the GPU machine: the full CIFAR-10 class-wise experiment (M0, M*, RFA, report) with
# --device cuda. Expects in .device/: `rfa` built here with
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda -p rfa
# and cifar10_jpeg_q75.tar.gz (the shared image-folder copy). A short probe measures training
# throughput first and sizes the epochs to fit BUDGET_S seconds of training for M0 + M*.
set -euo pipefail
out=${OUT:-$(mktemp -d)}
budget=${BUDGET_S:-300}
data=/tmp/cifar10
mkdir -p "$data" && tar xzf .device/cifar10_jpeg_q75.tar.gz -C "$data"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt"
rfa=.device/rfa
common=(--device cuda --runs-dir "$out/runs" --set 'data.dataset="image-folder"' --set "data.path=\"$data\"" --set 'model.preset="vit-small"' --set train.batch_size=128 --set train.lr=1e-3)
start=$(date +%s.%N)
"$rfa" train --name probe "${common[@]}" --set data.max_train=10000 --set train.epochs=1 --forget class:cat 2>&1 | tail -3 | tee "$out/probe.log"
probe=$(awk "BEGIN{print $(date +%s.%N) - $start}")
# Samples per second from the probe's own log line (includes data loading and kernel compilation).
sps=$(python3 -c "import json;print(json.load(open('$out/runs/probe/original/train_state.json'))[0]['samples_per_s'])")
epochs=$(python3 -c "print(max(1, min(30, int($budget * $sps / (2 * 50000)))))")
echo "probe ${probe}s, ${sps} samples/s -> $epochs epochs" | tee "$out/plan.txt"
rm -rf "$out/runs/probe"
"$rfa" demo --name cifar10-class-cat "${common[@]}" --set train.epochs="$epochs" --forget class:cat 2>&1 | tail -60 | tee "$out/demo.log"
# Checkpoints stay here; only the report, plots and logs go back.
find "$out/runs" -name model.safetensors -delete
