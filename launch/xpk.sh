#!/usr/bin/env bash
# Multislice TPU training on GKE through xpk (github.com/AI-Hypercomputer/xpk):
# one workload of NUM_SLICES slices; the mesh's data axis spans the slices
# over DCN (set --config.mesh.dcn_data=NUM_SLICES).
#
#   launch/xpk.sh --cluster C --tpu-type v5p-128 --num-slices 2 --image IMAGE \
#       [--workload NAME] [--dry-run] -- --config=configs/zero.py:paper ...
#
# IMAGE is a container with this checkout installed (`pip install -e .`).
# Everything after `--` goes to `python -m r1jax.launch`; --dry-run prints the
# xpk command instead of running it.
set -euo pipefail

cluster="" tpu_type="" slices=1 image="" workload="r1jax-$(date +%m%d-%H%M)" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) cluster="$2"; shift 2 ;;
    --tpu-type) tpu_type="$2"; shift 2 ;;
    --num-slices) slices="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --workload) workload="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [[ -z "$cluster" || -z "$tpu_type" || -z "$image" || $# -eq 0 ]]; then
  echo "usage: $0 --cluster C --tpu-type T --image IMAGE [--num-slices N] [--workload W]" \
       "[--dry-run] -- LAUNCH_ARGS..." >&2
  exit 2
fi

cmd=(xpk workload create --cluster "$cluster" --workload "$workload" --tpu-type "$tpu_type"
     --num-slices "$slices" --docker-image "$image"
     --command "R1JAX_DISTRIBUTED=1 python -m r1jax.launch $(printf '%q ' "$@")")
if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
else
  "${cmd[@]}"
fi
