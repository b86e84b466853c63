#!/usr/bin/env bash
# LibTorch for the `tch` builds (burn's libtorch backend: `--features tch`). tch 0.22 is written for
# PyTorch 2.9; we build against 2.11, the version installed on the GPU machines, so that the
# binary runs there with their PyTorch (its C++ wrapper compiles against 2.11's headers and its
# symbols resolve in 2.11's libraries; checked by crates/rfa-models/tests/tch.rs).
#
#   scripts/fetch-libtorch.sh [DEST]            headers and libraries from PyPI's torch wheel
#                                               (no dependencies): enough to build
#   RUNTIME=1 scripts/fetch-libtorch.sh [DEST]  torch and the CUDA libraries its libraries load
#                                               (nvidia-* wheels, ~4 GB), beside it in DEST, so that
#                                               tch-cpu also runs on a machine without PyTorch
#
# DEST defaults to ~/.cache/rfa-assets/libtorch-VERSION. Prints the environment to build with; run
# with LD_LIBRARY_PATH=DEST/torch/lib (torch's libraries find the nvidia ones by their RPATH).
set -euo pipefail
version=${TORCH_VERSION:-2.11.0}
dest=${1:-$HOME/.cache/rfa-assets/libtorch-$version}
if [ "${RUNTIME:-0}" = 1 ]; then
  if [ ! -f "$dest/.runtime" ]; then
    # Everything torch's wheel declares, laid out as in site-packages (torch/, nvidia/).
    pip install --quiet --no-compile --disable-pip-version-check --target "$dest.partial" "torch==$version" >&2
    rm -rf "$dest" && mv "$dest.partial" "$dest" && touch "$dest/.runtime"
  fi
elif [ ! -f "$dest/torch/lib/libtorch_cpu.so" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip download --quiet --no-deps --disable-pip-version-check "torch==$version" -d "$tmp" >&2
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  python3 - "$tmp"/torch-*.whl "$dest.partial" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/", "torch/share/"))])
EOF
  rm -rf "$dest" && mv "$dest.partial" "$dest"
fi
echo "export LIBTORCH=$dest/torch LIBTORCH_BYPASS_VERSION_CHECK=1"
