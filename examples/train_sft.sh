#!/usr/bin/env bash
# Supervised fine-tuning, as ColossalChat's examples/train_sft.sh runs it (edit the paths for your model and data).
#   bash examples/train_sft.sh                 # GPUs: all, least used first; no GPU: the bundled tiny setting on CPU
#   NPROC=4 bash examples/train_sft.sh         # four processes
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash examples/train_sft.sh   # on each of two machines
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
OUT=${OUT:-runs/examples}
if ! has_gpu || [ "${TINY:-0}" = 1 ]; then      # no GPU (or TINY=1): the bundled tiny setting on CPU
    launch coati_nb_train_sft --strategy ddp --save_path "$OUT/sft" --max_datasets_size 64 --max_len 64 \
        --batch_size 8 --accumulation_steps 1 --max_epochs 1 --lr 1e-3 --log_interval 1
else
    launch coati_nb_train_sft --strategy colossalai_zero2 --model llama --pretrain "${PRETRAIN:?set PRETRAIN to a model folder}" \
        --dataset "${DATASET:?set DATASET to instruction data}" --save_path "$OUT/sft" \
        --batch_size 4 --accumulation_steps 8 --max_epochs 1 --lr 2e-5 --max_len 512 --grad_checkpoint
fi
