#!/usr/bin/env bash
# One call on the lent GPU machine (the `device` tool) for issues 6 and 3, within TOTAL_S seconds:
#   1. CUDA tests (parity, LoRA gradients f32 and with bf16 base weights vs the CPU);
#   2. the RFA step benchmark, burn-cuda (`xtask bench`), GPT-2 small / BERT-base / ViT-B/16 at the
#      PyTorch reference's shapes, f32 then bf16, one process per row (so that nvidia-smi's peak
#      memory belongs to that row), with a fresh persistent PTX cache and a compile log; then
#      the first configuration again with the cache warm (time to first step, cold vs warm);
#   3. the PyTorch + transformers + peft reference (bench/torch_rfa_reference.py), same shapes,
#      one process per row, nvidia-smi peak alongside torch's own max_memory_allocated; then its
#      f32 rows again with TF32 matmuls (bench/torch_variants.py), as burn-cuda computes f32;
#   4. with the time left: full CIFAR-10, random 10 % forgetting (M0, M*, RFA, report).
# Expects in .device/ (scripts/device-prepare.sh puts them there): xtask-cuda.gz, rfa.gz,
# rfa-models-cuda-tests.gz (built `--release --features cuda` with CUDARC_CUDA_VERSION=13000,
# stripped and gzipped to fit the 64 MiB carry), torch_rfa_reference.py, cifar10_jpeg_q75.tar.gz;
# fixtures/ comes with the tree.
# Everything it writes is packed into $OUT/device-run.tgz at the end (the device tool returns only
# a limited number of files); every part runs under its own time limit and a failure does not
# stop the next part.
set -uo pipefail
final=${OUT:-$(mktemp -d)}
out=$(mktemp -d)
root=$PWD
t0=$(date +%s)
deadline=$((t0 + ${TOTAL_S:-540}))
left() { echo $((deadline - $(date +%s))); }
note() { echo "[$(($(date +%s) - t0)) s] $*" | tee -a "$out/timeline.txt"; }
mkdir -p "$out/bench" "$out/torch" "$out/tests"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
} > "$out/device.txt" 2>&1
cat "$out/device.txt"
bin=$(mktemp -d)
mkdir -p "$bin"
for x in xtask-cuda rfa rfa-models-cuda-tests; do
  gunzip -c ".device/$x.gz" > "$bin/$x" && chmod +x "$bin/$x"
done

# CIFAR-10 unpacks on the CPU while the GPU parts run (needed only at the end).
data=/tmp/cifar10
(mkdir -p "$data" && tar xzf .device/cifar10_jpeg_q75.tar.gz -C "$data") &
untar=$!

# Peak GPU memory of one command: nvidia-smi sampled every 50 ms (MiB, whole device, so CUDA
# context and allocator pools included); writes the peak to $2.
with_mem() {
  local memfile=$1 peakfile=$2
  shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$memfile" 2>/dev/null &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null
  wait $smi 2>/dev/null
  sort -n "$memfile" | tail -1 > "$peakfile"
  return $rc
}

# 1. CUDA tests.
export RFA_FIXTURES=$root/fixtures
for t in models_on_cuda_match_the_reference lora_gradients_on_cuda_equal_the_cpu bf16_base_weights_on_cuda_give_the_cpu_gradients_to_bf16_precision; do
  s=$(date +%s.%N)
  timeout 90 "$bin/rfa-models-cuda-tests" --exact "$t" --nocapture --test-threads=1 > "$out/tests/$t.log" 2>&1
  rc=$?
  note "test $t rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
done

# 2. burn-cuda benchmark. cubecl reads cubecl.toml from the working directory: a persistent PTX
# cache (shared by all rows, emptied first) and a basic compile log (one line per NVRTC
# compilation) per row.
cache=/tmp/cubecl-cache
rm -rf "$cache"
bench_row() { # name config dtype limit
  local name=$1 cfg=$2 dt=$3 limit=$4 dir=/tmp/bench-$1
  mkdir -p "$dir"
  cat > "$dir/cubecl.toml" <<EOF
[compilation]
cache = { file = "$cache" }
[compilation.logger]
level = "basic"
file = "$out/bench/$name.compile.log"
append = false
EOF
  local s=$(date +%s.%N)
  (cd "$dir" && with_mem "$out/bench/$name.mem" "$out/bench/$name.peak_mib" \
    timeout "$limit" "$bin/xtask-cuda" bench --backends cuda --configs "$cfg" --dtypes "$dt" --warmup 3 --steps 10 \
    > "$out/bench/$name.json" 2> "$out/bench/$name.err")
  local rc=$?
  rm -f "$out/bench/$name.mem"
  note "burn $name rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}") kernels_compiled=$(grep -c 'Compiling kernel' "$out/bench/$name.compile.log" 2>/dev/null) peak_mib=$(cat "$out/bench/$name.peak_mib")"
}
gpt2=gpt2:12x768:12:8:512
bert=bert:12x768:12:32:256
vit=vit:12x768:12:64:224
for m in gpt2 bert vit; do
  [ "$(left)" -gt 330 ] && bench_row "$m-f32" "${!m}" f32 75
done
# The same process again with every kernel in the PTX cache: what a second run costs to start.
[ "$(left)" -gt 250 ] && bench_row gpt2-f32-warm-cache "$gpt2" f32 60
du -sh "$cache" > "$out/bench/ptx_cache_size.txt" 2>&1
ls "$cache" >> "$out/bench/ptx_cache_size.txt" 2>&1
# Per-op profile at GPT-2 small's MLP / attention shapes (8 × 512 tokens).
if [ "$(left)" -gt 280 ]; then
  (cd /tmp/bench-gpt2-f32 && timeout 40 "$bin/xtask-cuda" bench-ops --backends cuda --shape 8:512:768:12 --reps 10 > "$out/bench/ops-cuda.jsonl" 2> "$out/bench/ops-cuda.err")
  note "bench-ops cuda rc=$?"
fi

# 3. PyTorch reference, one row per process.
for m in gpt2 bert vit; do
  for dt in fp32 bf16; do
    [ "$(left)" -gt 250 ] || continue
    s=$(date +%s.%N)
    with_mem "$out/torch/$m-$dt.mem" "$out/torch/$m-$dt.peak_mib" \
      timeout 60 python3 .device/torch_rfa_reference.py --models "$m" --dtypes "$dt" --variants branch --warmup 3 --steps 10 \
      > "$out/torch/$m-$dt.jsonl" 2> "$out/torch/$m-$dt.err"
    rc=$?
    rm -f "$out/torch/$m-$dt.mem"
    note "torch $m-$dt rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}") peak_mib=$(cat "$out/torch/$m-$dt.peak_mib")"
  done
done

# burn bf16 rows (after torch: f32 side by side comes first).
for m in gpt2 bert vit; do
  [ "$(left)" -gt 230 ] && bench_row "$m-bf16" "${!m}" bf16 50
done

# PyTorch with TF32 matmuls in f32 (burn-cuda's f32 is TF32 too): like-for-like f32 rows.
if [ "$(left)" -gt 200 ]; then
  s=$(date +%s.%N)
  timeout 60 python3 bench/torch_variants.py .device/torch_rfa_reference.py --device cuda --tf32 --models gpt2,bert,vit \
    --dtypes fp32 --warmup 3 --steps 10 > "$out/torch/tf32.jsonl" 2> "$out/torch/tf32.err"
  note "torch tf32 rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
fi

# 4. CIFAR-10, random 10 %: epochs sized to the time left (assumes >= 3,500 training samples/s
# at batch 512, measured 3,800-4,300 at batch 128 on this card; 150 s kept for loading, RFA and
# evaluation).
wait $untar
budget=$(($(left) - 150))
if [ "$budget" -gt 60 ]; then
  epochs=$(python3 -c "print(max(2, min(40, int($budget * 3500 / 95000))))")
  note "cifar10 random 10 %: $epochs epochs (budget ${budget}s)"
  timeout $(($(left) - 10)) "$bin/rfa" demo --device cuda --name cifar10-random10 --runs-dir "$out/runs" \
    --set 'data.dataset="image-folder"' --set "data.path=\"$data\"" --set 'model.preset="vit-small"' \
    --set train.batch_size=512 --set train.lr=2e-3 --set train.epochs="$epochs" \
    --set unlearn.epochs=1 --set unlearn.lr=2e-3 --forget random:10 > "$out/cifar10.log" 2>&1
  note "cifar10 rc=$?"
  find "$out/runs" -name model.safetensors -delete
fi
note "done"
tar czf "$final/device-run.tgz" -C "$out" .
tail -5 "$out/cifar10.log" 2>/dev/null
cat "$out"/bench/*.json "$out"/torch/*.jsonl 2>/dev/null
