#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: copy this checkout to every worker,
# install it, run the same command on all workers (JAX finds its peers through
# the TPU metadata; no Pathways or GKE needed), then collect the logs.
#
#   launch/tpu_vm.sh --tpu NAME --zone ZONE [--project P] [--dry-run] \
#       -- --config=configs/zero.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B,paper
#
# Everything after `--` goes to `python -m r1jax.launch`. --dry-run prints the
# commands instead of running them. Checkpoints and data directories should be
# on storage all workers see (a gs:// workdir, or a shared disk).
set -euo pipefail

tpu="" zone="" project="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [[ -z "$tpu" || -z "$zone" || $# -eq 0 ]]; then
  echo "usage: $0 --tpu NAME --zone ZONE [--project P] [--dry-run] -- LAUNCH_ARGS..." >&2
  exit 2
fi

run() {
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
if [[ -n "$project" ]]; then
  where+=(--project "$project")
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
archive="/tmp/r1jax-src.tar.gz"
launch_args="$(printf '%q ' "$@")"
# Expanded on each worker, not here.
# shellcheck disable=SC2016
log='$HOME/r1jax-$(hostname).log'

# 1. Ship the checkout (tracked files only) and install it on every worker.
run git -C "$repo" archive --format=tar.gz --prefix=r1jax/ -o "$archive" HEAD
run "${gcloud_tpu[@]}" scp "$archive" "$tpu:r1jax-src.tar.gz" --worker=all "${where[@]}"
run "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command \
  "rm -rf r1jax && tar xzf r1jax-src.tar.gz && pip install -q -e './r1jax[tpu,gcs]'"
# 2. The same command on all workers; each writes its own log.
run "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command \
  "cd r1jax && R1JAX_DISTRIBUTED=1 python -m r1jax.launch $launch_args 2>&1 | tee $log"
# 3. Collect the logs.
run mkdir -p "logs/$tpu"
run "${gcloud_tpu[@]}" scp "$tpu:r1jax-*.log" "logs/$tpu/" --worker=all "${where[@]}"
