#!/usr/bin/env bash
# Multi-node EEG2IM training under SLURM: one torchrun per node, rendezvous on the first node.
#
#   sbatch --nodes 2 --gpus-per-node 8 launchers/slurm_train.sh configs/eeg_imagenet40.yaml [key=value ...]
#
# Long jobs: set train.halt_after to fit the time limit and resubmit with --resume (the
# default below): each stage continues from its latest complete checkpoint, data position included.
#SBATCH --job-name=eeg2im
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch launchers/slurm_train.sh CONFIG [key=value ...]}
shift
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
srun --kill-on-bad-exit=1 .venv/bin/torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD_NODE:29500" \
  launchers/train.py --config "$CONFIG" "$@" --resume
