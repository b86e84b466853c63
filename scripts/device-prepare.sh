#!/usr/bin/env bash
# Builds what scripts/device-run.sh needs on the GPU machine and puts it in .device/ (ignored by
# git; name it in the device tool's `carry`). Binaries are stripped and packed with xz: the tree
# and the carry share 64 MiB. CIFAR=1 adds the `rfa` binary and CIFAR-10 for scripts/device-cifar10.sh.
# PARTS=tch rebuilds only the libtorch binaries (rfa-bench-tch and its two test files, ~10 min instead
# of ~18), for a change that burn-cuda's code paths do not run; the other binaries stay as built.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
parts=${PARTS:-all}
mkdir -p .device
pack() { strip -o "/tmp/$2" "$1" && xz -9 -T2 -c "/tmp/$2" > ".device/$2.xz" && rm "/tmp/$2"; }
# Builds rfa-models' integration test file $2 (tests/$2.rs; default $1) with feature $1 and packs
# its binary as rfa-models-$2-tests (with -$1 before -tests when they differ).
pack_tests() {
  local exe test=${2:-$1} name
  name=rfa-models-$test$([ "$test" = "$1" ] || echo "-$1")-tests
  exe=$(cargo test --release --features "$1" -p rfa-models --test "$test" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"): print(m["executable"])' "$test")
  pack "$exe" "$name"
}
if [ "$parts" = all ]; then
  cargo build --release --features cuda -p rfa-bench
  pack "$CARGO_TARGET_DIR/release/rfa-bench" rfa-bench-cuda
  # The same benchmark with burn's kernel fusion (cargo keeps both feature sets' builds apart).
  cargo build --release --features fusion -p rfa-bench
  pack "$CARGO_TARGET_DIR/release/rfa-bench" rfa-bench-cuda-fusion
  # And with cubecl's autotune (matmul / reduction kernels chosen per shape by timing).
  cargo build --release --features autotune -p rfa-bench
  pack "$CARGO_TARGET_DIR/release/rfa-bench" rfa-bench-cuda-autotune
  pack_tests cuda
fi
# burn's libtorch backend, built against PyTorch 2.11's headers and libraries (the GPU machine's
# version), linked dynamically: it runs there with that PyTorch's lib folder on LD_LIBRARY_PATH.
eval "$(bash scripts/fetch-libtorch.sh)"
cargo build --release --features tch -p rfa-bench
pack "$CARGO_TARGET_DIR/release/rfa-bench" rfa-bench-tch
pack_tests tch
pack_tests tch attention
cp "${SHARED:-../shared}/bench/torch_rfa_reference.py" .device/
# bench/torch_ops.py and bench/torch_variants.py travel with the tree.
# The `rfa` command itself: device-run.sh runs `rfa demo --device cuda` (its report's step times and
# peak device memory), device-cifar10.sh the full CIFAR-10 runs.
if [ "$parts" = all ]; then
  cargo build --release --features cuda -p rfa
  pack "$CARGO_TARGET_DIR/release/rfa" rfa
fi
if [ "${CIFAR:-0}" = 1 ]; then
  [ -f .device/cifar10_jpeg_q75.tar.gz ] || tar czf .device/cifar10_jpeg_q75.tar.gz -C "${ASSETS:-$HOME/.cache/rfa-assets}/cifar10" .
fi
du -ch .device/* | tail -1
