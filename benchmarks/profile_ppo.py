"""Where the time of one PPO update goes, for the demo's model size and a larger one, side by side.

One update of `PPOTrainer` (built by `coati_nb.pipeline.run_ppo`, 'corrected' preset, PTX on) is `update_timesteps`
rollouts of `experience_batch_size` prompts each (generation, then the scoring forwards of the experience maker) and
`ppo_epochs` passes of learning steps over the buffer. Nothing in the library is changed: the script passes a callback
to `run_ppo` that, when `fit` starts, wraps bound methods of the trainer, the strategy and the actor's `generate`, and
puts forward pre/post hooks on the four models; every part is timed with `time.perf_counter`.

The PTX loss and the policy loss are summed before one `backward()` call. The PTX share of that call is timed with
two gradient hooks: one on the PTX loss (its gradient is the first thing the backward pass computes on the PTX branch)
and one on the token embeddings of the PTX forward (the last activation of that branch). The autograd engine runs ready
nodes with the higher sequence number first, so the PTX branch (built after the policy forward) runs as one block; the
script checks that its end comes before the policy branch's end and says so if not.

Models are randomly initialised (no training). How soon a random actor samples EOS depends on its initialisation, so
with the demo's `min_new_tokens=1` the two sizes would decode different numbers of tokens; by default EOS is therefore
held back until `max_new_tokens` (`--min-new-tokens` = `--max-new-tokens`): every response has the full length in both
sizes, the demo's longest case. `--min-new-tokens 1` gives the demo's setting.
    python benchmarks/profile_ppo.py [--updates 5 --warmup 1 --threads N --json OUT]"""
import argparse, json, os, statistics, sys, tempfile, time
from dataclasses import fields
from pathlib import Path

import torch
import transformers

from coati_nb.models import family_class
from coati_nb.pipeline import PipelineConfig, run_ppo, tiny_llama_config
from coati_nb.strategies import NaiveStrategy
from coati_nb.tokenizer import load_tokenizer, save_tokenizer
from coati_nb.trainer.base import Callback
from coati_nb.trainer.ppo import PPO_PRESETS
from coati_nb.utils import atomic_write, count_parameters, set_seed

from coati_nb.pipeline import SIZE_PRESETS

# The second size profiled: the 3.7 M-parameter point of 14a_model_size's curve (hidden 256, 4 layers, 8 heads). The
# chosen `--size small` preset keeps the demo's shape (it only trains SFT longer), so its PPO update costs what the
# default's does; the wide model is what "a few million parameters" would cost per update.
WIDE = dict(hidden_size=256, num_layers=4, num_heads=8)

SHAPE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'max_len')  # what a size preset may change here
ROWS = ('generation',
        'exp: actor log-probs', 'exp: actor sampling log-probs', 'exp: reference model', 'exp: critic values',
        'exp: reward model',
        'learn: actor forward', 'learn: PTX forward', 'learn: actor backward (policy)', 'learn: PTX backward',
        'learn: actor optimizer step', 'learn: critic forward', 'learn: critic backward', 'learn: critic optimizer step')
_SAMPLING_KW = ('temperature', 'top_k', 'top_p', 'min_new_tokens')    # what `sampling_kwargs` passes to Actor.forward


def _wrap(obj, name, around):
    "Replace the bound method `obj.name` by an instance attribute that calls `around(original, *args, **kwargs)`."
    orig = getattr(obj, name)
    setattr(obj, name, lambda *a, **kw: around(orig, *a, **kw))


class UpdateProfiler(Callback):
    "Times the parts of every PPO update; `updates` holds one {'parts', 'whole', 'tokens', 'positions'} per update."
    def __init__(self):
        self.updates, self.cur, self.phase, self.warnings = [], None, None, []
        self._stack, self._ptx = [], {}

    def _add(self, row, dt): self.cur['parts'][row] = self.cur['parts'].get(row, 0.0) + dt

    def on_fit_start(self, trainer):
        self.trainer, actor, critic = trainer, trainer.actor, trainer.critic
        _wrap(trainer, '_make_experience', self._make_experience)
        _wrap(trainer, '_learn_and_log', self._learn_and_log)
        _wrap(trainer, '_ptx_loss', self._ptx_loss)
        _wrap(trainer, 'optimizer_update', self._optimizer_update)
        _wrap(trainer.strategy, 'backward', self._backward)
        _wrap(trainer.experience_maker.actor, 'generate', self._generate)
        for module, role in ((actor, 'actor'), (trainer.initial_model, 'reference'), (critic, 'critic'),
                             (trainer.reward_model, 'reward')):
            module.register_forward_pre_hook(self._pre, with_kwargs=True)
            module.register_forward_hook(lambda m, a, kw, out, role=role: self._post(role), with_kwargs=True)
        self._embed = actor.get_base_model().get_input_embeddings()
        self._embed.register_forward_hook(self._embedding_out)

    # -- the update and its two phases
    def _make_experience(self, orig, *a, **kw):
        if self.cur is None: self.cur = {'parts': {}, 't0': time.perf_counter(), 'tokens': 0, 'positions': 0}
        self.phase = 'exp'
        try: return orig(*a, **kw)
        finally: self.phase = None

    def _learn_and_log(self, orig, *a, **kw):
        self.phase = 'learn'
        try: out = orig(*a, **kw)
        finally: self.phase = None
        self.cur['whole'] = time.perf_counter() - self.cur.pop('t0')
        self.updates.append(self.cur); self.cur = None
        return out

    # -- generation: seconds and generated tokens (real ones up to EOS, and all decoded positions)
    def _generate(self, orig, *a, **kw):
        t = time.perf_counter(); out = orig(*a, **kw); self._add('generation', time.perf_counter() - t)
        am = out[2]
        self.cur['tokens'] += int(am.sum()); self.cur['positions'] += am.numel()
        return out

    # -- forwards of the four models, named by phase and role
    def _pre(self, module, args, kwargs):
        self._stack.append((time.perf_counter(), any(kwargs.get(k) is not None for k in _SAMPLING_KW)))

    def _post(self, role):
        t0, sampling = self._stack.pop(); dt = time.perf_counter() - t0
        if self.phase == 'exp':
            row = {'actor': 'exp: actor sampling log-probs' if sampling else 'exp: actor log-probs',
                   'reference': 'exp: reference model', 'critic': 'exp: critic values', 'reward': 'exp: reward model'}[role]
        elif self.phase == 'learn' and role in ('actor', 'critic'): row = f'learn: {role} forward'
        else: return
        self._add(row, dt)

    # -- PTX: its forward, and the part of the shared backward spent on its branch
    def _ptx_loss(self, orig, *a, **kw):
        self._ptx = {'in_ptx': True}
        t = time.perf_counter()
        try: loss = orig(*a, **kw)
        finally: self._ptx['in_ptx'] = False
        self._add('learn: PTX forward', time.perf_counter() - t)
        if loss.requires_grad: loss.register_hook(lambda g: self._ptx.__setitem__('start', time.perf_counter()))
        return loss

    def _embedding_out(self, module, args, out):
        if self.phase != 'learn' or not out.requires_grad: return
        key = 'end' if self._ptx.get('in_ptx') else 'policy_end'
        out.register_hook(lambda g: self._ptx.__setitem__(key, time.perf_counter()))

    def _backward(self, orig, loss, model, *a, **kw):
        t = time.perf_counter(); orig(loss, model, *a, **kw); dt = time.perf_counter() - t
        if model is self.trainer.critic: self._add('learn: critic backward', dt); return
        p, ptx = self._ptx, 0.0
        if 'start' in p and 'end' in p:
            ptx = p['end'] - p['start']
            if 'policy_end' in p and p['policy_end'] < p['end'] and not self.warnings:
                self.warnings.append('the PTX backward branch did not run as one block: its row includes policy work')
        self._add('learn: PTX backward', ptx); self._add('learn: actor backward (policy)', dt - ptx)
        self._ptx = {}

    def _optimizer_update(self, orig, model, optim, *a, **kw):
        t = time.perf_counter(); orig(model, optim, *a, **kw)
        self._add('learn: critic optimizer step' if model is self.trainer.critic else 'learn: actor optimizer step',
                  time.perf_counter() - t)


def _random_models(cfg: PipelineConfig, tok, out: Path) -> tuple[Path, Path]:
    "A randomly initialised SFT folder and a reward-model folder (value head random too) of `cfg`'s size."
    set_seed(cfg.seed)
    lm = family_class('llama', 'lm')(config=tiny_llama_config(tok, cfg))
    lm.save_pretrained(out/'sft'); save_tokenizer(tok, out/'sft')
    pooling = PPO_PRESETS[cfg.ppo_preset]['models']['rm_pooling']
    rm = family_class('llama', 'rm')(pretrained=out/'sft', pooling=pooling)
    rm.save_pretrained(out/'rm'); save_tokenizer(tok, out/'rm')
    return out/'sft', out/'rm'


def profile_size(overrides: dict, a, tok) -> dict:
    "Run warm-up + measured updates of PPO at one size; the median seconds of every part and of the whole update."
    with tempfile.TemporaryDirectory() as d:
        knobs = dict(experience_batch_size=a.experience_batch_size, train_batch_size=a.train_batch_size,
                     ppo_epochs=a.ppo_epochs, max_new_tokens=a.max_new_tokens, update_timesteps=a.update_timesteps,
                     min_new_tokens=a.min_new_tokens)
        cfg = PipelineConfig(**{**overrides, **knobs, 'out': d, 'num_episodes': 1, 'save_interval': 0,
                                'max_timesteps': a.update_timesteps * (a.warmup + a.updates)})
        sft, rm = _random_models(cfg, tok, Path(d))
        prof = UpdateProfiler()
        run_ppo(cfg, tok, Path(d), sft, rm, strategy=NaiveStrategy(seed=cfg.seed), callbacks=[prof])
        lm = family_class('llama', 'lm')(config=tiny_llama_config(tok, cfg))
    ups = prof.updates[a.warmup:]
    if len(ups) != a.updates: raise RuntimeError(f"expected {a.updates} measured updates, got {len(ups)}")
    med = lambda xs: statistics.median(xs)
    parts = {r: med([u['parts'].get(r, 0.0) for u in ups]) for r in ROWS}
    whole = med([u['whole'] for u in ups])
    gen = [u['parts']['generation'] for u in ups]
    return {'config': {k: getattr(cfg, k) for k in SHAPE_FIELDS}, 'parameters': count_parameters(lm)[1],
            'parts': parts, 'other': whole - sum(parts.values()), 'whole': whole,
            'whole_all': [u['whole'] for u in ups], 'generated_tokens': med([u['tokens'] for u in ups]),
            'generated_positions': med([u['positions'] for u in ups]),
            'tokens_per_s': med([u['tokens'] / g for u, g in zip(ups, gen)]),
            'warnings': prof.warnings}


def _load() -> str:
    try: return Path('/proc/loadavg').read_text().split()[0]
    except OSError: return 'n/a'


def print_table(res: dict):
    names = list(res['sizes']); s0, s1 = (res['sizes'][n] for n in names)
    print(f"machine: {res['machine']['cpus']} CPUs, torch threads {res['machine']['torch_threads']}, "
          f"1-min load {res['machine']['load_before']} before / {res['machine']['load_after']} after")
    print(f"size presets: {res['preset_source']}")
    for n in names:
        c = res['sizes'][n]['config']
        print(f"  {n}: hidden {c['hidden_size']}, {c['num_layers']} layers, {c['num_heads']} heads, "
              f"{res['sizes'][n]['parameters']:,} parameters per model")
    st = res['settings']
    print(f"one update = {st['update_timesteps']} rollouts × {st['experience_batch_size']} prompts, max_new_tokens "
          f"{st['max_new_tokens']}, min_new_tokens {st['min_new_tokens']}, {st['ppo_epochs']} epochs of batches of {st['train_batch_size']}, PTX on; "
          f"median of {st['updates']} updates after {st['warmup']} warm-up")
    w = max(map(len, ROWS + ('whole update (measured)',))) + 1
    print(f"{'part':{w}s} {names[0] + ' s':>11s} {'%':>6s} {names[1] + ' s':>11s} {'%':>6s} {'ratio ' + names[1] + '/' + names[0]:>18s}")
    def row(name, x0, x1):
        print(f"{name:{w}s} {x0:11.3f} {100 * x0 / s0['whole']:6.1f} {x1:11.3f} {100 * x1 / s1['whole']:6.1f} "
              f"{x1 / x0 if x0 > 0 else float('nan'):18.2f}")
    for r in ROWS: row(r, s0['parts'][r], s1['parts'][r])
    row('sum of the parts', sum(s0['parts'].values()), sum(s1['parts'].values()))
    row('other (the rest)', s0['other'], s1['other'])
    row('whole update (measured)', s0['whole'], s1['whole'])
    for n in names:
        s = res['sizes'][n]
        print(f"{n}: {s['tokens_per_s']:.0f} generated tokens/s ({s['generated_tokens']:.0f} tokens up to EOS of "
              f"{s['generated_positions']:.0f} positions per update); whole update min {min(s['whole_all']):.3f} "
              f"max {max(s['whole_all']):.3f} s")
        for m in s['warnings']: print(f"warning ({n}): {m}")


def parse_args(argv=None) -> argparse.Namespace:
    "The checked command line; `sizes` and `preset_source` are added (an error names the flag)."
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--updates', type=int, default=5, help='measured updates (the median is reported)')
    p.add_argument('--warmup', type=int, default=1, help='updates run first and dropped')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s own)')
    p.add_argument('--experience-batch-size', type=int, default=32)
    p.add_argument('--train-batch-size', type=int, default=16)
    p.add_argument('--ppo-epochs', type=int, default=2)
    p.add_argument('--max-new-tokens', type=int, default=16)
    p.add_argument('--min-new-tokens', type=int, default=None,
                   help='no EOS before this many tokens (default: --max-new-tokens, full-length responses; the demo: 1)')
    p.add_argument('--update-timesteps', type=int, default=2)
    p.add_argument('--sizes', type=str, default=None,
                   help='JSON {name: {PipelineConfig field: value}} with exactly two sizes (default: the demo and the 256-wide model)')
    p.add_argument('--json', type=str, default=None, help='write the results here')
    a = p.parse_args(argv)
    for k in ('updates', 'experience_batch_size', 'train_batch_size', 'ppo_epochs', 'max_new_tokens', 'update_timesteps'):
        if getattr(a, k) < 1: p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if a.min_new_tokens is None: a.min_new_tokens = a.max_new_tokens
    if not 0 <= a.min_new_tokens <= a.max_new_tokens:
        p.error(f"--min-new-tokens must be in [0, --max-new-tokens={a.max_new_tokens}], got {a.min_new_tokens}")
    if a.warmup < 0: p.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.threads is not None:
        if a.threads < 1: p.error(f"--threads must be >= 1, got {a.threads}")
    if a.sizes is not None:
        try: sizes = json.loads(a.sizes)
        except json.JSONDecodeError as e: p.error(f"--sizes is not valid JSON: {e}")
        if not isinstance(sizes, dict) or len(sizes) != 2 or not all(isinstance(v, dict) for v in sizes.values()):
            p.error('--sizes must be a JSON object of exactly two {name: {field: value}} entries')
        known = {f.name for f in fields(PipelineConfig)}
        for name, ov in sizes.items():
            bad = sorted(set(ov) - known)
            if bad: p.error(f"--sizes[{name!r}]: {bad} are not PipelineConfig fields")
        source = 'given by --sizes'
    else:
        shape = {k: v for k, v in SIZE_PRESETS['small'].items() if k in SHAPE_FIELDS}
        sizes = {'default': {}, 'wide': WIDE}
        source = (f"the demo, and the 3.7 M-parameter point of 14a's curve; SIZE_PRESETS['small'] changes the model shape by "
                  f"{shape or 'nothing'}, so its update costs the default's")
    a.sizes, a.preset_source = sizes, source
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.threads is not None: torch.set_num_threads(a.threads)
    transformers.utils.logging.set_verbosity_error()      # no load reports between the tables
    tok = load_tokenizer()
    load_before = _load()
    results = {name: profile_size(ov, a, tok) for name, ov in a.sizes.items()}
    res = {'machine': {'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
                       'load_before': load_before, 'load_after': _load()},
           'preset_source': a.preset_source,
           'settings': {k: getattr(a, k) for k in ('updates', 'warmup', 'experience_batch_size', 'train_batch_size',
                                                   'ppo_epochs', 'max_new_tokens', 'min_new_tokens', 'update_timesteps')} | {'ptx': True, 'ppo_preset': 'corrected'},
           'rows': list(ROWS), 'sizes': results}
    print_table(res)
    if a.json:
        with atomic_write(Path(a.json)) as f: f.write_text(json.dumps(res, indent=1))


if __name__ == '__main__': main()
