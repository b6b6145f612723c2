"""Fault injection for the resume tests: run a training script in this process and SIGKILL it right after its N-th
checkpoint is on disk — a crash at a known point, with no timer to race.
Usage: python tests/_kill_after_checkpoint.py N {prompts|sft|rm} [the script's flags...]
(prompts: PPO checkpoints after updates; sft / rm: the supervised trainers' checkpoints after epochs)"""
import os, signal, sys

import coati_nb.trainer.base as base
import coati_nb.trainer.ppo as ppo
from coati_nb.cli import train_prompts_cli, train_rm_cli, train_sft_cli

n, script = int(sys.argv[1]), sys.argv[2]
owner, method, main = {'prompts': (ppo.PPOTrainer, '_checkpoint', train_prompts_cli),
                       'sft': (base.SLTrainer, '_save_epoch', train_sft_cli),
                       'rm': (base.SLTrainer, '_save_epoch', train_rm_cli)}[script]
real, written = getattr(owner, method), [0]

def _checkpoint_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)
    written[0] += 1
    if written[0] == n: os.kill(os.getpid(), signal.SIGKILL)

# fault injection (a test helper, not the library): fit() calls the checkpoint method through self (a @patch method)
setattr(owner, method, _checkpoint_then_die)
sys.exit(main(sys.argv[3:]))
