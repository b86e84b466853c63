#!/usr/bin/env bash
# One call on the lent GPU machine (the `device` tool) for issue 6, within TOTAL_S seconds, most
# important first (a row runs only if its own time limit still fits):
#   1. tests: burn-cuda (parity, LoRA gradients f32 and with bf16 base weights, attention, LayerNorm
#      and the objective's node vs the CPU) and burn's libtorch backend on CUDA
#      (crates/rfa-models/tests/tch.rs, and tests/attention.rs: PyTorch's memory-efficient
#      attention kernel against f64);
#   2. the issue's table: the RFA step (`rfa-bench bench`), GPT-2 small / BERT-base / ViT-B/16 at the
#      PyTorch reference's shapes, one process per row (so that nvidia-smi's peak memory belongs
#      to that row; the rows also carry the allocator's sampled peak): the PyTorch + transformers
#      + peft reference (bench/torch_rfa_reference.py) in strict f32, rfa on burn-cuda (f32 on
#      TF32 tensor cores) and on burn's libtorch backend (`rfa-bench-tch`: PyTorch's kernels, strict
#      f32); then bf16 (autocast; rfa on libtorch and on burn-cuda). burn rows share a persistent
#      PTX cache and log their compilations;
#   3. TF32 like for like: the reference with TF32 matmuls (bench/torch_variants.py), rfa on
#      libtorch with TF32;
#   4. each framework's own cost per step (full depth, width 64: host work, launches); cubecl's
#      kernel profiler on one GPT-2 step (every kernel's GPU time, bench/<row>.profile.log); burn's
#      kernel fusion (`rfa-bench-cuda-fusion`); the A/B of the seventh session's launch cuts;
#      `rfa demo --device cuda` (the command end to end, its report);
#   5. libtorch's attention in elementary ops (A/B with SDPA); cubecl's autotune
#      (`rfa-bench-cuda-autotune`, cold, then with the tuning cache warm); the step's operations alone
#      (`rfa-bench bench-ops`, each build, and bench/torch_ops.py: the same operations in PyTorch);
#   6. BERT and ViT with fusion and autotune; bf16 with fusion.
# Expects in .device/ (scripts/device-prepare.sh puts them there): rfa-bench-cuda.xz,
# rfa-bench-cuda-fusion.xz, rfa-bench-cuda-autotune.xz, rfa-bench-tch.xz, rfa-models-cuda-tests.xz,
# rfa-models-tch-tests.xz, rfa-models-attention-tch-tests.xz, rfa.xz (built `--release` with
# CUDARC_CUDA_VERSION=13000, stripped and packed with xz: tree and carry share 64 MiB), torch_rfa_reference.py; fixtures/ comes with the
# tree. (Full CIFAR-10 on the GPU: scripts/device-cifar10.sh.)
# Everything it writes is packed into $OUT/device-run.tgz at the end (the device tool returns only
# a limited number of files), with summary.md (bench/summarize_device_run.py: the tables), which is
# also printed last; every part runs under its own time limit and a failure does not
# stop the next part.
set -uo pipefail
final=${OUT:-$(mktemp -d)}
out=$(mktemp -d)
root=$PWD
source scripts/device-unpack.sh
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
for x in rfa-bench-cuda rfa-bench-cuda-fusion rfa-bench-cuda-autotune rfa-bench-tch rfa-models-cuda-tests rfa-models-tch-tests rfa-models-attention-tch-tests; do
  unpack "$x" "$bin/$x"
done

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

# 1. CUDA tests (FOCUS=tch: the libtorch tests only).
export RFA_FIXTURES=$root/fixtures
[ "${FOCUS:-}" = tch ] || for t in models_on_cuda_match_the_reference lora_gradients_on_cuda_equal_the_cpu bf16_base_weights_on_cuda_give_the_cpu_gradients_to_bf16_precision \
  attention_gradients_on_cuda_equal_the_cpu layer_norm_on_cuda_equals_the_cpu tap_terms_on_cuda_equal_the_cpu; do
  s=$(date +%s.%N)
  timeout 90 "$bin/rfa-models-cuda-tests" --exact "$t" --nocapture --test-threads=1 > "$out/tests/$t.log" 2>&1
  rc=$?
  note "test $t rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
done
# The libtorch build: this machine's PyTorch libraries (they find CUDA's by their RPATH).
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
s=$(date +%s.%N)
LD_LIBRARY_PATH=$torch_lib RFA_TCH_DEVICE=tch-cuda timeout 120 "$bin/rfa-models-tch-tests" --nocapture --test-threads=1 > "$out/tests/tch.log" 2>&1
note "tests tch-cuda rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
# The attention against its f64 reference on every bias shape and layout: PyTorch's
# memory-efficient kernel where it takes the operands, the generic ops where not.
s=$(date +%s.%N)
LD_LIBRARY_PATH=$torch_lib RFA_TCH_DEVICE=tch-cuda timeout 90 "$bin/rfa-models-attention-tch-tests" --test-threads=2 > "$out/tests/attention-tch.log" 2>&1
note "tests attention tch-cuda rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"

# 2. burn-cuda benchmark. cubecl reads cubecl.toml from the working directory: a persistent PTX
# cache (shared by all rows, emptied first), a basic compile log (one line per NVRTC
# compilation) per row, and (read by the autotune build only) a persistent tuning cache and log.
cache=/tmp/cubecl-cache
tune_cache=/tmp/cubecl-autotune
rm -rf "$cache" "$tune_cache"
bench_row() { # name config dtype limit [binary]
  local name=$1 cfg=$2 dt=$3 limit=$4 exe=${5:-rfa-bench-cuda} dir=/tmp/bench-$1
  mkdir -p "$dir"
  cat > "$dir/cubecl.toml" <<EOF
[compilation]
cache = { file = "$cache" }
[compilation.logger]
level = "basic"
file = "$out/bench/$name.compile.log"
append = false
[autotune]
cache = { file = "$tune_cache" }
[autotune.logger]
level = "full"
file = "$out/bench/$name.autotune.log"
append = false
EOF
  [ -n "${PROFILE:-}" ] && cat >> "$dir/cubecl.toml" <<EOF
[profiling.logger]
level = "basic"
file = "$out/bench/$name.profile.log"
append = false
EOF
  local s=$(date +%s.%N)
  (cd "$dir" && with_mem "$out/bench/$name.mem" "$out/bench/$name.peak_mib" \
    timeout "$limit" "$bin/$exe" bench --backends cuda --configs "$cfg" --dtypes "$dt" ${BENCH_STEPS:---warmup 3 --steps 10} \
    > "$out/bench/$name.json" 2> "$out/bench/$name.err")
  local rc=$?
  rm -f "$out/bench/$name.mem"
  note "burn $name rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}") kernels_compiled=$(grep -c 'Compiling kernel' "$out/bench/$name.compile.log" 2>/dev/null) peak_mib=$(cat "$out/bench/$name.peak_mib")"
}
gpt2=gpt2:12x768:12:8:512
bert=bert:12x768:12:32:256
vit=vit:12x768:12:64:224

# The PyTorch + peft reference, one row per process.
torch_row() { # model dtype
  local m=$1 dt=$2 s=$(date +%s.%N)
  with_mem "$out/torch/$m-$dt.mem" "$out/torch/$m-$dt.peak_mib" \
    timeout 60 python3 .device/torch_rfa_reference.py --models "$m" --dtypes "$dt" --variants branch --warmup 3 --steps 10 \
    > "$out/torch/$m-$dt.jsonl" 2> "$out/torch/$m-$dt.err"
  local rc=$?
  rm -f "$out/torch/$m-$dt.mem"
  note "torch $m-$dt rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}") peak_mib=$(cat "$out/torch/$m-$dt.peak_mib")"
}
# rfa on burn's libtorch backend: f32 strict, as the reference; TF32=1: cuBLAS on TF32 through
# PyTorch's TORCH_ALLOW_TF32_CUBLAS_OVERRIDE, as burn-cuda and the "PyTorch TF32" rows.
tch_row() { # name config dtype limit
  local name=$1 cfg=$2 dt=$3 limit=$4 s=$(date +%s.%N)
  with_mem "$out/bench/$name.mem" "$out/bench/$name.peak_mib" \
    env ${TF32:+TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1} ${ATT:+RFA_TCH_ATTENTION=$ATT} LD_LIBRARY_PATH="$torch_lib" timeout "$limit" "$bin/rfa-bench-tch" bench --backends tch-cuda --configs "$cfg" --dtypes "$dt" \
    --warmup 3 --steps 10 > "$out/bench/$name.json" 2> "$out/bench/$name.err"
  local rc=$?
  rm -f "$out/bench/$name.mem"
  note "burn-tch $name rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}") peak_mib=$(cat "$out/bench/$name.peak_mib")"
}
# The profiler times each kernel alone (a sync after each), so a profiled row's step times are
# not comparable; its table per step is the point. Kernels are cached by then.
profile_row() { # name exe
  PROFILE=1 BENCH_STEPS="--warmup 1 --steps 1" bench_row "$1" "$gpt2" f32 40 "$2"
}
bench_ops() { # exe (in the working directory of its GPT-2 row: its caches)
  local exe=$1 dir=/tmp/bench-gpt2-f32${1#rfa-bench-cuda}
  [ -d "$dir" ] || return 0
  (cd "$dir" && timeout 40 "$bin/$exe" bench-ops --backends cuda --shape 8:512:768:12 --reps 10 > "$out/bench/ops-$exe.jsonl" 2> "$out/bench/ops-$exe.err")
  note "bench-ops $exe rc=$?"
}

# Each framework's own cost per step (host work per operation, launches): the reference models'
# full depth at width 64 and 1 + 1 short samples, where the arithmetic is negligible, so the step
# takes what the framework adds to every step whatever its kernels: burn-cuda, rfa on libtorch,
# PyTorch + peft (with its ATen operation count per step). bench/summarize_device_run.py's
# "cost per step" table.
tiny_models=gpt2:12x64:4,bert:12x64:4,vit:12x64:4
tiny_configs=gpt2:12x64:4:1:16,bert:12x64:4:1:16,vit:12x64:4:1:32
overhead_rows() {
  fits 60 && BENCH_STEPS="--warmup 3 --steps 20" bench_row overhead-cuda "$tiny_configs" f32 60
  fits 40 && TF32=1 tch_row overhead-tch "$tiny_configs" f32 40
  fits 60 || return 0
  local s=$(date +%s.%N)
  timeout 60 python3 bench/torch_variants.py .device/torch_rfa_reference.py --device cuda --tf32 --models "$tiny_models" \
    --batch 1 --dtypes fp32 --warmup 3 --steps 20 --count-ops > "$out/torch/overhead.jsonl" 2> "$out/torch/overhead.err"
  note "torch overhead rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
}

# The `rfa` command end to end on the GPU: the demo (train M0, retrain M*, unlearn with RFA,
# evaluate; its kernels compiled cold) — its report's timings, the unlearning's first step apart
# from the others, and each phase's peak device memory.
demo_row() {
  local s=$(date +%s.%N)
  unpack rfa "$bin/rfa"
  RFA_KERNEL_CACHE=/tmp/rfa-kernels timeout 90 "$bin/rfa" demo --device cuda --runs-dir /tmp/rfa-demo-runs > "$out/demo.log" 2>&1
  note "rfa demo cuda rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
  cp /tmp/rfa-demo-runs/demo/report/report.md "$out/demo-report.md" 2>/dev/null
  cp /tmp/rfa-demo-runs/demo/report/report.json "$out/demo-report.json" 2>/dev/null
}

# Most important first; a row runs only if its own time limit still fits before the deadline
# (`fits LIMIT`), so whatever the card's speed the run ends in time with the rows that matter.
fits() { [ "$(left)" -gt "$1" ]; }
# TF32 like for like: the reference with TF32 matmuls (one process), rfa on libtorch with TF32.
tf32_rows() {
  if fits 60; then
    local s=$(date +%s.%N)
    timeout 60 python3 bench/torch_variants.py .device/torch_rfa_reference.py --device cuda --tf32 --models gpt2,bert,vit \
      --dtypes fp32 --warmup 3 --steps 10 > "$out/torch/tf32.jsonl" 2> "$out/torch/tf32.err"
    note "torch tf32 rc=$? wall_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")"
  fi
  for m in gpt2 bert vit; do
    fits 40 && TF32=1 tch_row "$m-tf32-tch" "${!m}" f32 40
  done
}
finish() {
  note "done"
  python3 bench/summarize_device_run.py "$out" > "$out/summary.md" 2>&1
  tar czf "$final/device-run.tgz" -C "$out" .
  cat "$out"/bench/*.json "$out"/torch/*.jsonl 2>/dev/null
  # Last, so that it is what the device tool's output tail shows: the tables for docs/BENCHMARKS.md.
  cat "$out/summary.md"
}
# FOCUS=tch (TOTAL_S ~240): after a change to the libtorch path only (PARTS=tch in
# scripts/device-prepare.sh), its rows beside the reference's, re-measured on the same card: bf16,
# TF32, and ViT in strict f32.
if [ "${FOCUS:-}" = tch ]; then
  for m in gpt2 bert vit; do
    fits 60 && torch_row "$m" bf16
    fits 45 && tch_row "$m-bf16-tch" "${!m}" bf16 45
  done
  tf32_rows
  fits 60 && torch_row vit fp32
  fits 45 && tch_row vit-f32-tch "$vit" f32 45
  finish
  exit 0
fi
# 2. The issue's table, model by model, at the reference's own settings: PyTorch + peft strict
# f32, rfa on burn-cuda (f32 on TF32 tensor cores, its only f32) and on libtorch (strict f32);
# then bf16 (PyTorch autocast, rfa with bf16 frozen weights on libtorch and on burn-cuda).
for m in gpt2 bert vit; do
  fits 75 && bench_row "$m-f32" "${!m}" f32 75
  fits 60 && torch_row "$m" fp32
  fits 45 && tch_row "$m-f32-tch" "${!m}" f32 45
done
for m in gpt2 bert vit; do
  fits 60 && torch_row "$m" bf16
  fits 45 && tch_row "$m-bf16-tch" "${!m}" bf16 45
  fits 45 && bench_row "$m-bf16" "${!m}" bf16 45
done
# 3. TF32 like for like.
tf32_rows
# 4. Each framework's own cost per step; where a GPT-2 step's time goes on burn-cuda (kernel
# profile); kernel fusion; the seventh session's launch cuts (burn's per-tensor AdamW and the
# split objective, A/B on BERT); the `rfa` command end to end.
overhead_rows
fits 40 && profile_row gpt2-f32-profile rfa-bench-cuda
fits 90 && bench_row gpt2-f32-fusion "$gpt2" f32 90 rfa-bench-cuda-fusion
fits 45 && BENCH_STEPS="--warmup 3 --steps 10 --optimizer burn --split-taps" bench_row bert-f32-before-foreach "$bert" f32 45
fits 90 && demo_row
# 5. libtorch's attention in elementary ops instead of the SDPA kernel (A/B); cubecl's autotune
# (cold: every matmul / reduction shape timed, then a second process with the tuning cache warm);
# the step's operations alone on each backend and in PyTorch; more profiles.
fits 45 && ATT=ops TF32=1 tch_row gpt2-tf32-tch-ops "$gpt2" f32 45
fits 120 && bench_row gpt2-f32-autotune "$gpt2" f32 120 rfa-bench-cuda-autotune
fits 40 && bench_row gpt2-f32-autotune-warm "$gpt2" f32 40 rfa-bench-cuda-autotune
fits 40 && bench_ops rfa-bench-cuda
if fits 40; then
  timeout 40 python3 bench/torch_ops.py --device cuda --tf32 --shape 8:512:768:12 --reps 10 > "$out/torch/ops-tf32.jsonl" 2> "$out/torch/ops-tf32.err"
  note "torch ops tf32 rc=$?"
fi
if fits 40; then
  LD_LIBRARY_PATH=$torch_lib timeout 40 "$bin/rfa-bench-tch" bench-ops --backends tch-cuda --shape 8:512:768:12 --reps 10 > "$out/bench/ops-rfa-bench-tch.jsonl" 2> "$out/bench/ops-rfa-bench-tch.err"
  note "bench-ops rfa-bench-tch rc=$?"
fi
fits 40 && bench_ops rfa-bench-cuda-fusion
fits 40 && profile_row gpt2-f32-fusion-profile rfa-bench-cuda-fusion
fits 40 && bench_ops rfa-bench-cuda-autotune
fits 40 && profile_row gpt2-f32-autotune-profile rfa-bench-cuda-autotune
# 6. BERT and ViT with fusion and autotune; bf16 with fusion.
for m in bert vit; do
  fits 60 && bench_row "$m-f32-fusion" "${!m}" f32 60 rfa-bench-cuda-fusion
  fits 60 && bench_row "$m-f32-autotune" "${!m}" f32 60 rfa-bench-cuda-autotune
done
for m in gpt2 bert vit; do
  fits 40 && bench_row "$m-bf16-fusion" "${!m}" bf16 40 rfa-bench-cuda-fusion
done
du -sh "$cache" "$tune_cache" > "$out/bench/cache_size.txt" 2>&1
finish
