#!/usr/bin/env bash
# A distat search on a Slurm allocation: a Ray head on the first node, one Ray worker on each other node, and
# the search driver in this batch script (on the first node). Submit it from the repo root:
#
#   sbatch launch/slurm.sh                                            # search_spaces/adaptive_pgd.yaml
#   DISTAT_SEARCH=search_spaces/demo.yaml sbatch --nodes=1 launch/slurm.sh
#   DISTAT_ROOT=/project/$USER/distat DISTAT_TRACKING_URI=https://mlflow.example.com sbatch launch/slurm.sh
#
# Submitting it again with the same settings resumes the search (`distat resume` when the search folder
# already holds one): after a time limit, a node failure, or scancel. Five minutes before the time limit the
# driver is asked to stop (SIGINT), so Tune saves its state and in-flight trials keep their checkpoints.
#
# Settings (environment variables; defaults in brackets):
#   DISTAT_SEARCH         search YAML, relative to the repo root     [search_spaces/adaptive_pgd.yaml]
#   DISTAT_ROOT           shared folder seen by every node           [<repo>/runs]
#   DISTAT_STORAGE        distat search --storage                    [$DISTAT_ROOT/searches]
#   DISTAT_CACHE_DIR      attack-resource cache                      [$DISTAT_ROOT/cache]
#   DISTAT_TRACKING_URI   MLflow tracking URI (no credentials in it: MLFLOW_TRACKING_TOKEN etc. stay env vars)
#                                                                    [sqlite:///$DISTAT_ROOT/mlflow.db]
#   DISTAT_VENV           virtualenv: the project + a CUDA torch     [<repo>/.venv]
#   DISTAT_RAY_PORT       Ray GCS port on the head node              [6379]
#   DISTAT_DASHBOARD_HOST / DISTAT_DASHBOARD_PORT                    [127.0.0.1 / 8265]
#   DISTAT_HEAD_IP        address the workers use to reach the head  [first IPv4 address of the head node]
#   DISTAT_GPUS_PER_NODE  GPUs Ray may use on each node              [from SLURM_GPUS_ON_NODE / --gpus-per-node]
#   DISTAT_RAY_AUTH       token (shared Ray token) or disabled       [token]
#   DISTAT_JOIN_TIMEOUT   seconds to wait for all nodes to join      [300]
#
# EDIT the #SBATCH lines for your site (partition, account, GPU request). Each node hosts one Ray node holding
# all of its CPUs and GPUs; adaptive_pgd.yaml runs 4 trials at once, each with 1 GPU (training) and then
# 4 attack actors x (1 CPU + 0.25 GPU): one node with 4 GPUs and 16+ CPUs, or several smaller ones.
#SBATCH --job-name=distat-search
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=2
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --output=distat-search-%j.out
##SBATCH --partition=gpu
##SBATCH --account=myproject

set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 2; }

[ -n "${SLURM_JOB_ID:-}" ] || die "run me with sbatch (no SLURM_JOB_ID in the environment)"

repo=$(cd "${SLURM_SUBMIT_DIR:-$PWD}" && pwd)
[ -f "$repo/pyproject.toml" ] && [ -d "$repo/distat" ] || die "submit from the root of the repository (got $repo)"
cd "$repo"

search_yaml=${DISTAT_SEARCH:-search_spaces/adaptive_pgd.yaml}
root=${DISTAT_ROOT:-$repo/runs}
storage=${DISTAT_STORAGE:-$root/searches}
export DISTAT_CACHE_DIR=${DISTAT_CACHE_DIR:-$root/cache}
tracking_uri=${DISTAT_TRACKING_URI:-sqlite:///$root/mlflow.db}
venv=${DISTAT_VENV:-$repo/.venv}
port=${DISTAT_RAY_PORT:-6379}
dashboard_host=${DISTAT_DASHBOARD_HOST:-127.0.0.1}
dashboard_port=${DISTAT_DASHBOARD_PORT:-8265}
join_timeout=${DISTAT_JOIN_TIMEOUT:-300}

[ -f "$search_yaml" ] || die "search YAML $search_yaml not found"
[ -x "$venv/bin/distat" ] || die "no $venv/bin/distat: run scripts/setup.sh there first (with a CUDA torch, see launch/README.md)"
case "$storage" in   # trial folders are written with plain file I/O: no object-store URIs
  *://*) die "DISTAT_STORAGE must be a path on a shared filesystem, not a URI ($storage)" ;;
esac
# srun steps inherit this environment: every node runs ray and the CLI from the same (shared) virtualenv
export PATH="$venv/bin:$PATH"
export TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=1

# Resources per node (Slurm gives every node of this job the same, with --gpus-per-node / --cpus-per-task).
cpus_per_node=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
gpus_requested=${SLURM_GPUS_PER_NODE:-0}
gpus_requested=${gpus_requested##*:}          # "a100:4" -> 4
gpus_per_node=${DISTAT_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$gpus_requested}}
# What each `ray start` step holds: explicit, because srun's defaults for steps differ between Slurm versions.
# --overlap (Slurm >= 20.11) lets the short helper steps below run beside the long-lived Ray steps.
step_resources=(--ntasks-per-node=1 --cpus-per-task="$cpus_per_node" --overlap)
if [ "$gpus_per_node" -gt 0 ]; then
  step_resources+=(--gpus-per-node="$gpus_per_node")
fi

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
n_nodes=${#nodes[@]}
head_node=${nodes[0]}

# Storage and cache must be the same files on every node: trials write checkpoints there from any node, and
# the driver (here) reads them back. Prove it before starting anything.
mkdir -p "$storage" "$DISTAT_CACHE_DIR"
for dir in "$storage" "$DISTAT_CACHE_DIR"; do
  marker="$dir/.shared-check-$SLURM_JOB_ID"
  : >"$marker"
  if ! srun --nodes="$n_nodes" --ntasks="$n_nodes" --ntasks-per-node=1 --overlap test -f "$marker"; then
    rm -f "$marker"
    die "$dir is not visible from every node: point DISTAT_ROOT at a shared filesystem"
  fi
  rm -f "$marker"
done

# Ray token: every node and the driver need the same one. Ray keeps it in ~/.ray/auth_token; it travels to the
# other nodes in the environment of the srun steps (visible to this user's processes only), not via $HOME.
if [ "${DISTAT_RAY_AUTH:-token}" = token ]; then
  [ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
  RAY_AUTH_TOKEN=$(ray get-auth-token)
  export RAY_AUTH_TOKEN RAY_AUTH_MODE=token
else
  export RAY_AUTH_MODE=disabled
fi

if [ -n "${DISTAT_HEAD_IP:-}" ]; then
  head_ip=$DISTAT_HEAD_IP
else
  head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head_node" hostname -I |
    awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/ && $i !~ /^127\./) {print $i; exit}}')
fi
[ -n "$head_ip" ] || die "no IPv4 address found for $head_node: set DISTAT_HEAD_IP"
address="$head_ip:$port"

ray_pids=()
driver_pid=""
# shellcheck disable=SC2329  # called by the traps below
stop_driver() {
  echo "slurm.sh: stopping the search (time limit near or job cancelled)" >&2
  if [ -n "$driver_pid" ]; then kill -INT "$driver_pid" 2>/dev/null || true; fi
}
# shellcheck disable=SC2329
cleanup() {
  if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
    kill -INT "$driver_pid" 2>/dev/null || true
  fi
  for pid in "${ray_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap stop_driver USR1 TERM

echo "slurm.sh: Ray head on $head_node ($address), $n_nodes node(s) x $cpus_per_node CPU(s) x $gpus_per_node GPU(s)"
srun --nodes=1 --ntasks=1 "${step_resources[@]}" -w "$head_node" \
  ray start --head --block --node-ip-address="$head_ip" --port="$port" \
  --num-cpus="$cpus_per_node" --num-gpus="$gpus_per_node" \
  --dashboard-host="$dashboard_host" --dashboard-port="$dashboard_port" &
ray_pids+=("$!")

# The head must answer before workers try to join.
deadline=$((SECONDS + join_timeout))
until ray status --address "$address" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || die "the Ray head did not come up within ${join_timeout}s"
  sleep 5
done

if [ "$n_nodes" -gt 1 ]; then
  srun --nodes=$((n_nodes - 1)) --ntasks=$((n_nodes - 1)) "${step_resources[@]}" --exclude="$head_node" \
    ray start --block --address="$address" --num-cpus="$cpus_per_node" --num-gpus="$gpus_per_node" &
  ray_pids+=("$!")
fi

# Wait until every node has joined (ray status output is for humans: ask the cluster instead).
python - "$address" "$n_nodes" "$join_timeout" <<'PY' || die "not every node joined the Ray cluster"
import sys
import time

import ray

address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want:
        break
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} of {want} nodes joined within {timeout:.0f}s")
    time.sleep(5)
total = ray.cluster_resources()
print(f"slurm.sh: {len(alive)} node(s) joined: {total.get('CPU', 0):.0f} CPUs, {total.get('GPU', 0):.0f} GPUs")
ray.shutdown()
PY

echo "slurm.sh: dashboard on $head_node $dashboard_host:$dashboard_port; from your machine:"
echo "  ssh -N -L $dashboard_port:127.0.0.1:$dashboard_port -J <login node> $head_node"

name=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$search_yaml")
search_dir="$storage/$name"

# Job control gives the driver its own process group and keeps SIGINT deliverable to it (a non-interactive
# shell starts background jobs with SIGINT ignored): the USR1 trap (stop_driver) turns the time-limit warning into
# the Ctrl-C that makes Tune save its state.
set -m
if [ -f "$search_dir/distat_search.json" ]; then
  echo "slurm.sh: resuming $search_dir"
  distat resume "$search_dir" --address "$address" &
else
  distat search "$search_yaml" --address "$address" --storage "$storage" --tracking-uri "$tracking_uri" \
    --cache-dir "$DISTAT_CACHE_DIR" &
fi
driver_pid=$!
set +m

rc=0
wait "$driver_pid" || rc=$?
while kill -0 "$driver_pid" 2>/dev/null; do   # a trapped signal interrupted `wait`: the driver is stopping
  rc=0
  wait "$driver_pid" || rc=$?
done
driver_pid=""

if [ "$rc" -eq 0 ]; then
  echo "slurm.sh: search finished; results in $search_dir, front: distat pareto $search_dir"
else
  echo "slurm.sh: driver exited with status $rc; resubmit this script (same settings) to resume $search_dir" >&2
fi
exit "$rc"
