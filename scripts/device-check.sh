#!/usr/bin/env bash
# Runs on the GPU machine (see the `device` tool): the CUDA tests of a test binary built here with
#   CUDARC_CUDA_VERSION=13000 cargo test --release --features cuda -p rfa-models --test cuda --no-run
# and copied to .device/rfa-models-cuda-tests. Each test runs alone under a time limit, so a slow
# one (run-time kernel compilation) still leaves the others' results. Output goes to $OUT.
set -uo pipefail
out=${OUT:-$(mktemp -d)}
bin=.device/rfa-models-cuda-tests
export RFA_FIXTURES=$PWD/fixtures
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} > "$out/device.txt" 2>&1
status=0
for t in models_on_cuda_match_the_reference lora_gradients_on_cuda_equal_the_cpu; do
  start=$(date +%s.%N)
  timeout "${TEST_LIMIT:-200}" "$bin" --exact "$t" --nocapture --test-threads=1 > "$out/$t.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  printf '%s rc=%s wall_s=%s\n' "$t" "$rc" "$(awk "BEGIN{printf \"%.1f\", $end - $start}")" | tee -a "$out/summary.txt"
  [ $rc -eq 0 ] || status=1
done
cat "$out"/device.txt "$out"/*.log
exit $status
