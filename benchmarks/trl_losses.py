"""coati_nb's DPO / IPO, GRPO and RLOO losses and advantages against TRL 1.12.0's own code, on the same tensors.

    python benchmarks/trl_losses.py --setup      # once: pip install --no-deps --target .venv/trl-1.12.0 trl==1.12.0
    python benchmarks/trl_losses.py [--json OUT]

prints one table

    | quantity | case | coati_nb | TRL 1.12.0 | |diff| |

and exits with status 1 if any |diff| > 1e-6. A second table lists the differences that are known and explained
(what each side does, and which coati_nb option, if any, gives TRL's value); they are shown, not compared.

TRL is never imported by coati_nb and never installed into the project's venv: it is unpacked without its
dependencies into `.venv/trl-1.12.0/` and put on `sys.path` by this script only (the venv already holds the
torch, transformers, accelerate and datasets TRL needs). `--trl-dir` points elsewhere.

The TRL side is TRL's own code, not a re-typing of its formulas:
- DPO: `DPOTrainer._compute_loss`, built by `DPOTrainer(...)` on a tiny LLaMA, called with a stand-in model (and
  reference) whose logits make `selective_log_softmax` return the given per-token log-probs exactly (each logit row
  is already a log-distribution). coati_nb reads the same logits with `sequence_log_probs` and calls `dpo_loss`.
  The implicit rewards are TRL's logged `rewards/chosen` and `rewards/rejected` of one-pair calls.
- GRPO loss: `GRPOTrainer._compute_loss` with `_get_per_token_logps_and_entropies` replaced by a function that
  returns the given log-probs (a leaf tensor: the gradient w.r.t. the log-probs is compared too) against
  `policy_gradient_loss`.
- GRPO / RLOO advantages: `GRPOTrainer._generate_and_score_completions` / `RLOOTrainer._generate_and_score_completions`
  with the generation (`_generate_single_turn`) returning given completions, a reward function returning given scores
  and (RLOO's KL-in-the-reward) the log-prob function returning given policy / reference log-probs, against
  `GroupExperienceMaker.make_experience` with stand-in actor, reference and reward models returning the same.
- RLOO loss: `RLOOTrainer._compute_loss`.
- End to end: both sides' log-probs of one tiny float64 LLaMA (TRL's `_get_per_token_logps_and_entropies`, coati_nb's
  `Actor`; with and without left padding, and at a sampling temperature) and both DPO losses on that model.

Known differences (second table): TRL 1.12's 'sigmoid' DPO ignores label_smoothing (coati_nb's ε is cDPO's; TRL's
'robust' is another formula); coati_nb's DPOTrainer logs IPO's rewards from token-mean log-probs, TRL from sums;
TRL's 'dapo' divides by the tokens of the whole generation batch, coati_nb's by the micro-batch's; TRL's default
KL ratio correction (coati_nb: kl_ratio_correction=False by default); TRL's scale_rewards='batch'; the KL at a
temperature other than 1.

Runs on CPU in a few seconds after TRL's import; every case is seeded.
"""
from __future__ import annotations

import argparse, contextlib, io, json, math, os, shutil, subprocess, sys, tempfile, types, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_VERSION = '1.12.0'
TRL_DIR = ROOT / '.venv' / f'trl-{TRL_VERSION}'
TOL = 1e-6
for k, v in {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'WANDB_MODE': 'disabled',
             'TOKENIZERS_PARALLELISM': 'false', 'DISABLE_MLFLOW_INTEGRATION': 'TRUE',
             'TRANSFORMERS_NO_ADVISORY_WARNINGS': '1'}.items():
    os.environ.setdefault(k, v)


# ----------------------------------------------------------------------------------------------------------------
# TRL: unpacked into a folder of its own, put on sys.path here only
def install_trl(target: Path = TRL_DIR, python: str = sys.executable) -> Path:
    "`pip install --no-deps --target` TRL into a temporary folder, then rename it to `target` (atomic)."
    if (target / 'trl' / '__init__.py').is_file(): return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}-', dir=target.parent))
    cmd = [python, '-m', 'pip', 'install', '--no-deps', '--no-compile', '--disable-pip-version-check', '--target', str(tmp),
           f'trl=={TRL_VERSION}']
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"installing TRL {TRL_VERSION} into {target} failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    try: tmp.rename(target)
    except OSError:                                               # another run made it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / 'trl' / '__init__.py').is_file(): raise
    return target

def missing_requirements(trl_dir: Path) -> list[str]:
    "TRL's own requirements (its METADATA, extras left out) that this interpreter lacks or has in a version outside them."
    import importlib.metadata as md
    from packaging.requirements import Requirement
    meta = next(trl_dir.glob('trl-*.dist-info/METADATA'), None)
    if meta is None: return []
    out = []
    for line in meta.read_text(encoding='utf-8').splitlines():
        if not line.startswith('Requires-Dist:'): continue
        req = Requirement(line.split(':', 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({'extra': ''}): continue
        try: have = md.version(req.name)
        except md.PackageNotFoundError: out.append(f'{req} (not installed)'); continue
        if req.specifier and not req.specifier.contains(have, prereleases=True): out.append(f'{req} (have {have})')
    return out

def import_trl(trl_dir: Path):
    "Import TRL from `trl_dir` (or from the interpreter if it already has it) and check its version and requirements."
    if (trl_dir / 'trl' / '__init__.py').is_file():
        missing = missing_requirements(trl_dir)
        if missing: raise SystemExit(f"TRL {TRL_VERSION} in {trl_dir} needs what {sys.executable} lacks: {'; '.join(missing)}")
        sys.path.insert(0, str(trl_dir))
    try:
        with contextlib.redirect_stderr(io.StringIO()):            # bitsandbytes' note about an optional kernel package
            import trl
    except ImportError as e:
        raise SystemExit(f"TRL is not importable ({e}); make {trl_dir} with: python {Path(__file__).name} --setup") from e
    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"TRL {trl.__version__} from {trl.__file__}; this comparison is for TRL {TRL_VERSION}")
    return trl


# ----------------------------------------------------------------------------------------------------------------
# the results
class Table:
    def __init__(self): self.rows, self.known = [], []
    def add(self, quantity: str, case: str, coati, trl):
        c, t = _num(coati), _num(trl)
        d = float((c - t).abs().max()) if c.numel() else float('nan')
        self.rows.append({'quantity': quantity, 'case': case, 'coati_nb': _show(c), 'trl': _show(t), 'diff': d,
                          'n': int(c.numel()), 'ok': bool(c.shape == t.shape and d <= TOL)})
    def note(self, quantity: str, case: str, coati, trl, why: str):
        c, t = _num(coati), _num(trl)
        self.known.append({'quantity': quantity, 'case': case, 'coati_nb': _show(c), 'trl': _show(t),
                           'diff': float((c - t).abs().max()), 'why': why})

def _num(x):
    import torch
    return torch.as_tensor(x, dtype=torch.float64).detach().reshape(-1).clone()

def _show(t) -> str:
    if t.numel() == 1: return f'{t.item():.8f}'
    return f'{t.numel()} values, max abs {t.abs().max().item():.6f}'


# ----------------------------------------------------------------------------------------------------------------
# stand-ins
def _modules():
    import torch
    class LogitsLM(torch.nn.Module):
        "A causal LM stand-in that returns fixed logits (and has the attributes the trainers look at)."
        def __init__(self, logits):
            super().__init__(); self.logits = logits; self.w = torch.nn.Parameter(torch.zeros(1))
        def forward(self, input_ids=None, **kw): return types.SimpleNamespace(logits=self.logits, aux_loss=None)
    class FixedActor(torch.nn.Module):
        "coati_nb's actor interface: `generate` -> the given completions, forward -> the given log-probs."
        def __init__(self, completions, logps, pad):
            super().__init__(); self.completions, self.logps, self.pad = completions, logps, pad
            self.w = torch.nn.Parameter(torch.zeros(1))
        def generate(self, input_ids, attention_mask=None, **kw):
            A = max(len(c) for c in self.completions)
            resp = torch.full((len(self.completions), A), self.pad, dtype=torch.long)
            mask = torch.zeros(len(self.completions), A, dtype=torch.long)
            for i, c in enumerate(self.completions): resp[i, :len(c)] = torch.tensor(c); mask[i, :len(c)] = 1
            return torch.cat([input_ids, resp], 1), torch.cat([attention_mask, mask], 1), mask.bool()
        def forward(self, sequences, num_actions, attention_mask=None, **kw): return self.logps[:, :num_actions].clone()
    class FixedReward(torch.nn.Module):
        def __init__(self, scores): super().__init__(); self.scores = scores
        def forward(self, sequences, attention_mask=None): return self.scores.clone()
    return LogitsLM, FixedActor, FixedReward

def logits_for(input_ids, token_logps, vocab: int):
    """(N, L, V) float64 logits whose log-softmax at position t, label input_ids[:, t+1], is token_logps[:, t+1].
    Each row is already a log-distribution (the label gets p, the other V−1 tokens share 1 − p)."""
    import torch
    N, L = input_ids.shape
    lp = torch.full((N, L), -1.0, dtype=torch.float64)
    lp[:, :-1] = token_logps[:, 1:]
    rest = torch.log(-torch.expm1(lp) / (vocab - 1))
    logits = rest.unsqueeze(-1).expand(N, L, vocab).clone()
    nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], 1)
    logits.scatter_(2, nxt.unsqueeze(-1), lp.unsqueeze(-1))
    return logits

def random_lengths(g, n: int, A: int, min_len: int = 1):
    "n lengths in [min_len, A], one of them A and one min_len (masks of different lengths)."
    import torch
    ls = torch.randint(min_len, A + 1, (n,), generator=g)
    ls[0] = A
    if n > 1: ls[-1] = min_len
    return ls


# ----------------------------------------------------------------------------------------------------------------
# the TRL side
class TRLSide:
    "Real TRL trainers on a tiny LLaMA; the loss methods are called with given tensors."
    def __init__(self, work: Path, tok):
        import torch
        from transformers import LlamaForCausalLM
        from coati_nb.models import tiny_config
        self.work, self.tok = work, tok
        conf = tiny_config('llama', vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, max_positions=128,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        self.lm_dir = work / 'lm'
        LlamaForCausalLM(conf).save_pretrained(self.lm_dir); tok.save_pretrained(self.lm_dir)
        self.n = 0

    def _common(self, **kw) -> dict:
        import dataclasses
        from transformers import TrainingArguments
        self.n += 1
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        extra = {'activation_checkpointing': False} if 'activation_checkpointing' in names else {}
        return dict(output_dir=str(self.work / f'out{self.n}'), use_cpu=True, report_to='none', save_strategy='no',
                    logging_steps=1, gradient_checkpointing=False, seed=0, **extra, **kw)

    def _quiet(self):
        stack = contextlib.ExitStack()
        stack.enter_context(warnings.catch_warnings()); warnings.simplefilter('ignore')
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return stack

    # DPO ------------------------------------------------------------------------------------------------------
    def dpo_trainer(self, beta: float, loss_type: str, label_smoothing: float = 0.0, batch: int = 1):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
        ds = Dataset.from_list([{'prompt': 'a', 'chosen': ' b', 'rejected': ' c'}] * 2)
        args = DPOConfig(**self._common(per_device_train_batch_size=batch, beta=beta, loss_type=[loss_type],
                                        label_smoothing=label_smoothing))
        with self._quiet(): tr = DPOTrainer(model=str(self.lm_dir), args=args, train_dataset=ds, processing_class=self.tok)
        tr.model.train()
        return tr

    def dpo(self, tr, inputs, policy_logits, ref_logits) -> tuple[float, float, float]:
        "TRL's mean loss and logged mean chosen / rejected rewards for one batch [chosen; rejected]."
        LogitsLM, _, _ = _modules()
        tr.ref_model = LogitsLM(ref_logits)
        with self._quiet(): loss = tr._compute_loss(LogitsLM(policy_logits), inputs, return_outputs=False)
        m = tr._metrics['train']
        return float(loss), m['rewards/chosen'][-1], m['rewards/rejected'][-1]

    # GRPO -----------------------------------------------------------------------------------------------------
    def grpo_trainer(self, *, batch: int, group: int, **cfg):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
        ds = Dataset.from_list([{'prompt': 'a', 'score': 0.0}] * batch)
        args = GRPOConfig(**self._common(per_device_train_batch_size=batch, num_generations=group, **cfg))
        with self._quiet():
            tr = GRPOTrainer(model=str(self.lm_dir), reward_funcs=_score_reward, args=args, train_dataset=ds,
                             processing_class=self.tok)
        tr.model.train(); tr.current_gradient_accumulation_steps = 1      # what Trainer sets with no accumulation
        return tr

    def grpo_loss(self, tr, logps, old, ref, adv, mask, num_items=None):
        "TRL's GRPO loss and d loss / d log-probs for given per-token log-probs."
        import torch
        lp = logps.detach().clone().requires_grad_(True)
        tr._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros_like(lp), None)
        B, A = lp.shape
        inputs = {'prompt_ids': torch.ones(B, 2, dtype=torch.long), 'prompt_mask': torch.ones(B, 2, dtype=torch.long),
                  'completion_ids': torch.full((B, A), 5, dtype=torch.long), 'completion_mask': mask.long(),
                  'advantages': adv, 'old_per_token_logps': old,
                  'num_items_in_batch': torch.tensor(float(mask.sum()) if num_items is None else float(num_items))}
        if ref is not None: inputs['ref_per_token_logps'] = ref
        with self._quiet(): loss = tr._compute_loss(tr.model, inputs)
        loss.backward()
        return loss.detach(), lp.grad.detach()

    def advantages(self, tr, completions, scores, old=None, ref=None):
        "TRL's advantages from `_generate_and_score_completions` on given completions, scores and log-probs."
        import torch
        B = len(completions)
        prompts = [{'prompt': f'p{i // tr.num_generations}', 'score': float(s)} for i, s in enumerate(scores.tolist())]
        is_grpo = type(tr).__name__ == 'GRPOTrainer'
        tr._generate_single_turn = ((lambda *a, **k: ([list(c) for c in completions], None)) if is_grpo
                                    else (lambda *a, **k: [list(c) for c in completions]))
        def logps(model, input_ids, attention_mask, logits_to_keep, *a, **k):
            t = ref if (getattr(tr, 'ref_model', None) is not None and model is tr.ref_model) else old
            if t is None: t = torch.zeros(B, logits_to_keep, dtype=torch.float64)
            return t[:, :logits_to_keep].to(torch.float32), None, None
        tr._get_per_token_logps_and_entropies = logps
        with self._quiet(): out = tr._generate_and_score_completions(prompts)
        return out['advantages'], out['completion_mask']

    # RLOO -----------------------------------------------------------------------------------------------------
    def rloo_trainer(self, *, batch: int, group: int, **cfg):
        from datasets import Dataset
        from trl import RLOOConfig, RLOOTrainer
        ds = Dataset.from_list([{'prompt': 'a', 'score': 0.0}] * batch)
        args = RLOOConfig(**self._common(per_device_train_batch_size=batch, num_generations=group, **cfg))
        with self._quiet():
            tr = RLOOTrainer(model=str(self.lm_dir), reward_funcs=_score_reward, args=args, train_dataset=ds,
                             processing_class=self.tok)
        tr.model.train()
        return tr

    def rloo_loss(self, tr, logps, old_seq, adv, mask):
        import torch
        lp = logps.detach().clone().requires_grad_(True)
        tr._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros_like(lp), None)
        B, A = lp.shape
        inputs = {'prompt_ids': torch.ones(B, 2, dtype=torch.long), 'prompt_mask': torch.ones(B, 2, dtype=torch.long),
                  'completion_ids': torch.full((B, A), 5, dtype=torch.long), 'completion_mask': mask.to(lp.dtype),
                  'advantages': adv, 'old_logps': old_seq}
        with self._quiet(): loss = tr._compute_loss(tr.model, inputs)
        loss.backward()
        return loss.detach(), lp.grad.detach()

def _score_reward(prompts, completions, score, **kw):
    "A TRL reward function: the dataset's 'score' column, as given."
    return [float(s) for s in score]


# ----------------------------------------------------------------------------------------------------------------
# the cases
def dpo_batch(seed: int, B: int, T: int, vocab: int = 16, prompt_len: int = 2):
    "Input ids [chosen; rejected] (2B, P+T), completion masks of different lengths, policy and reference token log-probs."
    import torch
    g = torch.Generator().manual_seed(seed)
    L = prompt_len + T
    ids = torch.randint(3, vocab, (2 * B, L), generator=g)
    lens = torch.cat([random_lengths(g, B, T), random_lengths(g, B, T).flip(0)])
    comp = torch.zeros(2 * B, L, dtype=torch.long)
    for i, n in enumerate(lens.tolist()): comp[i, prompt_len:prompt_len + n] = 1
    att = comp.clone(); att[:, :prompt_len] = 1
    ids = ids.masked_fill(att == 0, 0)
    pol = -(torch.rand(2 * B, L, generator=g, dtype=torch.float64) * 3 + 0.05)
    ref = (pol + torch.randn(2 * B, L, generator=g, dtype=torch.float64) * 0.4).clamp(max=-0.05)
    batch = {'input_ids': ids, 'attention_mask': att, 'completion_mask': comp}
    return batch, pol, ref, logits_for(ids, pol, vocab), logits_for(ids, ref, vocab)

def _rows(batch, idx):
    return {k: v[idx] for k, v in batch.items()}

def run_dpo(table: Table, side: TRLSide):
    import torch
    from coati_nb.algorithms import dpo_loss
    def coati(batch, pol, ref, beta, lt, ls, average):
        # the answers' log-probs in float64: Σ (or, as coati_nb's DPOTrainer does for IPO, the mean) over the answer
        # tokens of the per-token log-probs that TRL reads back from the logits (sequence_log_probs itself works in
        # float32, so it is compared end to end on a model below)
        m = batch['completion_mask'].to(pol.dtype)
        n = m.sum(1) if average else 1.0
        lp, rp = (pol * m).sum(1) / n, (ref * m).sum(1) / n
        B = lp.numel() // 2
        return dpo_loss(lp[:B], lp[B:], rp[:B], rp[B:], beta, lt, ls)

    cases = [(s, B, T, beta, lt, ls) for s, (B, T) in enumerate([(4, 6), (3, 9), (5, 4)])
             for beta in (0.1, 0.5) for lt, ls in (('sigmoid', 0.0), ('ipo', 0.0), ('sigmoid', 0.1))]
    trainers = {}
    for seed, B, T, beta, lt, ls in cases:
        batch, pol, ref, pl, rl = dpo_batch(seed, B, T)
        ipo = lt == 'ipo'
        name = f"{lt}{f' ε={ls}' if ls else ''} β={beta} B={B} T≤{T} seed={seed}"
        losses, rc, rr = coati(batch, pol, ref, beta, lt, ls, average=ipo)
        # TRL 1.12's 'sigmoid' has no label smoothing; its 'aot_unpaired' on ONE pair (sorting a batch of one is the
        # identity) is −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ), coati_nb's 'sigmoid' with ε (cDPO)
        trl_lt = 'aot_unpaired' if ls else lt
        key = (beta, trl_lt, ls)
        if key not in trainers: trainers[key] = side.dpo_trainer(beta, trl_lt, ls)
        tr = trainers[key]
        per = [side.dpo(tr, _rows(batch, [i, B + i]), pl[[i, B + i]], rl[[i, B + i]]) for i in range(B)]
        t_loss, t_rc, t_rr = (torch.tensor([p[j] for p in per], dtype=torch.float64) for j in range(3))
        tag = f" (TRL 'aot_unpaired', one pair per call)" if ls else ''
        table.add('dpo: loss per pair', name + tag, losses, t_loss)
        if ipo:
            # TRL logs β·(Σ log π − Σ log π_ref) for IPO too; coati_nb's DPOTrainer feeds IPO token-mean log-probs,
            # so its rewards are the token means: compare dpo_loss on summed log-probs, note the other
            _, rc_sum, rr_sum = coati(batch, pol, ref, beta, lt, ls, average=False)
            table.add('dpo: chosen reward per pair', name + ' (coati_nb dpo_loss on summed log-probs)', rc_sum, t_rc)
            table.add('dpo: rejected reward per pair', name + ' (coati_nb dpo_loss on summed log-probs)', rr_sum, t_rr)
            if seed == 0 and beta == 0.1:
                table.note('dpo: chosen reward (IPO)', name, rc, t_rc,
                           "coati_nb's DPOTrainer passes token-mean log-probs to dpo_loss for IPO, so its logged rewards "
                           "are β·mean-token log-ratios; TRL logs β·summed log-ratios for every loss type (loss values agree)")
        else:
            table.add('dpo: chosen reward per pair', name + tag, rc, t_rc)
            table.add('dpo: rejected reward per pair', name + tag, rr, t_rr)
        if not ls:                                                 # the batch mean, one TRL call on the whole batch
            trb = side.dpo_trainer(beta, lt, 0.0, batch=B)
            l, _, _ = side.dpo(trb, batch, pl, rl)
            table.add('dpo: loss (batch mean)', name, losses.mean(), l)
    # TRL 1.12's 'sigmoid' ignores label_smoothing: coati_nb with ε = 0 gives its value
    batch, pol, ref, pl, rl = dpo_batch(7, 4, 6)
    losses, _, _ = coati(batch, pol, ref, 0.1, 'sigmoid', 0.0, False)
    l, _, _ = side.dpo(side.dpo_trainer(0.1, 'sigmoid', 0.1, batch=4), batch, pl, rl)
    table.add('dpo: loss (batch mean)', "TRL 'sigmoid' with label_smoothing=0.1 (ignored by TRL) vs coati_nb ε=0", losses.mean(), l)
    l2, _, _ = side.dpo(side.dpo_trainer(0.1, 'robust', 0.1, batch=4), batch, pl, rl)
    losses_ls, _, _ = coati(batch, pol, ref, 0.1, 'sigmoid', 0.1, False)
    table.note('dpo: loss, ε=0.1', "coati_nb 'sigmoid' ε=0.1 (cDPO) vs TRL 'robust' ε=0.1", losses_ls.mean(), l2,
               "TRL 1.12 uses label_smoothing only in 'robust' ((−(1−ε)logσ(βΔ) + ε·logσ(−βΔ))/(1−2ε)), 'exo_pair' and "
               "'aot*'; coati_nb's ε is cDPO's −(1−ε)logσ(βΔ) − ε·logσ(−βΔ) (= TRL 'aot_unpaired' on one pair, compared above)")


def pg_case(seed: int, B: int, A: int, per_token_adv: bool = False, on_policy: bool = False):
    import torch
    g = torch.Generator().manual_seed(1000 + seed)
    lens = random_lengths(g, B, A)
    mask = (torch.arange(A)[None] < lens[:, None])
    logps = -(torch.rand(B, A, generator=g, dtype=torch.float64) * 2.5 + 0.05)
    old = logps.clone() if on_policy else logps + torch.randn(B, A, generator=g, dtype=torch.float64) * 0.3
    ref = logps + torch.randn(B, A, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(B, A, generator=g, dtype=torch.float64) if per_token_adv else torch.randn(B, generator=g, dtype=torch.float64)
    return logps, old, ref, adv, mask

GRPO_LOSS_TYPES = ('grpo', 'bnpo', 'dapo', 'dr_grpo')          # coati_nb's names of TRL 1.12's GRPO aggregations

def run_grpo_loss(table: Table, side: TRLSide):
    import torch
    from coati_nb.algorithms import LOSS_TYPES, policy_gradient_loss
    missing = set(GRPO_LOSS_TYPES) - set(LOSS_TYPES)
    if missing: raise SystemExit(f'coati_nb.algorithms.LOSS_TYPES {LOSS_TYPES} lacks {sorted(missing)}')
    def coati(logps, old, ref, adv, mask, beta, eps_high, lt, max_new, corr=False):
        lp = logps.detach().clone().requires_grad_(True)
        loss, _ = policy_gradient_loss(lp, old, adv, mask, ref if beta else None, beta=beta, eps_clip=0.2,
                                       eps_clip_high=eps_high, loss_type=lt, max_new_tokens=max_new, kl_ratio_correction=corr)
        loss.backward()
        return loss.detach(), lp.grad.detach()
    def trl(B, A, logps, old, ref, adv, mask, **cfg):
        tr = side.grpo_trainer(batch=B, group=B, epsilon=0.2, **cfg)        # (the group size plays no part in the loss)
        return side.grpo_loss(tr, logps, old, ref if cfg.get('beta') else None, adv, mask)
    i = 0
    for lt in GRPO_LOSS_TYPES:
        for beta in (0.0, 0.04):
            for eps_high in (None, 0.28):
                # (advantage per token, KL multiplied by the ratio): TRL use_bias_correction_kl = coati_nb kl_ratio_correction
                for per_token, corr in (((False, False), (False, True), (True, True)) if beta else ((False, False),)):
                    B, A = ((4, 6), (6, 9))[i % 2]
                    logps, old, ref, adv, mask = pg_case(i, B, A, per_token)
                    max_new = A + 3 if (lt == 'dr_grpo' and i % 2) else A
                    tl, tg = trl(B, A, logps, old, ref, adv, mask, loss_type=lt, beta=beta, epsilon_high=eps_high,
                                 max_completion_length=max_new, use_bias_correction_kl=corr)
                    cl, cg = coati(logps, old, ref, adv, mask, beta, eps_high, lt, max_new, corr)
                    name = (f"{lt} β={beta} ε_high={eps_high} B={B} A={A}{' max_new=' + str(max_new) if max_new != A else ''}"
                            f"{' per-token A' if per_token else ''}"
                            f"{f' kl_ratio_correction={corr} (TRL use_bias_correction_kl={corr})' if beta else ''}")
                    table.add('grpo: loss', name, cl, tl)
                    table.add('grpo: d loss / d log-probs', name, cg, tg)
                    i += 1
    # on-policy (old = current): the ratio is 1, so the KL correction changes the gradient, not the value
    logps, old, ref, adv, mask = pg_case(99, 5, 7, on_policy=True)
    for corr in (False, True):
        tl, tg = trl(5, 7, logps, old, ref, adv, mask, loss_type='grpo', beta=0.04, max_completion_length=7,
                     use_bias_correction_kl=corr)
        cl, cg = coati(logps, old, ref, adv, mask, 0.04, None, 'grpo', 7, corr)
        name = f"grpo β=0.04 on-policy (old = current), kl_ratio_correction={corr} (TRL use_bias_correction_kl={corr})"
        table.add('grpo: loss', name, cl, tl)
        table.add('grpo: d loss / d log-probs', name, cg, tg)
    # TRL's defaults (loss_type 'dapo', use_bias_correction_kl=True) against coati_nb's options that give them
    logps, old, ref, adv, mask = pg_case(5, 6, 9)
    tr = side.grpo_trainer(batch=6, group=2, beta=0.04, max_completion_length=9)       # every other field TRL's default
    tl, tg = side.grpo_loss(tr, logps, old, ref, adv, mask)
    cl, cg = coati(logps, old, ref, adv, mask, 0.04, None, 'dapo', 9, True)
    name = "TRL GRPOConfig defaults (loss_type='dapo', ε=0.2, use_bias_correction_kl=True) + β=0.04, off-policy; coati_nb 'dapo', kl_ratio_correction=True"
    table.add('grpo: loss', name, cl, tl)
    table.add('grpo: d loss / d log-probs', name, cg, tg)
    cl0, _ = coati(logps, old, ref, adv, mask, 0.04, None, 'dapo', 9, False)
    table.note('grpo: loss', "as above, coati_nb's default kl_ratio_correction=False", cl0, tl, KL_CORR)
    # dapo over two micro-batches of one generation batch: TRL divides by the tokens of the whole generation batch
    logps, old, ref, adv, mask = pg_case(6, 8, 6)
    tr = side.grpo_trainer(batch=8, group=2, loss_type='dapo', beta=0.0, max_completion_length=6)
    halves = (slice(0, 4), slice(4, 8))
    t_sum = sum(side.grpo_loss(tr, logps[h], old[h], None, adv[h], mask[h], num_items=mask.sum())[0] for h in halves)
    c_sum = sum(coati(logps[h], old[h], None, adv[h], mask[h], 0.0, None, 'dapo', 6)[0] for h in halves)
    table.note('grpo: loss', "dapo, a generation batch of 8 in two micro-batches of 4 (sum of the two losses)", c_sum, t_sum,
               "TRL's 'dapo' divides by the completion tokens of the whole generation batch (num_items_in_batch), "
               "coati_nb's by those of the micro-batch (= 'bnpo'); they agree when one micro-batch is the whole rollout")

KL_CORR = ("TRL 1.12 multiplies the k3 KL term by the importance ratio by default (use_bias_correction_kl=True, "
           "DeepSeek-V3.2); coati_nb adds the plain k3 term unless kl_ratio_correction=True (compared above)")


def group_case(seed: int, n_prompts: int, G: int, A: int, tie: bool):
    import torch
    g = torch.Generator().manual_seed(2000 + seed)
    B = n_prompts * G
    scores = torch.randn(B, generator=g).round(decimals=3)
    if tie: scores[:G] = 0.5                                          # a group whose answers all scored the same
    lens = random_lengths(g, B, A)
    comps = [torch.randint(3, 50, (int(n),), generator=g).tolist() for n in lens]
    old = -(torch.rand(B, A, generator=g, dtype=torch.float64) * 2 + 0.05)
    ref = old + torch.randn(B, A, generator=g, dtype=torch.float64) * 0.3
    # round-trip through float32: TRL's log-prob function returns float32
    return scores, comps, old.float().double(), ref.float().double()

def coati_experience(algorithm: str, comps, scores, old, ref, G: int, beta: float, scale: str = 'std'):
    import torch
    from coati_nb.algorithms import GroupExperienceMaker
    _, FixedActor, FixedReward = _modules()
    B, n = len(comps), len(comps) // G
    A = max(len(c) for c in comps)
    maker = GroupExperienceMaker(FixedActor(comps, old[:, :A].float(), 0), FixedReward(scores.float()),
                                 FixedActor(comps, ref[:, :A].float(), 0), beta, algorithm=algorithm, group_size=G,
                                 scale_rewards=scale)
    exp = maker.make_experience(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long), max_new_tokens=A)
    return exp.advantages, exp.action_mask

def run_advantages(table: Table, side: TRLSide):
    import torch
    from coati_nb.algorithms import group_advantages
    i = 0
    for G in (2, 4, 8):
        for scale, trl_scale in (('std', 'group'), ('none', 'none')):
            scores, comps, old, ref, = group_case(i, 3, G, 5, tie=(i % 2 == 0))
            tr = side.grpo_trainer(batch=len(comps), group=G, scale_rewards=trl_scale, beta=0.0, max_completion_length=5)
            t_adv, t_mask = side.advantages(tr, comps, scores)
            c_adv, c_mask = coati_experience('grpo', comps, scores, old, ref, G, 0.0, scale)
            name = f"G={G} groups=3 scale={scale} (TRL scale_rewards='{trl_scale}'){' one tied group' if i % 2 == 0 else ''}"
            table.add('grpo: advantages (GroupExperienceMaker)', name, c_adv, t_adv)
            table.add('grpo: advantages (group_advantages)', name, group_advantages(scores, G, 'mean', scale), t_adv)
            if not torch.equal(c_mask.long(), t_mask.long()): raise SystemExit(f'completion masks differ in {name}')
            i += 1
    for G in (2, 4):
        for beta in (0.0, 0.05):
            scores, comps, old, ref = group_case(i, 3, G, 6, tie=(G == 4))
            tr = side.rloo_trainer(batch=len(comps), group=G, beta=beta, normalize_advantages=False, max_completion_length=6)
            t_adv, t_mask = side.advantages(tr, comps, scores, old, ref)
            c_adv, c_mask = coati_experience('rloo', comps, scores, old, ref, G, beta)
            name = f"G={G} groups=3 β={beta} (KL k1 summed over the answer, in the reward){' one tied group' if G == 4 else ''}"
            table.add('rloo: advantages (GroupExperienceMaker)', name, c_adv, t_adv)
            if not beta: table.add('rloo: advantages (group_advantages)', name, group_advantages(scores, G, 'loo', 'none'), t_adv)
            i += 1
    scores, comps, old, ref = group_case(i, 3, 4, 5, tie=False)
    tr = side.grpo_trainer(batch=12, group=4, scale_rewards='batch', beta=0.0, max_completion_length=5)
    t_adv, _ = side.advantages(tr, comps, scores)
    table.note('grpo: advantages', "TRL scale_rewards='batch' vs coati_nb scale='std'", group_advantages(scores, 4), t_adv,
               "coati_nb has no 'batch' scale (the whole batch's std with each group's mean)")


def run_rloo_loss(table: Table, side: TRLSide):
    "TRL's RLOO loss (one clipped ratio per answer) against policy_gradient_loss(loss_type='sequence')."
    import torch
    from coati_nb.algorithms import policy_gradient_loss
    for seed, on_policy, eps_high in ((0, True, None), (1, False, None), (2, False, 0.28)):
        B, A = (6, 7) if seed % 2 == 0 else (4, 9)
        logps, old, _, _, mask = pg_case(300 + seed, B, A, on_policy=on_policy)
        adv = torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        tr = side.rloo_trainer(batch=B, group=2, beta=0.0, epsilon=0.2, epsilon_high=eps_high, max_completion_length=A)
        tl, tg = side.rloo_loss(tr, logps, (old * mask).sum(1), adv, mask)
        lp = logps.clone().requires_grad_(True)
        cl, _ = policy_gradient_loss(lp, old, adv, mask, eps_clip=0.2, eps_clip_high=eps_high, loss_type='sequence')
        cl.backward()
        name = f"{'on' if on_policy else 'off'}-policy B={B} A={A} ε_high={eps_high}, coati_nb loss_type='sequence'"
        table.add('rloo: loss', name, cl, tl)
        table.add('rloo: d loss / d log-probs', name, lp.grad, tg)


def run_end_to_end(table: Table, side: TRLSide):
    "Both sides' log-probs of one tiny LLaMA, and both DPO losses on it."
    import torch
    from transformers import LlamaForCausalLM
    from coati_nb.models import Actor
    from coati_nb.algorithms import dpo_loss, sequence_log_probs
    g = torch.Generator().manual_seed(3000)
    lm = LlamaForCausalLM.from_pretrained(side.lm_dir).double().eval()
    B, P, A = 4, 5, 6
    for left_pad in (False, True):
        prompt = torch.randint(3, 200, (B, P), generator=g); pmask = torch.ones(B, P, dtype=torch.long)
        if left_pad: pmask[1, :2] = 0; pmask[3, :1] = 0; prompt = prompt.masked_fill(pmask == 0, side.tok.pad_token_id)
        lens = random_lengths(g, B, A)
        comp = torch.randint(3, 200, (B, A), generator=g); cmask = (torch.arange(A)[None] < lens[:, None]).long()
        comp = comp.masked_fill(cmask == 0, side.tok.pad_token_id)
        seq, am = torch.cat([prompt, comp], 1), torch.cat([pmask, cmask], 1)
        tr = side.grpo_trainer(batch=B, group=2, beta=0.0, max_completion_length=A)
        tr.model = lm
        with torch.no_grad():
            t_lp = tr._get_per_token_logps_and_entropies(lm, seq, am, A)[0]
            for from_mask in ((False, True) if left_pad else (True,)):
                c_lp = Actor(lm, position_ids_from_mask=from_mask)(seq, A, am)
                name = f"tiny LLaMA fp64, B={B} prompt={P} A≤{A}, {'left-padded prompts' if left_pad else 'no prompt padding'}, Actor(position_ids_from_mask={from_mask})"
                m = cmask.bool()
                # TRL passes no position ids (0..S−1 count the left padding), coati_nb's Actor derives them from the
                # attention mask by default: the same for LLaMA, whose rotary positions only see differences
                table.add('log-probs of the answer tokens', name, c_lp[m], t_lp[m])
    # a reference: the same model, slightly moved
    ref_lm = LlamaForCausalLM.from_pretrained(side.lm_dir).double().eval()
    with torch.no_grad():
        for p in ref_lm.parameters(): p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)
    # sampling at temperature 0.7: TRL divides every log-prob's logits by it (policy, old and reference); coati_nb's
    # Actor does for the ratio (the sampling log-probs), and takes the KL from the unprocessed log-probs
    tr = side.grpo_trainer(batch=B, group=2, beta=0.04, max_completion_length=A, temperature=0.7)
    tr.model = lm
    with torch.no_grad():
        t_lp, t_ref = (tr._get_per_token_logps_and_entropies(x, seq, am, A)[0] for x in (lm, ref_lm))
        c_lp = Actor(lm)(seq, A, am, temperature=0.7)
        c_raw, c_ref = Actor(lm)(seq, A, am), Actor(ref_lm)(seq, A, am)
    m = cmask.bool()
    name = f"tiny LLaMA fp64, temperature 0.7 (TRL GRPOConfig.temperature, coati_nb Actor(..., temperature=0.7)), left-padded prompts"
    table.add('log-probs of the answer tokens', name, c_lp[m], t_lp[m])
    table.note('k1 KL to the reference, per answer (Σ_t)', 'tiny LLaMA fp64, temperature 0.7',
               ((c_raw - c_ref) * m).sum(1), ((t_lp - t_ref) * m).sum(1),
               "TRL 1.12 scales the reference's logits by the sampling temperature too, so its KL (RLOO's reward, GRPO's "
               "loss) is between the tempered distributions; coati_nb's GroupExperienceMaker takes the KL from the "
               "unprocessed log-probs of both models. Same at temperature 1")
    # DPO end to end: TRL's DPOTrainer on the model and a copy as the reference vs coati_nb's sequence_log_probs + dpo_loss
    B, L, P = 3, 12, 4
    ids = torch.randint(3, 200, (2 * B, L), generator=g)
    lens = torch.cat([random_lengths(g, B, L - P), random_lengths(g, B, L - P, 2)])
    comp = torch.zeros(2 * B, L, dtype=torch.long)
    for i, n in enumerate(lens.tolist()): comp[i, P:P + n] = 1
    att = comp.clone(); att[:, :P] = 1
    ids = ids.masked_fill(att == 0, side.tok.pad_token_id)
    batch = {'input_ids': ids, 'attention_mask': att, 'completion_mask': comp}
    lab = ids.masked_fill(comp == 0, -100)
    for lt, beta in (('sigmoid', 0.1), ('ipo', 0.5)):          # (IPO's loss is O(1) at β = 0.5: float32 log-probs)
        tr = side.dpo_trainer(beta, lt, batch=B)
        tr.model, tr.ref_model = lm, ref_lm
        with torch.no_grad(), side._quiet(): t = float(tr._compute_loss(lm, batch, return_outputs=False))
        avg = lt == 'ipo'
        with torch.no_grad():
            lp = sequence_log_probs(lm(input_ids=ids, attention_mask=att).logits, lab, avg)
            rp = sequence_log_probs(ref_lm(input_ids=ids, attention_mask=att).logits, lab, avg)
        c = dpo_loss(lp[:B], lp[B:], rp[:B], rp[B:], beta, lt)[0].mean()
        table.add('dpo: loss (batch mean), tiny LLaMA fp64', f"{lt} β={beta} B={B} answers of different lengths, "
                  f"coati_nb sequence_log_probs(average={avg})", c, t)


# ----------------------------------------------------------------------------------------------------------------
def report(table: Table, versions: dict) -> str:
    out = [f"coati_nb vs TRL {versions['trl']} (torch {versions['torch']}, transformers {versions['transformers']}); "
           f"tolerance {TOL:g} on the largest |diff| of each row", '',
           '| quantity | case | coati_nb | TRL | \\|diff\\| |', '|---|---|---|---|---|']
    for r in table.rows:
        out.append(f"| {r['quantity']} | {r['case']} | {r['coati_nb']} | {r['trl']} | {r['diff']:.1e}{'' if r['ok'] else ' FAIL'} |")
    bad = [r for r in table.rows if not r['ok']]
    out.append(f"\n{len(table.rows)} rows compared, {len(table.rows) - len(bad)} within {TOL:g}, {len(bad)} not")
    if table.known:
        out += ['', 'Known differences (shown, not compared):', '',
                '| quantity | case | coati_nb | TRL | \\|diff\\| | why |', '|---|---|---|---|---|---|']
        for r in table.known:
            out.append(f"| {r['quantity']} | {r['case']} | {r['coati_nb']} | {r['trl']} | {r['diff']:.1e} | {r['why']} |")
    return '\n'.join(out)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setup', action='store_true', help=f'install TRL {TRL_VERSION} (no dependencies) into --trl-dir and exit')
    p.add_argument('--trl-dir', type=Path, default=TRL_DIR, help='folder holding TRL (pip install --target)')
    p.add_argument('--json', metavar='OUT', help='also write the rows as JSON to OUT')
    a = p.parse_args(argv)
    if a.setup:
        print(f'TRL {TRL_VERSION} in {install_trl(a.trl_dir)}'); return 0
    trl = import_trl(a.trl_dir)
    import torch, transformers
    torch.set_num_threads(1)
    from coati_nb.tokenizer import load_tokenizer
    table = Table()
    with tempfile.TemporaryDirectory(prefix='trl_losses_') as work:
        side = TRLSide(Path(work), load_tokenizer())
        for part in (run_dpo, run_grpo_loss, run_advantages, run_rloo_loss, run_end_to_end): part(table, side)
    versions = {'trl': trl.__version__, 'torch': torch.__version__, 'transformers': transformers.__version__}
    print(report(table, versions))
    if a.json:
        from coati_nb.utils import atomic_write
        with atomic_write(a.json) as tmp:
            Path(tmp).write_text(json.dumps({'versions': versions, 'tolerance': TOL, 'rows': table.rows, 'known': table.known}, indent=1))
    return 0 if all(r['ok'] for r in table.rows) else 1

if __name__ == '__main__':
    sys.exit(main())
