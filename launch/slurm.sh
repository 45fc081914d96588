#!/usr/bin/env bash
# GPU clusters under SLURM: one task per node, all GPUs of the node visible
# to it; jax.distributed.initialize() reads the coordinator, process count and
# process id from SLURM's environment.
#
#   launch/slurm.sh --nodes 4 [--gpus-per-node 8] [--partition P] [--time 24:00:00] \
#       [--dry-run] -- --config=configs/zero.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B
#
# Writes the batch script to logs/r1jax-slurm.sbatch and submits it with
# sbatch; --dry-run prints the script and the sbatch command instead.
set -euo pipefail

nodes=1 gpus=8 partition="" time_limit="24:00:00" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "usage: $0 [--nodes N] [--gpus-per-node G] [--partition P] [--time T] [--dry-run]" \
       "-- LAUNCH_ARGS..." >&2
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
script="logs/r1jax-slurm.sbatch"
body="#!/usr/bin/env bash
#SBATCH --job-name=r1jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=$time_limit
#SBATCH --output=logs/r1jax-%j-%t.log
${partition:+#SBATCH --partition=$partition
}cd $(printf '%q' "$repo")
export R1JAX_DISTRIBUTED=1
srun python -m r1jax.launch $(printf '%q ' "$@")
"
if [[ "$dry_run" == 1 ]]; then
  printf '%s' "$body"
  echo "sbatch $script"
else
  mkdir -p logs
  printf '%s' "$body" > "$script"
  sbatch "$script"
fi
