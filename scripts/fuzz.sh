#!/usr/bin/env bash
# Fuzzes the parsers of files a user may be handed (fuzz/fuzz_targets): safetensors (models,
# adapters, optimizer states), config.json, adapter_config.json, IDX, CIFAR-10 binaries, id files
# and forget specifications, run TOML. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Each target starts from fuzz/seeds/<target> and runs for
# SECONDS (default 60); a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors model_config adapter_config idx cifar ids run_toml)
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "fuzz: $t for ${seconds}s"
  # -rss_limit_mb: a parser must refuse what would not fit, not allocate it.
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 2>&1 | tail -n 12
done
