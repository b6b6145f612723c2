"""Find and import ColossalChat's own source (the oracle of the parity tests and the notebooks' side-by-side cells).

The folder is named by COATI_NB_REFERENCE (a relative value is taken from the project root); unset, it is
../shared/reference/colossalchat-2023-06. It is ColossalChat's `applications/Chat` at commit d4fb7bf (2023-06-15).
On a CPU it imports with loralib==0.1.2 and the two-line stand-in for `colossalai.logging` in tests/_stubs.
Missing outside CI: `reference_dir()` returns None (the caller skips and says how to get it). Missing under CI: an error.
"""
import contextlib, importlib, io, os, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / '_stubs'
HOW_TO_GET = ("ColossalChat's source is not beside the project: clone hpcaitech/ColossalAI, check out commit d4fb7bf "
              "(2023-06-15), and point COATI_NB_REFERENCE at its applications/Chat folder; `pip install loralib==0.1.2`.")


def reference_dir(env=None) -> Path | None:
    "The reference folder, or None when it is missing outside CI; raises when CI is set and it is missing."
    env = os.environ if env is None else env
    value = env.get('COATI_NB_REFERENCE')
    path = Path(value) if value else ROOT.parent / 'shared' / 'reference' / 'colossalchat-2023-06'
    if not path.is_absolute(): path = ROOT / path
    if (path / 'coati' / '__init__.py').is_file(): return path
    if env.get('CI'): raise FileNotFoundError(f"CI is set but the ColossalChat reference is missing at {path}. {HOW_TO_GET}")
    return None


def import_coati(env=None):
    "Put the reference and the colossalai stand-in on sys.path and import `coati`; None when the reference is missing."
    path = reference_dir(env)
    if path is None: return None
    try: import loralib  # noqa: F401  ColossalChat's LoRA base
    except ImportError as e:
        if (env or os.environ).get('CI'): raise
        print(f"loralib is not installed: {e}. {HOW_TO_GET}"); return None
    for p in (str(path), str(STUBS)):          # STUBS ends up first, ahead of any installed colossalai
        if p in sys.path: sys.path.remove(p)
        sys.path.insert(0, p)
    import coati
    if not str(Path(coati.__file__).resolve()).startswith(str(path.resolve())):
        raise ImportError(f"`coati` was imported from {coati.__file__}, not from the reference at {path}")
    return coati


def ref(module: str):
    "Import a module of the reference by name, e.g. ref('coati.models.loss')."
    return importlib.import_module(module)


def colossalchat_training_step(actor, critic, actor_optim, critic_optim, experience, ptx_batch,
                               ptx_coef=0.9, vf_coef=1.0, eps_clip=0.2, value_clip=0.4) -> dict:
    """ColossalChat's PPOTrainer.training_step (coati/trainer/ppo.py, lines 164-202) with its NaiveStrategy
    (backward, step, zero_grad), restated because coati.trainer needs the real colossalai. Runs ColossalChat's own
    loss classes and `calc_action_log_probs`; call `import_coati()` first."""
    from coati.models.loss import GPTLMLoss, PolicyLoss, ValueLoss
    from coati.models.utils import calc_action_log_probs
    actor.train(); critic.train()
    num_actions = experience.action_mask.size(1)
    output = actor(experience.sequences, attention_mask=experience.attention_mask)
    log_probs = calc_action_log_probs(output, experience.sequences, num_actions)
    policy = PolicyLoss(eps_clip)(log_probs, experience.action_log_probs, experience.advantages, action_mask=experience.action_mask)
    ptx = GPTLMLoss()(actor(ptx_batch['input_ids'], attention_mask=ptx_batch['attention_mask'])['logits'], ptx_batch['labels'])
    (ptx * ptx_coef + policy * (1 - ptx_coef)).backward(); actor_optim.step(); actor_optim.zero_grad()
    values = critic(experience.sequences, action_mask=experience.action_mask, attention_mask=experience.attention_mask)
    value = ValueLoss(value_clip)(values, experience.values, experience.reward, action_mask=experience.action_mask) * vf_coef
    value.backward(); critic_optim.step(); critic_optim.zero_grad()
    return {'loss/policy_avg': policy.item(), 'loss/ptx_avg': ptx.item(), 'loss/value_avg': value.item()}


@contextlib.contextmanager
def quiet():
    "Our warnings and ColossalChat's progress bars silenced."
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        yield
