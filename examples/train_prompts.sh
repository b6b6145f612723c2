#!/usr/bin/env bash
# PPO with PTX, as ColossalChat's examples/train_prompts.sh runs it. Same device choice as train_sft.sh.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
OUT=${OUT:-runs/examples}
if ! has_gpu || [ "${TINY:-0}" = 1 ]; then      # no GPU (or TINY=1): the bundled tiny setting on CPU
    launch coati_nb_train_prompts --strategy ddp --pretrain "$OUT/sft" --rm_pretrain "$OUT/rm" --save_path "$OUT/actor" \
        --num_episodes 1 --max_timesteps 2 --update_timesteps 1 --experience_batch_size 4 --train_batch_size 4 \
        --ptx_batch_size 4 --max_new_tokens 8 --max_datasets_size 16 --max_len 64 --lr 1e-5 --log_interval 1
else
    launch coati_nb_train_prompts --strategy colossalai_zero2 --model llama --pretrain "${PRETRAIN:-$OUT/sft}" \
        --rm_pretrain "${RM_PRETRAIN:-$OUT/rm}" --prompt_dataset "${PROMPTS:?set PROMPTS}" --pretrain_dataset "${PTX:?set PTX}" \
        --save_path "$OUT/actor" --num_episodes 10 --max_timesteps 10 --update_timesteps 10 --max_epochs 1 \
        --train_batch_size 8 --experience_batch_size 8 --ptx_batch_size 1 --kl_coef 0.1 --ptx_coef 0.9 --lr 1e-6 --ppo_preset corrected
fi
