#!/usr/bin/env bash
# Full-size Fashion-MNIST (60k train, 10k test) on this machine's 2 cores: M0, M*, RFA, for the
# speed bar at full size. Every phase on two CPU replicas (burn ndarray is single-threaded).
#   docs/results/full-size-cpu/run.sh RUNS_DIR    (from the repository root; RFA_BIN to name rfa)
set -euo pipefail
B=${RFA_BIN:-target/release/rfa}   # cargo build --release -p rfa --features collective
R=${1:?usage: run.sh RUNS_DIR}
data=$HOME/.cache/rfa-assets/fashion-mnist
first=""
# Cases: "NAME SEED FORGET"; the cases of one seed share M0.
cases=("fm-full-class4-s3 3 class:4" "fm-full-random10-s3 3 random:10"
       "fm-full-class7-s4 4 class:7" "fm-full-random10-s4 4 random:10")
for spec in "${cases[@]}"; do
  set -- $spec
  name=$1 seed=$2 forget=$3
  common=(--runs-dir $R --name $name --seed $seed --forget $forget --set data.path=$data --devices 2)
  # M0 does not depend on what is forgotten: the first case's is reused when its fingerprint fits.
  if [ -n "$first" ] && [ "${first##*-}" = "s$seed" ] && [ ! -e $R/$name/original ]; then
    mkdir -p $R/$name && cp -r $R/$first/original $R/$name/original
  fi
  $B train "${common[@]}" || { rm -rf $R/$name/original; $B train "${common[@]}"; }
  $B retrain "${common[@]}"
  $B unlearn "${common[@]}" --method rfa
  $B eval "${common[@]}" > $R/$name.eval.md
  cp $R/$name.eval.md "$(dirname "$0")/$name.md"
  cp $R/$name/rfa/unlearn_log.json "$(dirname "$0")/$name.unlearn_log.json"
  first=$name
done
echo "all done"
