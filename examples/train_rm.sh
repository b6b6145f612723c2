#!/usr/bin/env bash
# Reward model training, as ColossalChat's examples/train_rm.sh runs it. Same device choice as train_sft.sh.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
OUT=${OUT:-runs/examples}
if ! has_gpu || [ "${TINY:-0}" = 1 ]; then      # no GPU (or TINY=1): the bundled tiny setting on CPU
    launch coati_nb_train_rm --strategy ddp --pretrain "$OUT/sft" --save_path "$OUT/rm" --test True --max_len 64 \
        --batch_size 8 --max_epochs 1 --lr 1e-4 --log_interval 1
else
    launch coati_nb_train_rm --strategy colossalai_zero2 --model llama --pretrain "${PRETRAIN:-$OUT/sft}" \
        --dataset "${DATASET:?set DATASET to preference pairs}" --save_path "$OUT/rm" \
        --loss_fn log_sig --batch_size 4 --max_epochs 1 --lr 5e-6 --max_len 512
fi
