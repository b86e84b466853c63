#!/usr/bin/env bash
# Data-parallel training checked on one device with two replicas (docs/SCALING.md): one epoch of
# the demo's M0 on one replica and on two, then the largest weight difference relative to the
# largest weight (the attention key biases apart: their gradient is zero in exact arithmetic).
# Prints one line per run and `data-parallel: ok` when the two agree within TOLERANCE.
#
#   scripts/device-data-parallel.sh RFA_BINARY DEVICE [OUT_DIR [--set KEY=VALUE ...]]
#     RFA_BINARY: built with `--features collective` (and cuda or tch on a GPU).
#     DEVICE: tch-cuda:0 or cuda:0 on a lent GPU machine (two replicas on one GPU check the
#     path, not the speed-up); cpu here (CI runs it on a cut of the demo with the debug build).
set -euo pipefail
rfa=${1:?usage: device-data-parallel.sh RFA_BINARY DEVICE [OUT_DIR]}
device=${2:?usage: device-data-parallel.sh RFA_BINARY DEVICE [OUT_DIR]}
out=${3:-$(mktemp -d)}
shift $(($# < 3 ? $# : 3))
tolerance=${TOLERANCE:-1e-4}
for replicas in 1 2; do
  start=$(date +%s%N)
  "$rfa" train --runs-dir "$out" --name "replicas-$replicas" --device "$device" --devices "$replicas" \
    --set train.epochs=1 "$@" 2>&1 | tail -1
  echo "$replicas replica(s) on $device: $((($(date +%s%N) - start) / 1000000)) ms"
done
python3 - "$out" "$tolerance" <<'PY'
import array, json, struct, sys

def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        assert v["dtype"] == "F32", f"{key}: {v['dtype']}"
        start, end = v["data_offsets"]
        a = array.array("f")
        a.frombytes(raw[8 + n + start:8 + n + end])
        out[key] = a
    return out

root, tolerance = sys.argv[1], float(sys.argv[2])
one = tensors(f"{root}/replicas-1/original/model.safetensors")
two = tensors(f"{root}/replicas-2/original/model.safetensors")
assert one.keys() == two.keys(), "the same tensors"
scale = max(max(abs(x) for x in t) for t in one.values())
diff, worst = 0.0, ""
for key, t in one.items():
    if key.endswith("attention.key.bias"):
        continue
    d = max(abs(x - y) for x, y in zip(t, two[key]))
    if d > diff:
        diff, worst = d, key
print(f"largest difference: {diff / scale:.2e} of the largest weight ({worst})")
if diff / scale > tolerance:
    sys.exit(f"data-parallel: FAILED (tolerance {tolerance})")
print("data-parallel: ok")
PY
