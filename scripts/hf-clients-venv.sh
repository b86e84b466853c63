#!/usr/bin/env bash
# The real clients of rfa's folders, for crates/rfa/tests/python: a virtual environment with
# PyTorch, transformers and peft at the versions the parity fixtures were made with
# (fixtures/hf-parity/VERSIONS.json), plus torchvision (transformers 5's image processors) and
# pytest. Everything runs on the CPU. PyPI's torch wheel comes from the cache that
# scripts/fetch-libtorch.sh fills when it has run; CUDA's libraries, which `import torch` loads
# even without a GPU, come from PyPI (about 2.6 GB of wheels, 5 GB installed).
#
#   venv=$(scripts/hf-clients-venv.sh [DEST])     prints the environment's folder
#
# DEST defaults to ~/.cache/rfa-assets/hf-clients; it is reused while its pins are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-$HOME/.cache/rfa-assets/hf-clients}
wheels=${RFA_WHEELS:-$HOME/.cache/rfa-assets/wheels}
pins=$(python3 - <<'PY'
import json
v = json.load(open("fixtures/hf-parity/VERSIONS.json"))
torch = v["torch"].split("+")[0]
# torchvision's release that goes with each torch release.
vision = {"2.11.0": "0.26.0"}[torch]
print(f"torch=={torch} torchvision=={vision} transformers=={v['transformers']} peft=={v['peft']} pytest==9.2.0")
PY
)
if [ "$(cat "$dest/.pins" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$dest"
  python3 -m venv "$dest"
  mkdir -p "$wheels"
  # shellcheck disable=SC2086 # one argument per pin
  "$dest/bin/pip" install --quiet --no-compile --disable-pip-version-check --find-links "$wheels" $pins >&2
  echo "$pins" > "$dest/.pins"
fi
echo "$dest"
