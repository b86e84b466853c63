#!/usr/bin/env bash
# Kernel launches per RFA step on burn's cubecl backend, counted on wgpu (Mesa's lavapipe runs it
# on the CPU): the graph's launches, which burn-cuda makes the same way. Needs an rfa-bench built with
# `--features wgpu` (or `wgpu-fusion`) and Debian's mesa-vulkan-drivers.
#   scripts/count-launches.sh [XTASK] [CONFIG] [extra bench arguments, e.g. --optimizer burn --split-taps]
# Runs the benchmark twice (2 and 3 timed steps) with cubecl's profiling logger and prints
# bench/count_launches.py's JSON (launches per step, per kernel kind).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$(realpath "${1:-$root/target/debug/rfa-bench}")
cfg=${2:-bert:12x768:12:2:32}
shift $(( $# < 2 ? $# : 2 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for steps in 2 3; do
  mkdir -p "$work/$steps"
  cat > "$work/$steps/cubecl.toml" <<EOF
[profiling.logger]
level = "full"
file = "$work/$steps/profile.log"
append = false
EOF
  (cd "$work/$steps" && XDG_RUNTIME_DIR=$(mktemp -d) "$bench" bench --backends wgpu --configs "$cfg" --warmup 0 --steps "$steps" "$@" > row.json)
done
python3 "$root/bench/count_launches.py" "$work/2/profile.log" "$work/3/profile.log"
