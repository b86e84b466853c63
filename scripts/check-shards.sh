#!/usr/bin/env bash
# CI's check of docs/SCALING.md: the Slurm array script and the Kubernetes Indexed Job's command
# line run here with their index variables set (three shards side by side), `--merge` writes the
# tables, and they must equal the tables of the unsharded command, metric for metric (times
# aside). The matrix is the `--small` Fashion-MNIST one cut to fit CI (--set, three methods,
# one seed), on the rfa binary named by RFA_BIN (default: the debug build `cargo xtask test`
# made).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
export RFA_BIN=${RFA_BIN:-$target/debug/rfa}
export RFA_EXTRA="--methods rfa,grad-ascent,npo --seeds 1 --set data.max_train=300 --set data.max_test=100 --set train.epochs=2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2086
RFA_RESULTS_ROOT=$work/unsharded cargo xtask reproduce fashion-mnist --small --runs-dir "$work/runs-unsharded" $RFA_EXTRA

# Slurm: the array's three tasks, as sbatch would start them.
mkdir -p "$work/slurm"
for i in 0 1 2; do
  SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=3 RFA_RUNS=$work/runs-slurm \
    bash scripts/cluster/reproduce.sbatch >"$work/slurm/$i.log" 2>&1 &
done
wait
# shellcheck disable=SC2086
RFA_RESULTS_ROOT=$work/slurm cargo xtask reproduce fashion-mnist --small --runs-dir "$work/runs-slurm" $RFA_EXTRA --merge

# Kubernetes: the container's command line, with the Job's index and the volume's path.
line=$(grep -o '"cargo xtask reproduce [^"]*"' scripts/cluster/reproduce-job.yaml | tr -d '"')
for i in 0 1 2; do
  JOB_COMPLETION_INDEX=$i sh -c "${line//\/runs/$work/runs-k8s}" >"$work/k8s-$i.log" 2>&1 &
done
wait
# shellcheck disable=SC2086
RFA_RESULTS_ROOT=$work/k8s cargo xtask reproduce fashion-mnist --small --runs-dir "$work/runs-k8s" $RFA_EXTRA --merge

python3 - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
timing = {"seconds", "peak_rss_mib", "first_step_seconds", "median_step_seconds", "peak_device_mib",
          "ran_on", "files", "base_model_sha256", "record"}
def metrics(root):
    out = {}
    for p in sorted((root / "docs/results/reproduce").glob("*/report.json")):
        r = json.loads(p.read_text())
        out[p.parent.name] = [{k: v for k, v in m.items() if k not in timing} for m in r["models"]]
    return out
base = metrics(work / "unsharded")
assert len(base) == 2, sorted(base)
for kind in ["slurm", "k8s"]:
    got = metrics(work / kind)
    assert got == base, f"{kind}: the merged tables differ from the unsharded run's"
print(f"shards: the Slurm and Kubernetes runs' merged tables equal the unsharded run's ({sum(len(v) for v in base.values())} rows)")
PY
