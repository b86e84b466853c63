#!/usr/bin/env bash
# Builds what scripts/device-run.sh needs on the GPU machine and puts it in .device/ (ignored by
# git; name it in the device tool's `carry`). Binaries are stripped and gzipped: the carry is
# limited to 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
cargo build --release --features cuda -p rfa -p xtask
test_bin=$(cargo test --release --features cuda -p rfa-models --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"): print(m["executable"])')
mkdir -p .device
pack() { strip -o "/tmp/$2" "$1" && gzip -c "/tmp/$2" > ".device/$2.gz" && rm "/tmp/$2"; }
pack "$CARGO_TARGET_DIR/release/xtask" xtask-cuda
pack "$CARGO_TARGET_DIR/release/rfa" rfa
pack "$test_bin" rfa-models-cuda-tests
cp "${SHARED:-../shared}/bench/torch_rfa_reference.py" .device/
[ -f .device/cifar10_jpeg_q75.tar.gz ] || tar czf .device/cifar10_jpeg_q75.tar.gz -C "${ASSETS:-$HOME/.cache/rfa-assets}/cifar10" .
du -ch .device/* | tail -1
