#!/usr/bin/env bash
# LibTorch for the `tch` builds (burn's libtorch backend: `--features tch`). tch 0.22 is written for
# PyTorch 2.9; we build against 2.11, the version installed on the GPU machines, so that the
# binary runs there with their PyTorch (its C++ wrapper compiles against 2.11's headers and its
# symbols resolve in 2.11's libraries; crates/rfa-models/tests/tch.rs checks the result).
#
#   eval "$(scripts/fetch-libtorch.sh [DEST])"        headers and libraries of PyPI's torch wheel
#       (no dependencies, 1 GB): builds binaries that link libtorch_cuda, to run where PyTorch
#       with CUDA is installed (LD_LIBRARY_PATH=<site-packages>/torch/lib)
#   eval "$(CPU=1 scripts/fetch-libtorch.sh [DEST])"  the same, plus CUDA's runtime and profiler
#       libraries that libtorch_cpu loads (13 MB), and a link folder without libtorch_cuda: builds
#       binaries that run `tch-cpu` here (sets LD_LIBRARY_PATH too)
#
# DEST defaults to ~/.cache/rfa-assets/libtorch-VERSION; the wheel stays in
# ~/.cache/rfa-assets/wheels (RFA_WHEELS). Prints the environment to use.
set -euo pipefail
version=${TORCH_VERSION:-2.11.0}
dest=${1:-$HOME/.cache/rfa-assets/libtorch-$version}

# Extracts the members of wheel $1 under prefix $2 into folder $3.
unwheel() {
  python3 - "$@" <<'EOF'
import sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(prefix)])
EOF
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pipdl() { pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$@" >&2; }
# The torch wheel is kept: scripts/hf-clients-venv.sh installs the same file.
wheels=${RFA_WHEELS:-$HOME/.cache/rfa-assets/wheels}

if [ ! -f "$dest/torch/lib/libtorch_cpu.so" ]; then
  if ! ls "$wheels"/torch-"$version"-*.whl >/dev/null 2>&1; then
    pipdl "torch==$version"
    mkdir -p "$wheels" && mv "$tmp"/torch-*.whl "$wheels/"
  fi
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  for part in torch/include/ torch/lib/ torch/share/; do unwheel "$wheels"/torch-"$version"-*.whl "$part" "$dest.partial"; done
  rm -rf "$dest" && mv "$dest.partial" "$dest"
fi
if [ "${CPU:-0}" != 1 ]; then
  echo "export LIBTORCH=$dest/torch LIBTORCH_BYPASS_VERSION_CHECK=1"
  exit 0
fi
if [ ! -f "$dest/nvidia/cu13/lib/libcupti.so.13" ]; then
  # The versions torch 2.11's wheel asks for (cuda-toolkit 13.0.2); libtorch_cpu's RPATH finds
  # them in ../../nvidia/cu13/lib.
  pipdl "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
  for w in "$tmp"/nvidia_*.whl; do unwheel "$w" nvidia/cu13/lib/ "$dest"; done
fi
# torch-sys links libtorch_cuda whenever its link folder has it; this one has the rest only.
mkdir -p "$dest/cpu/lib"
for f in "$dest"/torch/lib/*.so*; do
  case $(basename "$f") in libtorch_cuda*) ;; *) ln -sf "$f" "$dest/cpu/lib/" ;; esac
done
echo "export LIBTORCH=$dest/torch LIBTORCH_LIB=$dest/cpu LIBTORCH_BYPASS_VERSION_CHECK=1 LD_LIBRARY_PATH=$dest/torch/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
