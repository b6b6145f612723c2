#!/usr/bin/env bash
# ColossalChat's worked example: bloom-560m through the three RLHF stages with this project's console scripts.
#   stage 1  SFT, LoRA rank 16, on InstructionWild answers          (README.md:285-301, test_ci.sh:30-33 of the source)
#   stage 2  reward model, --loss_fn log_exp, --test True           (test_ci.sh:67-73, 88-93)
#   stage 3  PPO from a 100-prompt sample (generate_prompt_dataset) (examples/generate_prompt_dataset.py, test_ci.sh:109-117)
#
# GPU machine with the model and data on disk:
#   PRETRAIN=/path/to/bloom-560m SFT_DATASET=/path/to/instinwild_en.json RM_DATASET=/path/to/hh-rlhf \
#   PROMPT_SOURCE=/path/to/instinwild_en.json PTX_DATASET=/path/to/alpaca_data.json bash examples/bloom560m_three_stages.sh
# DRY_RUN=1 prints the commands without running them (with PRETRAIN set: the GPU commands, even on a CPU).
# No GPU, no PRETRAIN, or TINY=1: a tiny BLOOM config (2 layers, width 64, the bundled tokenizer) on two CPU
# processes, with the real-format samples in $COATI_NB_REALDATA (default ../shared/data, read only, never copied):
#   SFT on Alpaca's seed tasks (InstructionWild's sample holds prompts only, no answers; same instruction/input/output
#   rows as instinwild_en.json), the RM on hh-rlhf harmless-base, PPO from 100 InstructionWild seed prompts.
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
ROOT=$(cd "$_here/.." && pwd)
OUT=${OUT:-runs/bloom560m}
mkdir -p "$OUT"

if [ -n "${PRETRAIN:-}" ] && [ "${TINY:-0}" != 1 ] && { has_gpu || [ "${DRY_RUN:-0}" = 1 ]; }; then   # the source's setting
    STRATEGY=${STRATEGY:-colossalai_zero2}
    SFT_DATA=${SFT_DATASET:?set SFT_DATASET to instinwild_en.json}
    RM_DATA=(--dataset "${RM_DATASET:?set RM_DATASET to an hh-rlhf folder}" --subset "${RM_SUBSET:-harmless-base}")
    PROMPT_SRC=${PROMPT_SOURCE:-$SFT_DATA}
    PTX_DATA=${PTX_DATASET:?set PTX_DATASET to alpaca_data.json}
    SIZES=(--max_len 512); SFT_SIZES=(--max_datasets_size 512 --batch_size 4 --accumulation_steps 8 --lr 2e-5)
    PPO_SIZES=(--num_episodes 1 --max_timesteps 2 --update_timesteps 2 --train_batch_size 2 --experience_batch_size 2
               --ptx_batch_size 1 --max_input_len 256 --max_new_tokens 128 --lr 1e-6)
else                                                                     # tiny BLOOM on CPU, real-format samples
    REAL=${COATI_NB_REALDATA:-../shared/data}
    case "$REAL" in /*) ;; *) REAL="$ROOT/$REAL" ;; esac
    if [ ! -d "$REAL/instructionwild" ]; then
        echo "error: the shared samples are not at $REAL (set COATI_NB_REALDATA; see ../shared/data/README.md)" >&2; exit 2
    fi
    STRATEGY=ddp
    PRETRAIN="$OUT/bloom-tiny"
    if [ ! -f "$PRETRAIN/config.json" ] && [ "${DRY_RUN:-0}" != 1 ]; then   # made once, atomically
        python - "$PRETRAIN" <<'EOF'
import os, shutil, sys, torch
from transformers import BloomForCausalLM
from coati_nb.models import tiny_config
from coati_nb.tokenizer import load_tokenizer
out = sys.argv[1]; tmp = out + '.tmp'
tok = load_tokenizer(); torch.manual_seed(0)
cfg = tiny_config('bloom', vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
shutil.rmtree(tmp, ignore_errors=True)
BloomForCausalLM(cfg).save_pretrained(tmp); tok.save_pretrained(tmp); os.replace(tmp, out)
print(f"tiny BLOOM ({sum(p.numel() for p in BloomForCausalLM(cfg).parameters())} parameters) in {out}")
EOF
    fi
    SFT_DATA="$REAL/alpaca/seed_tasks.jsonl"
    RM_DATA=(--dataset "$REAL/hh-rlhf-harmless-base/test.jsonl.gz" --skip_bad)
    PROMPT_SRC="$REAL/instructionwild/seed_prompts_en.jsonl"
    PTX_DATA="$REAL/alpaca/seed_tasks.jsonl"
    SIZES=(--max_len 128); SFT_SIZES=(--max_datasets_size 64 --batch_size 8 --accumulation_steps 1 --lr 1e-3 --skip_bad)
    PPO_SIZES=(--num_episodes 1 --max_timesteps 2 --update_timesteps 1 --train_batch_size 4 --experience_batch_size 4
               --ptx_batch_size 4 --max_input_len 64 --max_new_tokens 8 --lr 1e-5 --skip_bad)
fi

stage() { echo "+ $*"; [ "${DRY_RUN:-0}" = 1 ] || launch "$@"; }      # each command is printed, then run

echo "== stage 1: SFT with LoRA rank 16 -> $OUT/sft"
stage coati_nb_train_sft --strategy "$STRATEGY" --model bloom --pretrain "$PRETRAIN" --dataset "$SFT_DATA" \
    --lora_rank 16 --max_epochs 1 --log_interval 1 --save_path "$OUT/sft" "${SIZES[@]}" "${SFT_SIZES[@]}"

echo "== stage 2: reward model, log_exp loss, --test True -> $OUT/rm"
stage coati_nb_train_rm --strategy "$STRATEGY" --model bloom --pretrain "$OUT/sft" "${RM_DATA[@]}" \
    --loss_fn log_exp --test True --lora_rank 0 --max_epochs 1 --batch_size 4 --lr 5e-6 --log_interval 1 \
    --save_path "$OUT/rm" "${SIZES[@]}"

echo "== stage 3: 100 prompts sampled, then PPO -> $OUT/actor"
cmd=(coati_nb_generate_prompt_dataset --dataset_path "$PROMPT_SRC" --save_path "$OUT/prompts_100.json" --sample_size 100)
echo "+ ${cmd[*]}"; [ "${DRY_RUN:-0}" = 1 ] || "${cmd[@]}"
stage coati_nb_train_prompts --strategy "$STRATEGY" --model bloom --pretrain "$OUT/sft" --rm_pretrain "$OUT/rm" \
    --prompt_dataset "$OUT/prompts_100.json" --pretrain_dataset "$PTX_DATA" --max_epochs 1 --log_interval 1 \
    --save_path "$OUT/actor" "${SIZES[@]}" "${PPO_SIZES[@]}"
echo "done: $OUT/sft -> $OUT/rm -> $OUT/actor"
