"""coati_nb's SFT, RM, PPO, DPO and GRPO trainers side by side with TRL's, on the same tiny LLaMA, data and hyperparameters.

One run prints step time, tokens/s, peak memory and the losses of both implementations, and their ratios:

    | stage | coati_nb s/step | trl s/step | ratio | coati_nb tok/s | trl tok/s | ... |

- `sft`: `coati_nb.trainer.sft.SFTTrainer` vs `trl.SFTTrainer` on data/toy/sft.jsonl (one optimizer step per row).
- `rm`:  `coati_nb.trainer.rm.RewardModelTrainer` vs `trl.RewardTrainer` on data/toy/rm_pairs.jsonl.
- `ppo`: `coati_nb.trainer.ppo.PPOTrainer` vs `trl.experimental.ppo.PPOTrainer` (TRL removed it after 1.12.0) on
  data/toy/prompts.jsonl; one row = one update = a rollout of `--ppo-rollout` prompts plus
  `--ppo-epochs` x (rollout / `--ppo-minibatch`) optimizer steps.
- `dpo`: `coati_nb.algorithms.DPOTrainer` vs `trl.DPOTrainer` (sigmoid loss, β `--dpo-beta`, a frozen reference copy
  of the same weights, reference log-probs computed every step on both sides) on the pairs of data/toy/rm_pairs.jsonl,
  tokenized once by coati_nb's `DPOPairs` and handed to TRL as its `prompt_ids` / `chosen_ids` / `rejected_ids`.
- `grpo`: `coati_nb.algorithms.GRPOTrainer` vs `trl.GRPOTrainer` on data/toy/prompts.jsonl with the toy task's gold
  reward on both sides (coati_nb's `GoldReward`; for TRL a reward function calling the same `gold_reward_terms`);
  one row = one update = `--grpo-prompts` prompts x `--grpo-group` sampled answers and ONE optimizer step on all of
  them (TRL: `per_device_train_batch_size` = the rollout, `steps_per_generation=1`, `num_iterations=1`); loss_type
  'grpo', group-std advantages, ε = 0.2, k3 KL in the loss with β `--grpo-beta` and no ratio correction on both sides.

The TRL side runs in its own virtual environment, so TRL never pins this project's dependencies. Make it once:

    python benchmarks/trl_compare.py --setup

which does the same as this shell snippet (torch first, so pip takes the local CPU wheel and never a CUDA build;
transformers pinned to the version of the project's venv):

    python3 -m venv benchmarks/.venv-trl
    benchmarks/.venv-trl/bin/pip install torch==2.13.0
    benchmarks/.venv-trl/bin/pip install -c <(echo torch==2.13.0) transformers==$(.venv/bin/python -c \
        'import transformers; print(transformers.__version__)') trl==1.12.0
    benchmarks/.venv-trl/bin/pip install --no-deps -e .
    benchmarks/.venv-trl/bin/pip install -c <(echo torch==2.13.0) matplotlib   # the rest of settings.ini's requirements

(keep it out of git with the line `benchmarks/.venv-trl/` in .gitignore). Or, without a second venv, run the TRL side
with the project's own interpreter and TRL unpacked without its dependencies into a folder of its own (the venv
already holds the torch, transformers, accelerate and datasets TRL needs; TRL is never installed into it):

    python benchmarks/trl_losses.py --setup          # pip install --no-deps --target .venv/trl-1.12.0 trl==1.12.0
    python benchmarks/trl_compare.py --trl-dir .venv/trl-1.12.0 ...

Then:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trl_compare.py [--steps 20] [--warmup 3] [--json OUT]

How it measures:
- Every (stage, side) runs in a fresh subprocess with one CPU thread: the coati_nb side with the project's
  interpreter (`--coati-python`, default .venv/bin/python), the TRL side with `--trl-python`
  (default benchmarks/.venv-trl/bin/python). Both venvs hold the same torch and transformers versions (checked).
- Both sides start from the same weights: a preparation step saves one randomly initialised tiny LLaMA (the
  bundled demo's sizes) as a causal LM, as a sequence-classification model (TRL's reward / value model) and as the
  same backbone plus a coati_nb value head whose weight is the classifier's weight and whose bias is 0.
- SFT and RM read the same tokenized samples (coati_nb's datasets, then handed to TRL pre-tokenized), shuffled once
  with a fixed seed and then read in order by both (coati_nb: `shuffle=False`; TRL:
  `train_sampling_strategy='sequential'`), so step i sees the same batch on both sides and the losses are comparable.
- Step time: wall time between consecutive end-of-step callbacks (`Callback.on_step_end` /
  `TrainerCallback.on_step_end`), so data loading, logging and each trainer's bookkeeping are included; the first
  `--warmup` steps are dropped. `s/step` is the mean of the rest; `ratio` = TRL s/step / coati_nb s/step
  (> 1: coati_nb is faster). With `--repeats R` each (stage, side) runs R times, the sides alternating which goes
  first, and the fastest run is reported (every run's s/step is in the JSON): on a shared machine the fastest run
  is the one least slowed by other load.
- tokens/s: real (non-padding) tokens per measured step / s per step: SFT prompt + response tokens, RM and DPO
  chosen + rejected tokens, PPO and GRPO prompt + generated tokens of the rollout.
- Memory: peak RSS of the worker process during training (sampled every 5 ms from /proc/self/statm) minus its RSS
  just before training started (models, data and trainer already built). It includes optimizer state, activations,
  the allocator's retained pages and anything the trainer allocates itself; not tracemalloc (blind to torch's
  allocations) and not the torch profiler.
- Losses: first measured step and the mean of the last 5 steps (PPO: policy and value loss, RM score and KL; GRPO:
  policy loss, gold score and the mean per-token k3 KL to the reference).

Hyperparameters are matched: AdamW (non-fused, weight decay 0, TRL `optim='adamw_torch'`), constant learning rate,
no warm-up, no gradient accumulation, fp32, no gradient checkpointing (TRL's default is on), grad-norm clip 1.0 in
SFT / RM / DPO / GRPO and none in PPO (TRL's PPO loop never clips), same batch sizes and maximum length, dropout
off. DPO and GRPO: TRL's `_compute_loss` is checked against coati_nb's losses on the same tensors by
benchmarks/trl_losses.py; here the DPO losses of the two sides should agree step by step. PPO: coati_nb's
'corrected' preset (k3 per-token KL, score at the last token, GAE γ=1 λ=0.95, whitened advantages, sampling
log-probs) against TRL with `kl_estimator='k3'`, the same clip ranges (0.2 / 0.2), `vf_coef=1`, `stop_token='eos'`,
no missing-EOS penalty, no sample generations, one optimizer over two parameter groups with coati_nb's actor and
critic learning rates. Not a test: nothing is asserted; a default run takes a few minutes.
"""
from __future__ import annotations

import argparse, configparser, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / 'benchmarks' / '.venv-trl'
TRL_VERSION, TORCH_VERSION = '1.12.0', '2.13.0'
STAGES = ('sft', 'rm', 'ppo', 'dpo', 'grpo')
SIDES = ('coati', 'trl')
THREAD_ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
OFFLINE_ENV = {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'WANDB_MODE': 'disabled',
               'TRANSFORMERS_NO_ADVISORY_WARNINGS': '1', 'DISABLE_MLFLOW_INTEGRATION': 'TRUE'}


# ----------------------------------------------------------------------------------------------------------------
# the TRL venv
def _default_coati_python() -> str:
    p = ROOT / '.venv' / 'bin' / 'python'
    return str(p) if p.exists() else sys.executable

def _version_in(python: str, module: str) -> str:
    code = f'import importlib.metadata as m; print(m.version({module!r}))'
    return subprocess.run([python, '-c', code], check=True, capture_output=True, text=True,
                          env={**os.environ, **THREAD_ENV}).stdout.strip()

def _runtime_requirements() -> list[str]:
    "settings.ini's `requirements` except torch and transformers (pinned separately)."
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    reqs = cfg['DEFAULT'].get('requirements', '').split()
    name = lambda r: r.split('>')[0].split('<')[0].split('=')[0].split('[')[0].strip().lower()
    return [r for r in reqs if name(r) not in ('torch', 'transformers')]

def setup_trl_venv(venv: Path, coati_python: str) -> Path:
    "Create (or top up) the TRL venv: torch first, then transformers (as in the project venv) and trl, then coati_nb."
    transformers_version = _version_in(coati_python, 'transformers')
    if not (venv / 'bin' / 'python').exists():
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    pip = [str(venv / 'bin' / 'python'), '-m', 'pip', 'install']
    cons = venv / 'constraints.txt'
    cons.write_text(f'torch=={TORCH_VERSION}\ntransformers=={transformers_version}\n')
    run = lambda *a: (print('+', ' '.join(map(str, a)), flush=True), subprocess.run(list(a), check=True))
    run(*pip, f'torch=={TORCH_VERSION}')                      # first: the local CPU wheel is found by this exact pin
    run(*pip, '-c', str(cons), f'transformers=={transformers_version}', f'trl=={TRL_VERSION}')
    run(*pip, '--no-deps', '-e', str(ROOT))
    run(*pip, '-c', str(cons), *_runtime_requirements())
    print(f'TRL venv ready: {venv} (torch {TORCH_VERSION}, transformers {transformers_version}, trl {TRL_VERSION})')
    return venv


# ----------------------------------------------------------------------------------------------------------------
# worker helpers (run inside the subprocesses; torch is imported there only)
class RssPeak:
    "Peak resident set size of this process, sampled every `interval` seconds from /proc/self/statm."
    def __init__(self, interval: float = 0.005):
        self.interval, self.page = interval, os.sysconf('SC_PAGE_SIZE')
        self.base = self.peak = self.now()
        self._stop = threading.Event(); self._t = threading.Thread(target=self._run, daemon=True)
    def now(self) -> int:
        with open('/proc/self/statm') as f: return int(f.read().split()[1]) * self.page
    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now()); time.sleep(self.interval)
    def __enter__(self): self.base = self.peak = self.now(); self._t.start(); return self
    def __exit__(self, *exc): self._stop.set(); self._t.join(); self.peak = max(self.peak, self.now())


class StepClock:
    "Timestamps of the end of every optimizer step (PPO: every update), from the trainer's own callback."
    def __init__(self, total: int):
        self.total, self.t0, self.ends, self.losses, self.tokens, self.extra = total, None, [], [], [], []
        self.gen_s, self.checks = [], {}
    def start(self): self.t0 = time.perf_counter()
    def end(self): self.ends.append(time.perf_counter())
    def intervals(self) -> list[float]:
        t = [self.t0] + self.ends
        return [b - a for a, b in zip(t, t[1:])]


def _setup_torch(seed: int):
    import torch
    torch.set_num_threads(1); torch.manual_seed(seed)
    return torch

def _ordered(n_total: int, n_take: int, seed: int) -> list[int]:
    "The first `n_take` indices of a seeded permutation of range(n_total) (the order both sides read)."
    import torch
    g = torch.Generator().manual_seed(seed)
    if n_take > n_total: raise SystemExit(f'need {n_take} samples, the data has {n_total}')
    return torch.randperm(n_total, generator=g)[:n_take].tolist()

def _data(stage: str, cfg: dict):
    "coati_nb's tokenized samples of `stage`, in the benchmark's order (only as many as the run needs)."
    from coati_nb.dataset import PromptDataset, RmStaticDataset, SupervisedDataset
    from coati_nb.tokenizer import load_tokenizer
    from coati_nb.toy_task import toy_data_path
    tok = load_tokenizer()
    n_steps = cfg['warmup'] + cfg['steps']
    if stage == 'sft':
        ds = SupervisedDataset(toy_data_path('sft'), tok, max_length=cfg['max_len']); n = n_steps * cfg['batch_size']
    elif stage == 'rm':
        ds = RmStaticDataset(toy_data_path('rm_pairs'), tok, cfg['max_len']); n = n_steps * cfg['batch_size']
    elif stage == 'dpo':
        from coati_nb.algorithms import DPOPairs
        rows = [json.loads(l) for l in toy_data_path('rm_pairs').read_text(encoding='utf-8').splitlines() if l.strip()]
        ds = DPOPairs(rows, tok, cfg['max_len']); n = n_steps * cfg['batch_size']
    else:
        ds = PromptDataset(toy_data_path('prompts'), tok, max_length=cfg['max_len'])
        n = n_steps * (cfg['ppo_rollout'] if stage == 'ppo' else cfg['grpo_prompts'])
    return tok, [ds[i] for i in _ordered(len(ds), n, cfg['seed'])]

def _versions() -> dict:
    import importlib.metadata as m
    out = {}
    for k in ('torch', 'transformers', 'accelerate', 'datasets', 'trl'):
        try: out[k] = m.version(k)
        except m.PackageNotFoundError: pass
    return out


def prepare_models(work: Path, cfg: dict):
    "One random tiny LLaMA saved three ways: causal LM, sequence classifier (TRL), backbone + value head (coati_nb)."
    torch = _setup_torch(cfg['seed'])
    import copy
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification
    from coati_nb.models import make_value_head, tiny_config
    from coati_nb.tokenizer import load_tokenizer
    tok = load_tokenizer()
    conf = tiny_config('llama', vocab_size=len(tok), hidden_size=cfg['hidden'], num_layers=cfg['layers'],
                       num_heads=cfg['heads'], max_positions=max(256, cfg['max_len'] + cfg['response_len']),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    lm = LlamaForCausalLM(conf)
    lm.save_pretrained(work / 'lm')
    sconf = copy.deepcopy(conf); sconf.num_labels = 1
    seq = LlamaForSequenceClassification(sconf)
    seq.model.load_state_dict(lm.model.state_dict())
    head = make_value_head(cfg['hidden'])                          # coati_nb's (ColossalChat's) value-head init
    with torch.no_grad(): seq.score.weight.copy_(head.weight)
    seq.save_pretrained(work / 'seqcls')
    lm.model.save_pretrained(work / 'base')
    save_file({'weight': head.weight.detach().contiguous(), 'bias': torch.zeros(1)}, str(work / 'base' / 'value_head.safetensors'))
    tok.save_pretrained(work / 'tokenizer')
    return {'params_lm': sum(p.numel() for p in lm.parameters()), 'vocab': len(tok), 'versions': _versions()}


# ----------------------------------------------------------------------------------------------------------------
# coati_nb side
def _coati_clock_callback(clock: StepClock):
    from coati_nb.trainer.base import Callback
    class Clock(Callback):
        def on_fit_start(self, trainer): clock.start()
        def on_make_experience_end(self, trainer, exp):
            clock.tokens.append(int(exp.attention_mask.sum())); clock.extra.append({'response_tokens': int(exp.action_mask.sum())})
        def on_step_end(self, trainer, step, metrics):
            clock.end(); clock.losses.append({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            if len(clock.ends) >= clock.total: trainer.should_stop = True
    return Clock()

class _CountingLoader:
    "A dataloader that records the real tokens of every batch it yields."
    def __init__(self, dl, count, sink): self.dl, self.count, self.sink = dl, count, sink
    def __len__(self): return len(self.dl)
    @property
    def sampler(self): return self.dl.sampler
    def __iter__(self):
        for b in self.dl: self.sink.append(self.count(b)); yield b

def coati_worker(stage: str, work: Path, cfg: dict) -> dict:
    torch = _setup_torch(cfg['seed'])
    from coati_nb.dataset import DataCollatorForPreferenceDataset, DataCollatorForPromptDataset, DataCollatorForSupervisedDataset
    from coati_nb.models import family_class
    from coati_nb.trainer.ppo import PPO_PRESETS
    from coati_nb.strategies import NaiveStrategy
    tok, samples = _data(stage, cfg)
    strategy = NaiveStrategy(seed=cfg['seed'])
    n = cfg['warmup'] + cfg['steps']
    clock = StepClock(n); cb = _coati_clock_callback(clock)
    torch.manual_seed(cfg['seed'])
    if stage == 'sft':
        from coati_nb.trainer.sft import SFTTrainer
        model = family_class('llama', 'lm')(pretrained=work / 'lm')
        opt = torch.optim.AdamW(model.parameters(), lr=cfg['sft_lr'], weight_decay=0.0)
        dl = strategy.setup_dataloader(samples, cfg['batch_size'], shuffle=False, collate_fn=DataCollatorForSupervisedDataset(tok))
        dl = _CountingLoader(dl, lambda b: int(b['attention_mask'].sum()), clock.tokens)
        trainer = SFTTrainer(model, strategy, opt, None, max_epochs=1, accumulation_steps=1, max_norm=1.0, callbacks=[cb])
        run = lambda: trainer.fit(dl)
    elif stage == 'rm':
        from coati_nb.trainer.rm import RewardModelTrainer
        model = family_class('llama', 'rm')(pretrained=work / 'base')
        opt = torch.optim.AdamW(model.parameters(), lr=cfg['rm_lr'], weight_decay=0.0)
        dl = strategy.setup_dataloader(samples, cfg['batch_size'], shuffle=False, collate_fn=DataCollatorForPreferenceDataset(tok))
        dl = _CountingLoader(dl, lambda b: int(b['c_mask'].sum() + b['r_mask'].sum()), clock.tokens)
        trainer = RewardModelTrainer(model, strategy, opt, None, loss_fn='log_sig', max_epochs=1, max_norm=1.0, callbacks=[cb])
        run = lambda: trainer.fit(dl)
    elif stage == 'dpo':
        import functools
        from coati_nb.algorithms import DPOTrainer, collate_dpo
        LM = family_class('llama', 'lm')
        model, ref = LM(pretrained=work / 'lm'), LM(pretrained=work / 'lm')
        opt = torch.optim.AdamW(model.parameters(), lr=cfg['dpo_lr'], weight_decay=0.0)
        dl = strategy.setup_dataloader(samples, cfg['batch_size'], shuffle=False,
                                       collate_fn=functools.partial(collate_dpo, pad_token_id=tok.pad_token_id))
        dl = _CountingLoader(dl, lambda b: int(b['attention_mask'].sum()), clock.tokens)
        trainer = DPOTrainer(model, ref, strategy, opt, None, beta=cfg['dpo_beta'], loss_type='sigmoid', max_epochs=1,
                             accumulation_steps=1, max_norm=1.0, callbacks=[cb])
        run = lambda: trainer.fit(dl)
    elif stage == 'grpo':
        from coati_nb.algorithms import GRPOTrainer, GoldReward
        Actor = family_class('llama', 'actor')
        actor, initial = Actor(pretrained=work / 'lm'), Actor(pretrained=work / 'lm').requires_grad_(False)
        dl = strategy.setup_dataloader(samples, cfg['grpo_prompts'], shuffle=False, collate_fn=DataCollatorForPromptDataset(tok))
        actor_optim = torch.optim.AdamW(actor.parameters(), lr=cfg['actor_lr'], weight_decay=0.0)
        actor, actor_optim = strategy.prepare((actor, actor_optim))
        rollout = cfg['grpo_prompts'] * cfg['grpo_group']
        trainer = GRPOTrainer(strategy, actor, GoldReward(tok), initial, actor_optim, kl_coef=cfg['grpo_beta'],
                              train_batch_size=rollout, eps_clip=0.2, max_epochs=1, group_size=cfg['grpo_group'],
                              loss_type='grpo', scale_rewards='std', kl_ratio_correction=False, max_norm=1.0,
                              pad_token_id=tok.pad_token_id, callbacks=[cb], max_new_tokens=cfg['response_len'],
                              do_sample=True, top_k=None, temperature=1.0, eos_token_id=tok.eos_token_id)
        orig_generate = actor.generate
        def timed_generate(*a, **kw):
            t = time.perf_counter(); out = orig_generate(*a, **kw); clock.gen_s.append(time.perf_counter() - t)
            return out
        actor.generate = timed_generate
        run = lambda: trainer.fit(dl, None, num_episodes=1, max_timesteps=n, update_timesteps=1)
    else:
        from coati_nb.trainer.ppo import PPOTrainer
        Actor, Critic, RM = (family_class('llama', r) for r in ('actor', 'critic', 'rm'))
        actor, initial = Actor(pretrained=work / 'lm'), Actor(pretrained=work / 'lm').requires_grad_(False)
        critic, reward_model = Critic(pretrained=work / 'base'), RM(pretrained=work / 'base').requires_grad_(False)
        dl = strategy.setup_dataloader(samples, cfg['ppo_rollout'], shuffle=False, collate_fn=DataCollatorForPromptDataset(tok))
        actor_optim = torch.optim.AdamW(actor.parameters(), lr=cfg['actor_lr'], weight_decay=0.0)
        critic_optim = torch.optim.AdamW(critic.parameters(), lr=cfg['critic_lr'], weight_decay=0.0)
        (actor, actor_optim), (critic, critic_optim) = strategy.prepare((actor, actor_optim), (critic, critic_optim))
        trainer = PPOTrainer(strategy, actor, critic, reward_model, initial, actor_optim, critic_optim,
                             kl_coef=cfg['kl_coef'], ptx_coef=0.0, train_batch_size=cfg['ppo_minibatch'],
                             eps_clip=0.2, value_clip=0.2, vf_coef=1.0, max_epochs=cfg['ppo_epochs'],
                             experience_options=PPO_PRESETS['corrected']['experience'], pad_token_id=tok.pad_token_id, max_norm=None,
                             callbacks=[cb], max_new_tokens=cfg['response_len'], do_sample=True, top_k=None,
                             temperature=1.0, eos_token_id=tok.eos_token_id)
        orig_generate = actor.generate                             # the experience maker calls this very object's
        def timed_generate(*a, **kw):                              # generate: time it, as on the TRL side
            t = time.perf_counter(); out = orig_generate(*a, **kw); clock.gen_s.append(time.perf_counter() - t)
            return out
        actor.generate = timed_generate
        run = lambda: trainer.fit(dl, None, num_episodes=1, max_timesteps=n, update_timesteps=1)
    with RssPeak() as mem: run()
    opts = ([trainer.actor_optim, trainer.critic_optim] if stage == 'ppo' else [trainer.actor_optim] if stage == 'grpo'
            else [trainer.optimizer])
    clock.checks = _optimizer_checks(opts)
    return _result(clock, mem, stage)


# ----------------------------------------------------------------------------------------------------------------
# TRL side
def _trl_clock_callback(clock: StepClock):
    from transformers import TrainerCallback
    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw): clock.start()
        def on_step_end(self, args, state, control, **kw): clock.end()
    return Clock()

def _common_args(work: Path, cfg: dict, n: int) -> dict:
    "TrainingArguments shared by the TRL trainers: the matched hyperparameters, TRL's extras off."
    return dict(output_dir=str(work / 'trl_out'), max_steps=n, per_device_train_batch_size=cfg['batch_size'],
                gradient_accumulation_steps=1, lr_scheduler_type='constant', warmup_steps=0, weight_decay=0.0,
                optim='adamw_torch', max_grad_norm=1.0, logging_steps=1, save_strategy='no', eval_strategy='no',
                report_to='none', bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                dataloader_num_workers=0, train_sampling_strategy='sequential', seed=cfg['seed'], data_seed=cfg['seed'],
                max_length=cfg['max_len'], **_no_checkpointing())

def _no_checkpointing() -> dict:
    "Activation checkpointing off (TRL's configs default to on); transformers 5 renamed the field."
    import dataclasses
    from transformers import TrainingArguments
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {'activation_checkpointing': False} if 'activation_checkpointing' in names else {}

def _counting(trainer_cls, count, sink):
    "`trainer_cls` recording the real tokens of the batch of every training step."
    class Counting(trainer_cls):
        def training_step(self, model, inputs, *args, **kwargs):
            sink.append(count(inputs))
            return super().training_step(model, inputs, *args, **kwargs)
    Counting.__name__ = trainer_cls.__name__
    return Counting

def trl_worker(stage: str, work: Path, cfg: dict) -> dict:
    torch = _setup_torch(cfg['seed'])
    from datasets import Dataset
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification
    tok, samples = _data(stage, cfg)
    n = cfg['warmup'] + cfg['steps']
    clock = StepClock(n); cb = _trl_clock_callback(clock)
    torch.manual_seed(cfg['seed'])
    if stage == 'sft':
        from trl import SFTConfig, SFTTrainer
        ds = Dataset.from_list([{'input_ids': s['input_ids'].tolist(), 'labels': s['labels'].tolist()} for s in samples])
        model = LlamaForCausalLM.from_pretrained(work / 'lm')
        args = SFTConfig(**_common_args(work, cfg, n), learning_rate=cfg['sft_lr'], packing=False, padding_free=False,
                         loss_type=cfg['trl_sft_loss'], dataset_num_proc=None)
        T = _counting(SFTTrainer, lambda b: int(b['attention_mask'].sum()), clock.tokens)
        trainer = T(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb])
    elif stage == 'rm':
        from trl import RewardConfig, RewardTrainer
        ds = Dataset.from_list([{'chosen_ids': s['chosen_ids'].tolist(), 'rejected_ids': s['reject_ids'].tolist()} for s in samples])
        model = LlamaForSequenceClassification.from_pretrained(work / 'seqcls')
        args = RewardConfig(**_common_args(work, cfg, n), learning_rate=cfg['rm_lr'], center_rewards_coefficient=None,
                            disable_dropout=True)
        T = _counting(RewardTrainer, lambda b: int(b['attention_mask'].sum()), clock.tokens)
        trainer = T(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb])
    elif stage == 'dpo':
        from trl import DPOConfig, DPOTrainer
        def split(ids, labels):                                      # coati_nb's sample -> TRL's prompt / answer ids
            k = int((labels == -100).sum()); ids = ids.tolist()
            return ids[:k], ids[k:]
        rows = []
        for s in samples:
            p, c = split(s['chosen_input_ids'], s['chosen_labels']); p2, r = split(s['rejected_input_ids'], s['rejected_labels'])
            if p != p2: raise SystemExit('a DPO pair whose two sides have different prompts')
            rows.append({'prompt_ids': p, 'chosen_ids': c, 'rejected_ids': r})
        ds = Dataset.from_list(rows)
        model, ref = LlamaForCausalLM.from_pretrained(work / 'lm'), LlamaForCausalLM.from_pretrained(work / 'lm')
        args = DPOConfig(**_common_args(work, cfg, n), learning_rate=cfg['dpo_lr'], beta=cfg['dpo_beta'], loss_type=['sigmoid'],
                         precompute_ref_log_probs=False, disable_dropout=True)
        class PreTokenized(DPOTrainer):                              # the samples above are already TRL's columns
            def _prepare_dataset(self, dataset, *a, **k): return dataset
        T = _counting(PreTokenized, lambda b: int(b['attention_mask'].sum()), clock.tokens)
        trainer = T(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb])
    elif stage == 'grpo':
        from trl import GRPOConfig, GRPOTrainer
        from coati_nb.toy_task import gold_reward_terms
        tok.padding_side = 'left'
        eos = tok.eos_token_id
        def gold(prompts, completions, completion_ids, **kw):       # coati_nb's GoldReward, on TRL's texts
            return [gold_reward_terms(p, c, eos in ids, eos_token=None)['reward'] for p, c, ids in zip(prompts, completions, completion_ids)]
        ds = Dataset.from_list([{'prompt': tok.decode(s['input_ids'], skip_special_tokens=True)} for s in samples])
        policy = LlamaForCausalLM.from_pretrained(work / 'lm')
        rollout = cfg['grpo_prompts'] * cfg['grpo_group']
        common = {**_common_args(work, cfg, n), 'per_device_train_batch_size': rollout}
        common.pop('max_length', None)
        # one rollout of grpo_prompts × grpo_group answers = one optimizer step, as on the coati_nb side
        args = GRPOConfig(**common, learning_rate=cfg['actor_lr'], num_generations=cfg['grpo_group'], steps_per_generation=1,
                          num_iterations=1, max_completion_length=cfg['response_len'], temperature=1.0, top_k=0, top_p=1.0,
                          beta=cfg['grpo_beta'], epsilon=0.2, loss_type='grpo', scale_rewards='group',
                          use_bias_correction_kl=False, mask_truncated_completions=False, disable_dropout=True,
                          log_completions=False)
        orig_generate = policy.generate
        def counted_generate(*a, **kw):                              # tokens and generation time of each rollout
            t = time.perf_counter(); out = orig_generate(*a, **kw); clock.gen_s.append(time.perf_counter() - t)
            seqs = out if torch.is_tensor(out) else out.sequences
            ids, mask = kw['input_ids'], kw['attention_mask']
            resp = seqs[:, ids.shape[1]:]
            is_eos = resp == eos                                    # answer tokens: up to and with the first EOS
            after = (is_eos.cumsum(1) - is_eos.long()) > 0
            n_resp = int((~after).sum())
            clock.tokens.append(int(mask.sum()) + n_resp); clock.extra.append({'response_tokens': n_resp})
            return out
        policy.generate = counted_generate
        trainer = GRPOTrainer(model=policy, reward_funcs=gold, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb])
    else:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        tok.padding_side = 'left'                                   # TRL's PPO expects left-padded queries
        ds = Dataset.from_list([{'input_ids': s['input_ids'].tolist()} for s in samples])
        policy, ref = LlamaForCausalLM.from_pretrained(work / 'lm'), LlamaForCausalLM.from_pretrained(work / 'lm')
        value, reward = (LlamaForSequenceClassification.from_pretrained(work / 'seqcls') for _ in range(2))
        E, T_ = cfg['ppo_rollout'], cfg['ppo_minibatch']
        if E % T_: raise SystemExit(f'--ppo-rollout {E} must be a multiple of --ppo-minibatch {T_}')
        # one optimizer, two groups: coati_nb's actor and critic learning rates
        opt = torch.optim.AdamW([{'params': list(policy.parameters()), 'lr': cfg['actor_lr']},
                                 {'params': list(value.parameters()), 'lr': cfg['critic_lr']}], weight_decay=0.0)
        # batch = E prompts per rollout; num_mini_batches = E / T -> one optimizer step per T experiences
        args = PPOConfig(output_dir=str(work / 'trl_out'), per_device_train_batch_size=E, gradient_accumulation_steps=1,
                         num_mini_batches=E // T_, num_ppo_epochs=cfg['ppo_epochs'], total_episodes=E * n,
                         local_rollout_forward_batch_size=E, response_length=cfg['response_len'], temperature=1.0,
                         stop_token='eos', missing_eos_penalty=None, kl_coef=cfg['kl_coef'], kl_estimator='k3',
                         cliprange=0.2, cliprange_value=0.2, vf_coef=1.0, gamma=1.0, lam=0.95, whiten_rewards=False,
                         num_sample_generations=0, learning_rate=cfg['actor_lr'], lr_scheduler_type='constant',
                         warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy='no', report_to='none',
                         bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=cfg['seed'],
                         **_no_checkpointing())
        orig_generate = policy.generate
        def counted_generate(*a, **kw):                              # tokens and generation time of each rollout
            t = time.perf_counter(); out = orig_generate(*a, **kw); clock.gen_s.append(time.perf_counter() - t)
            ids, mask = kw['input_ids'], kw['attention_mask']
            resp = int((out.sequences[:, ids.shape[1]:] != tok.pad_token_id).sum())
            clock.tokens.append(int(mask.sum()) + resp); clock.extra.append({'response_tokens': resp})
            return out
        policy.generate = counted_generate
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=ds, value_model=value, optimizers=(opt, None), callbacks=[cb])
    with RssPeak() as mem: trainer.train()
    m = trainer.model
    clock.checks = {**_optimizer_checks([trainer.optimizer]), 'lr_scheduler': type(trainer.lr_scheduler).__name__,
                    'checkpointing': bool(getattr(getattr(m, 'policy', m), 'is_gradient_checkpointing', False)),
                    'dtype': str(next(m.parameters()).dtype)}
    clock.losses = [{k: float(v) for k, v in r.items() if isinstance(v, (int, float))}
                    for r in trainer.state.log_history if 'loss' in r or 'loss/policy_avg' in r]
    return _result(clock, mem, stage)


def _optimizer_checks(opts) -> dict:
    "What each optimizer really is: class, learning rates, weight decay, fused / foreach."
    out = []
    for o in opts:
        o = getattr(o, 'optimizer', o)                              # accelerate's AcceleratedOptimizer wraps it
        out.append({'class': type(o).__name__, 'lr': [g['lr'] for g in o.param_groups],
                    'weight_decay': sorted({g['weight_decay'] for g in o.param_groups}),
                    'fused': o.defaults.get('fused'), 'foreach': o.defaults.get('foreach'),
                    'params': sum(p.numel() for g in o.param_groups for p in g['params'])})
    return {'optimizers': out}

def _result(clock: StepClock, mem: RssPeak, stage: str) -> dict:
    return {'intervals': clock.intervals(), 'tokens': clock.tokens, 'losses': clock.losses, 'extra': clock.extra,
            'gen_s': clock.gen_s, 'checks': clock.checks, 'rss_base': mem.base, 'rss_peak': mem.peak,
            'versions': _versions()}


def worker_main(a):
    work = Path(a.workdir); cfg = json.loads((work / 'config.json').read_text())
    if a.worker == 'prep': out = prepare_models(work, cfg)
    elif a.side == 'coati': out = coati_worker(a.worker, work, cfg)
    else: out = trl_worker(a.worker, work, cfg)
    Path(a.out).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------------------------
# orchestration and the report
def _run_worker(python: str, what: str, side: str|None, work: Path, pythonpath: str|None = None) -> dict:
    out = work / f'{what}_{side or "prep"}.json'
    log = work / f'{what}_{side or "prep"}.log'
    cmd = [python, str(Path(__file__).resolve()), '--worker', what, '--workdir', str(work), '--out', str(out)]
    if side: cmd += ['--side', side]
    env = {**os.environ, **THREAD_ENV, **OFFLINE_ENV, 'HF_HOME': str(work / 'hf_home'), 'PYTHONUNBUFFERED': '1'}
    if pythonpath: env['PYTHONPATH'] = os.pathsep.join([pythonpath] + [x for x in [os.environ.get('PYTHONPATH')] if x])
    t = time.time()
    with open(log, 'w') as f: rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT)).returncode
    if rc != 0:
        tail = ''.join(log.read_text(errors='replace').splitlines(keepends=True)[-40:])
        raise SystemExit(f'worker {what}/{side} failed (exit {rc}); last lines of {log}:\n{tail}')
    res = json.loads(out.read_text()); res['wall_s'] = time.time() - t
    return res

def _mean(xs): return sum(xs) / len(xs) if xs else float('nan')

def summarize(stage: str, res: dict, cfg: dict) -> dict:
    "Per-step figures over the measured steps (warm-up dropped)."
    w, n = cfg['warmup'], cfg['steps']
    iv, tok = res['intervals'][w:w + n], res['tokens'][w:w + n]
    s = {'s_per_step': _mean(iv), 's_per_step_median': statistics.median(iv), 'steps_measured': len(iv),
         'tokens_per_step': _mean(tok), 'tokens_per_s': sum(tok) / sum(iv),
         'peak_rss_delta_mib': (res['rss_peak'] - res['rss_base']) / 2**20, 'rss_before_mib': res['rss_base'] / 2**20,
         'wall_s': res['wall_s'], 'versions': res['versions'], 'tokens_all': res['tokens'], 'checks': res['checks']}
    L = res['losses']
    if stage == 'ppo':
        for key, name in (('loss/policy_avg', 'policy_loss'), ('loss/value_avg', 'value_loss'),
                          ('objective/scores', 'score'), ('objective/kl', 'kl')):
            vals = [r[key] for r in L if key in r]
            s[f'{name}_first'], s[f'{name}_last5'] = (vals[w] if len(vals) > w else float('nan')), _mean(vals[-5:])
        s['response_tokens_per_rollout'] = _mean([e['response_tokens'] for e in res['extra'][w:w + n]])
        s['generate_s_per_update'] = _mean(res['gen_s'][w:w + n])
    elif stage == 'grpo':                                           # coati_nb's metric name, then TRL's
        for keys, name in ((('loss/policy_avg', 'loss'), 'policy_loss'), (('objective/scores', 'reward'), 'score'),
                           (('policy/kl_ref_avg', 'kl'), 'kl')):
            vals = [next(r[k] for k in keys if k in r) for r in L if any(k in r for k in keys)]
            s[f'{name}_first'], s[f'{name}_last5'] = (vals[w] if len(vals) > w else float('nan')), _mean(vals[-5:])
        s['response_tokens_per_rollout'] = _mean([e['response_tokens'] for e in res['extra'][w:w + n]])
        s['generate_s_per_update'] = _mean(res['gen_s'][w:w + n])
    else:
        vals = [r['loss'] for r in L if 'loss' in r]
        s['loss_first'], s['loss_last5'], s['losses'] = (vals[w] if len(vals) > w else float('nan')), _mean(vals[-5:]), vals
    return s

def report(rows: dict, cfg: dict, prep: dict) -> str:
    out = []
    v = prep['versions']
    out.append(f"tiny LLaMA: hidden {cfg['hidden']}, {cfg['layers']} layers, {cfg['heads']} heads, vocab {prep['vocab']}, "
               f"{prep['params_lm'] / 1e6:.2f} M parameters; max length {cfg['max_len']}; fp32, 1 CPU thread; "
               f"{cfg['steps']} measured steps after {cfg['warmup']} warm-up")
    trl_v = next((r['trl']['versions'] for r in rows.values()), {})
    out.append(f"coati_nb venv: torch {v.get('torch')}, transformers {v.get('transformers')}; TRL venv: torch "
               f"{trl_v.get('torch')}, transformers {trl_v.get('transformers')}, trl {trl_v.get('trl')}")
    out.append('')
    out.append('| stage | coati_nb s/step | trl s/step | ratio (trl/coati) | coati_nb tokens/s | trl tokens/s | '
               'coati_nb peak RSS Δ MiB | trl peak RSS Δ MiB | coati_nb loss first → last5 | trl loss first → last5 |')
    out.append('|---|---|---|---|---|---|---|---|---|---|')
    what = {'sft': f"SFT step (batch {cfg['batch_size']})", 'rm': f"RM step (batch {cfg['batch_size']} pairs)",
            'ppo': f"PPO update ({cfg['ppo_rollout']} rollouts × {cfg['response_len']} tok, "
                   f"{cfg['ppo_epochs']}×{cfg['ppo_rollout'] // cfg['ppo_minibatch']} opt steps)",
            'dpo': f"DPO step (batch {cfg['batch_size']} pairs, β={cfg['dpo_beta']})",
            'grpo': f"GRPO update ({cfg['grpo_prompts']} prompts × {cfg['grpo_group']} answers × ≤{cfg['response_len']} tok, "
                    f"1 opt step, β={cfg['grpo_beta']})"}
    for st, r in rows.items():
        c, t = r['coati'], r['trl']
        if st == 'ppo': lc, lt = (f"pol {x['policy_loss_first']:.3f} → {x['policy_loss_last5']:.3f}, val {x['value_loss_first']:.3f} → {x['value_loss_last5']:.3f}" for x in (c, t))
        elif st == 'grpo': lc, lt = (f"pol {x['policy_loss_first']:.2e} → {x['policy_loss_last5']:.2e}" for x in (c, t))
        else: lc, lt = (f"{x['loss_first']:.4f} → {x['loss_last5']:.4f}" for x in (c, t))
        out.append(f"| {what[st]} | {c['s_per_step']:.4f} | {t['s_per_step']:.4f} | {t['s_per_step'] / c['s_per_step']:.2f} | "
                   f"{c['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | {c['peak_rss_delta_mib']:.1f} | {t['peak_rss_delta_mib']:.1f} | "
                   f"{lc} | {lt} |")
    for st in ('ppo', 'grpo'):
        if st not in rows: continue
        c, t = rows[st]['coati'], rows[st]['trl']
        out += ['', f'| {st.upper()} (measured updates) | coati_nb | trl |', '|---|---|---|',
                f"| {'RM' if st == 'ppo' else 'gold'} score, first → mean of last 5 | {c['score_first']:.3f} → {c['score_last5']:.3f} | {t['score_first']:.3f} → {t['score_last5']:.3f} |",
                f"| KL to the reference, first → last 5 | {c['kl_first']:.4f} → {c['kl_last5']:.4f} | {t['kl_first']:.4f} → {t['kl_last5']:.4f} |",
                f"| response tokens per rollout | {c['response_tokens_per_rollout']:.0f} | {t['response_tokens_per_rollout']:.0f} |",
                f"| of the s/update: sampling the responses (`generate`) | {c['generate_s_per_update']:.3f} | {t['generate_s_per_update']:.3f} |",
                f"| of the s/update: everything else (scoring, advantages, optimisation, logging) | "
                f"{c['s_per_step'] - c['generate_s_per_update']:.3f} | {t['s_per_step'] - t['generate_s_per_update']:.3f} |"]
    for st in ('sft', 'rm', 'dpo'):
        if st in rows:
            same = rows[st]['coati']['tokens_all'] == rows[st]['trl']['tokens_all']
            out.append(f"\n{st}: both sides saw {'the same' if same else 'DIFFERENT'} batches (real tokens per step "
                       f"{'identical' if same else 'differ'})")
    fmt = lambda ck: '; '.join(f"{o['class']} lr={o['lr']} wd={o['weight_decay']} fused={o['fused']}" for o in ck['optimizers'])
    for st, r in rows.items():
        t = r['trl']['checks']
        out.append(f"{st} optimizers: coati_nb {fmt(r['coati']['checks'])} | trl {fmt(t)}, scheduler {t.get('lr_scheduler')}, "
                   f"checkpointing {t.get('checkpointing')}, {t.get('dtype')}")
    out.append('\nratio = trl s/step ÷ coati_nb s/step (> 1: coati_nb faster); peak RSS Δ = peak RSS during training − RSS '
               'before it (sampled every 5 ms)')
    return '\n'.join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setup', action='store_true', help=f'create / top up the TRL venv ({TRL_VENV.relative_to(ROOT)}) and exit')
    p.add_argument('--trl-python', default=str(TRL_VENV / 'bin' / 'python'), help='interpreter of the TRL venv')
    p.add_argument('--coati-python', default=_default_coati_python(), help="interpreter of the project's venv")
    p.add_argument('--trl-dir', help='instead of the TRL venv: TRL unpacked without dependencies into this folder '
                                     '(`pip install --no-deps --target`, e.g. .venv/trl-1.12.0 from benchmarks/trl_losses.py '
                                     "--setup), run by the project's interpreter: the very same torch and transformers")
    p.add_argument('--stages', default=','.join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument('--steps', type=int, default=20, help='measured steps (PPO: updates) per stage and side')
    p.add_argument('--warmup', type=int, default=3, help='steps run first and left out of the figures')
    p.add_argument('--repeats', type=int, default=1,
                   help='run each (stage, side) this many times, alternating the order; report the fastest run')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--hidden', type=int, default=128); p.add_argument('--layers', type=int, default=4)
    p.add_argument('--heads', type=int, default=4)
    p.add_argument('--max-len', type=int, default=80, help='longest training sequence / prompt in tokens')
    p.add_argument('--batch-size', type=int, default=32, help='SFT samples / RM pairs per optimizer step')
    p.add_argument('--sft-lr', type=float, default=2e-3); p.add_argument('--rm-lr', type=float, default=5e-4)
    p.add_argument('--ppo-rollout', type=int, default=32, help='prompts per rollout (one PPO update)')
    p.add_argument('--ppo-minibatch', type=int, default=16, help='experiences per PPO optimizer step')
    p.add_argument('--ppo-epochs', type=int, default=2, help='passes over the rollout per update')
    p.add_argument('--response-len', type=int, default=16, help='max new tokens per response')
    p.add_argument('--actor-lr', type=float, default=2e-5); p.add_argument('--critic-lr', type=float, default=1e-4)
    p.add_argument('--kl-coef', type=float, default=0.05)
    p.add_argument('--dpo-lr', type=float, default=5e-4); p.add_argument('--dpo-beta', type=float, default=0.1)
    p.add_argument('--grpo-prompts', type=int, default=8, help='prompts per GRPO rollout (one update, one optimizer step)')
    p.add_argument('--grpo-group', type=int, default=4, help='answers per prompt (G)')
    p.add_argument('--grpo-beta', type=float, default=0.04, help='weight of the k3 KL term in the GRPO loss')
    p.add_argument('--trl-sft-loss', default='nll', choices=['nll', 'chunked_nll'],
                   help="TRL SFT loss_type: 'nll' is the same computation as coati_nb; 'chunked_nll' is TRL 1.12's default")
    p.add_argument('--json', metavar='OUT', help='also write every figure as JSON to OUT')
    p.add_argument('--keep-workdir', action='store_true', help='keep the temporary folder (models, worker logs)')
    p.add_argument('--worker', help=argparse.SUPPRESS); p.add_argument('--side', help=argparse.SUPPRESS)
    p.add_argument('--workdir', help=argparse.SUPPRESS); p.add_argument('--out', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker: return worker_main(a)
    if a.setup: setup_trl_venv(TRL_VENV, a.coati_python); return
    trl_path = None
    if a.trl_dir:                                                # TRL unpacked beside the project's own packages
        if not (Path(a.trl_dir) / 'trl' / '__init__.py').is_file():
            raise SystemExit(f'no TRL in {a.trl_dir}; make it with: python benchmarks/trl_losses.py --setup --trl-dir {a.trl_dir}')
        a.trl_python, trl_path = a.coati_python, str(Path(a.trl_dir).resolve())
    if not Path(a.trl_python).exists():
        raise SystemExit(f'no TRL interpreter at {a.trl_python}; make the venv with: python {Path(__file__).name} --setup '
                         f'(or use --trl-dir)')
    stages = [s.strip() for s in a.stages.split(',') if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad: raise SystemExit(f'unknown stages {bad}; choose from {STAGES}')
    if a.steps < 5 or a.warmup < 1 or a.repeats < 1: raise SystemExit('--steps must be >= 5, --warmup and --repeats >= 1')
    vc, vt = (_version_in(py, 'torch') + ' / ' + _version_in(py, 'transformers') for py in (a.coati_python, a.trl_python))
    if vc != vt: print(f'WARNING: torch / transformers differ between the venvs: coati_nb {vc}, TRL {vt}', file=sys.stderr)
    cfg = {k: getattr(a, k) for k in ('seed', 'hidden', 'layers', 'heads', 'max_len', 'batch_size', 'sft_lr', 'rm_lr',
                                      'ppo_rollout', 'ppo_minibatch', 'ppo_epochs', 'response_len', 'actor_lr',
                                      'critic_lr', 'kl_coef', 'steps', 'warmup', 'trl_sft_loss', 'dpo_lr', 'dpo_beta',
                                      'grpo_prompts', 'grpo_group', 'grpo_beta')}
    work = Path(tempfile.mkdtemp(prefix='trl_compare_'))
    try:
        (work / 'config.json').write_text(json.dumps(cfg))
        t0 = time.time()
        prep = _run_worker(a.coati_python, 'prep', None, work)
        rows = {}
        for st in stages:
            runs = {side: [] for side in SIDES}
            for r in range(a.repeats):                           # alternate which side goes first
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    print(f'[{time.time() - t0:6.1f}s] {st} / {side} ({r + 1}/{a.repeats}) ...', file=sys.stderr, flush=True)
                    res = (_run_worker(a.coati_python, st, side, work) if side == 'coati' else
                           _run_worker(a.trl_python, st, side, work, trl_path))
                    runs[side].append(summarize(st, res, cfg))
            rows[st] = {}
            for side, ss in runs.items():                        # the fastest repeat (least disturbed by other load)
                best = dict(min(ss, key=lambda x: x['s_per_step']))
                best['repeats_s_per_step'] = [x['s_per_step'] for x in ss]
                rows[st][side] = best
        text = report(rows, cfg, prep)
        print(text)
        print(f'\n(total {time.time() - t0:.0f} s)')
        if a.json:
            for st in rows: rows[st]['ratio_s_per_step'] = rows[st]['trl']['s_per_step'] / rows[st]['coati']['s_per_step']
            Path(a.json).write_text(json.dumps({'config': cfg, 'model': prep, 'stages': rows,
                                                'memory': 'peak RSS during training minus RSS before it, sampled every 5 ms from /proc/self/statm'},
                                               indent=1))
    finally:
        if a.keep_workdir: print(f'work folder kept: {work}', file=sys.stderr)
        else: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
