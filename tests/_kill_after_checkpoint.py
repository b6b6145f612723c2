"""Fault injection for the resume test: run coati_nb_train_prompts in this process and SIGKILL it right after its N-th
PPO checkpoint is on disk — a crash at a known point, with no timer to race.
Usage: python tests/_kill_after_checkpoint.py N [coati_nb_train_prompts flags...]"""
import os, signal, sys

import coati_nb.trainer.ppo as ppo
from coati_nb.cli import train_prompts_cli

n, real, written = int(sys.argv[1]), ppo.PPOTrainer._checkpoint, [0]

def _checkpoint_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)
    written[0] += 1
    if written[0] == n: os.kill(os.getpid(), signal.SIGKILL)

# fault injection (a test helper, not the library): fit() calls self._checkpoint (a @patch method); the module-level
# name is replaced too, for a fit() that looks the function up there
ppo.PPOTrainer._checkpoint = _checkpoint_then_die
if hasattr(ppo, '_checkpoint'): ppo._checkpoint = _checkpoint_then_die
sys.exit(train_prompts_cli(sys.argv[2:]))
