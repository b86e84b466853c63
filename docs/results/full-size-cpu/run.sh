#!/usr/bin/env bash
# Full-size Fashion-MNIST (60k train, 10k test) on this machine's 2 cores: M0, M*, RFA, for the
# speed bar at full size. Every phase on two CPU replicas (burn ndarray is single-threaded).
set -euo pipefail
B=${RFA_BIN:-target/release/rfa}   # cargo build --release -p rfa --features collective
R=${1:?usage: run.sh RUNS_DIR}
data=$HOME/.cache/rfa-assets/fashion-mnist
first=""
for spec in "fm-full-class4-s3 3 class:4" "fm-full-random10-s3 3 random:10"; do
  set -- $spec
  name=$1 seed=$2 forget=$3
  common=(--runs-dir $R --name $name --seed $seed --forget $forget --set data.path=$data --devices 2)
  # M0 does not depend on what is forgotten: the first case's is reused when its fingerprint fits.
  if [ -n "$first" ] && [ ! -e $R/$name/original ]; then
    mkdir -p $R/$name && cp -r $R/$first/original $R/$name/original
  fi
  $B train "${common[@]}" || { rm -rf $R/$name/original; $B train "${common[@]}"; }
  $B retrain "${common[@]}"
  $B unlearn "${common[@]}" --method rfa
  $B eval "${common[@]}" > $R/$name.eval.md
  first=$name
done
echo "all done"
