"""Parity of coati_nb.models / coati_nb.generation with ColossalChat's own code (the reference at commit d4fb7bf).

Same weights (ours copied into the reference's classes with a strict state-dict load), fp32, tolerance 1e-6 unless
a comment gives the reason. The reference is imported and called, never copied; files and lines are cited.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import HOW_TO_GET, import_coati  # noqa: E402

coati = import_coati()
if coati is None: pytest.skip(HOW_TO_GET, allow_module_level=True)

import importlib  # noqa: E402
from coati.models.generation import generate_with_actor  # noqa: E402
from coati.models.utils import calc_action_log_probs  # noqa: E402

from coati_nb.generation import generate  # noqa: E402
from coati_nb.models import OPTIONS_FILE, family_class, tiny_config  # noqa: E402

FAMILIES = ['gpt2', 'bloom', 'opt', 'llama']
# reference module and class prefix of each family: coati/models/{gpt,bloom,opt,llama}/*.py
REF = {'gpt2': ('coati.models.gpt', 'GPT'), 'bloom': ('coati.models.bloom', 'BLOOM'),
       'opt': ('coati.models.opt', 'OPT'), 'llama': ('coati.models.llama', 'Llama')}
SUFFIX = {'actor': 'Actor', 'critic': 'Critic', 'rm': 'RM'}
TOL = 1e-6
PAD = 0
A = 3                                                                  # response length

# a left-padded batch (row 1 has two pads) and an unpadded one; prompt 4, response 3
SEQ_PADDED = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [PAD, PAD, 12, 13, 14, 15, 16]])
MASK_PADDED = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
SEQ_FULL = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]])
MASK_FULL = torch.ones_like(SEQ_FULL)
ACTION_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
BATCHES = {'padded': (SEQ_PADDED, MASK_PADDED), 'unpadded': (SEQ_FULL, MASK_FULL)}


def ref_class(family, role):
    mod, prefix = REF[family]
    return getattr(importlib.import_module(mod), prefix + SUFFIX[role])


def pair(family, role, seed=0, config=None, ref_kw=None, **ours_kw):
    "(ours, reference) with our weights copied into the reference (strict load: the same parameter names)."
    config = config or tiny_config(family)
    torch.manual_seed(seed)
    ours = family_class(family, role)(config=config, **ours_kw).eval()
    ref = ref_class(family, role)(config=config, **(ref_kw or {})).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def maxdiff(a, b): return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# 1. forwards: position_ids_from_mask=False is ColossalChat's forward on every family, padded or not
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('batch', list(BATCHES))
@pytest.mark.parametrize('family', FAMILIES)
def test_actor_log_probs_match_colossalchat(family, batch):
    "Reference: calc_action_log_probs(actor(seq, mask), seq, A) (coati/models/utils.py:71, experience_maker/naive.py:26-27)."
    seq, mask = BATCHES[batch]
    ours, ref = pair(family, 'actor', position_ids_from_mask=False)
    with torch.no_grad():
        want = calc_action_log_probs(ref(seq, mask), seq, A)
        assert maxdiff(ours(seq, A, mask), want) <= TOL
        ours.position_ids_from_mask = True                               # our default
        d = maxdiff(ours(seq, A, mask), want)
    if batch == 'unpadded' or family in ('bloom', 'opt'):
        assert d <= TOL, (family, batch, d)        # no padding, ALiBi from the mask, OPT's own positions from the mask
    elif family == 'llama':
        assert d <= 1e-5, d                        # RoPE is relative: only rounding of the shifted angles differs
    else:
        assert d > 1e-3, d                         # GPT-2 learned positions: the padded row is scored at other positions


@pytest.mark.parametrize('batch', list(BATCHES))
@pytest.mark.parametrize('family', FAMILIES)
def test_critic_value_matches_colossalchat(family, batch):
    "Reference: Critic.forward(seq, action_mask, attention_mask) with use_action_mask=True (coati/models/base/critic.py:35-54)."
    seq, mask = BATCHES[batch]
    ours, ref = pair(family, 'critic', use_action_mask=True, position_ids_from_mask=False,
                     ref_kw=dict(use_action_mask=True))
    with torch.no_grad():
        want = ref(seq, ACTION_MASK, mask)
        assert maxdiff(ours(seq, ACTION_MASK, mask), want) <= TOL
        ours.use_action_mask = ref.use_action_mask = False               # the other branch: mean over all but the last
        assert maxdiff(ours(seq, ACTION_MASK, mask), ref(seq, ACTION_MASK, mask)) <= TOL
        ours.use_action_mask = True; ours.position_ids_from_mask = True
        d = maxdiff(ours(seq, ACTION_MASK, mask), want)
    if batch == 'unpadded' or family in ('bloom', 'opt'):
        assert d <= TOL, (family, batch, d)        # the prompt mean excludes the pads, whose positions alone differ
    elif family == 'llama':
        assert d <= 1e-5, d
    else:
        assert d > 1e-4, d


@pytest.mark.parametrize('batch', list(BATCHES))
@pytest.mark.parametrize('family', FAMILIES)
def test_reward_mean_pooling_matches_colossalchat(family, batch):
    "Reference: RewardModel.forward(seq, mask), the mean over all but the last position (coati/models/base/reward_model.py:36-41)."
    seq, mask = BATCHES[batch]
    ours, ref = pair(family, 'rm', pooling='mean', position_ids_from_mask=False)
    with torch.no_grad():
        want = ref(seq, mask)
        assert want.shape == (2,)
        assert maxdiff(ours(seq, mask), want) <= TOL
        ours.position_ids_from_mask = True
        d = maxdiff(ours(seq, mask), want)
    if batch == 'unpadded' or family == 'bloom':
        assert d <= TOL, (family, batch, d)
    elif family == 'llama':
        assert d <= 1e-5, d
    else:
        # the mean includes the pads' values: GPT-2 scores every token at other positions; OPT numbers a pad -1
        # (transformers' OPT: cumsum(mask) * mask - 1), we number it 0, so only the pads' own values differ
        assert d > 1e-5, (family, d)


def test_measured_differences_with_position_ids_from_mask(capsys):
    "Prints the measured gap between our default (True) and ColossalChat's forward on the left-padded batch."
    seq, mask = BATCHES['padded']
    rows = []
    for family in FAMILIES:
        a, ra = pair(family, 'actor'); c, rc = pair(family, 'critic', use_action_mask=True, ref_kw=dict(use_action_mask=True))
        r, rr = pair(family, 'rm', pooling='mean')
        with torch.no_grad():
            rows.append((family, maxdiff(a(seq, A, mask), calc_action_log_probs(ra(seq, mask), seq, A)),
                         maxdiff(c(seq, ACTION_MASK, mask), rc(seq, ACTION_MASK, mask)),
                         maxdiff(r(seq, mask), rr(seq, mask))))
    with capsys.disabled():
        print('\nmax |ours(position_ids_from_mask=True) - ColossalChat| on the left-padded batch')
        for fam, *d in rows: print(f'  {fam:6s} actor log-probs {d[0]:.2e}  critic value {d[1]:.2e}  rm mean {d[2]:.2e}')
    assert rows[0][1] > 1e-3                                             # GPT-2 really differs


# ---------------------------------------------------------------------------------------------------------------
# 2. value heads: shapes and initialisation conventions
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('role', ['critic', 'rm'])
@pytest.mark.parametrize('family', FAMILIES)
def test_value_head_shapes(family, role):
    "The head reads the backbone's output width: OPT's word_embed_proj_dim (coati/models/opt/opt_rm.py:30), else the hidden size."
    kw = dict(word_embed_proj_dim=16) if family == 'opt' else {}        # OPT: projection narrower than the hidden size
    cfg = tiny_config(family, **kw)
    torch.manual_seed(0)
    ours = family_class(family, role)(config=cfg)
    ref = ref_class(family, role)(config=cfg)
    assert ours.value_head.weight.shape == ref.value_head.weight.shape
    assert ours.value_head.bias.shape == ref.value_head.bias.shape == (1,)
    if family == 'opt': assert ours.value_head.weight.shape == (1, 16)


def test_value_head_init_conventions():
    """Reference RMs draw w ~ N(0, 1/(d+1)) (e.g. coati/models/gpt/gpt_rm.py:37); reference critics keep nn.Linear's
    default (kaiming-uniform, std 1/sqrt(3d); coati/models/gpt/gpt_critic.py:34). Ours use N(0, 1/(d+1)) for both:
    a departure for the critic's head (ColossalChat's train_prompts.py overwrites it from the RM when --rm_path is given)."""
    d = 256
    cfg = tiny_config('gpt2', hidden_size=d, num_layers=1)
    torch.manual_seed(0)
    stds = {name: cls(config=cfg).value_head.weight.std().item()
            for name, cls in [('ref_rm', ref_class('gpt2', 'rm')), ('ref_critic', ref_class('gpt2', 'critic')),
                              ('ours_rm', family_class('gpt2', 'rm')), ('ours_critic', family_class('gpt2', 'critic'))]}
    for k in ('ref_rm', 'ours_rm', 'ours_critic'): assert abs(stds[k] - 1 / (d + 1)) < 0.15 / (d + 1), (k, stds[k])
    assert abs(stds['ref_critic'] - 1 / (3 * d) ** 0.5) < 0.15 / (3 * d) ** 0.5, stds['ref_critic']


# ---------------------------------------------------------------------------------------------------------------
# 3. head options survive save_pretrained / pretrained=
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('family', ['gpt2', 'opt'])
def test_rm_options_saved_and_restored(family, tmp_path):
    seq, mask = BATCHES['padded']
    torch.manual_seed(0)
    rm = family_class(family, 'rm')(config=tiny_config(family), pooling='mean', position_ids_from_mask=False).eval()
    rm.save_pretrained(tmp_path)
    assert (tmp_path / OPTIONS_FILE).is_file()
    back = family_class(family, 'rm')(pretrained=tmp_path).eval()
    assert back.pooling == 'mean' and back.position_ids_from_mask is False
    with torch.no_grad(): assert torch.equal(back(seq, mask), rm(seq, mask))
    assert family_class(family, 'rm')(pretrained=tmp_path, pooling='last').pooling == 'last'   # explicit wins
    critic = family_class(family, 'critic')(pretrained=tmp_path)        # an RM folder initialises a critic
    assert critic.position_ids_from_mask is False and not hasattr(critic, 'pooling')


def test_critic_and_actor_options_saved_and_restored(tmp_path):
    seq, mask = BATCHES['padded']
    torch.manual_seed(0)
    c = family_class('gpt2', 'critic')(config=tiny_config('gpt2'), use_action_mask=True).eval()
    c.save_pretrained(tmp_path / 'c')
    back = family_class('gpt2', 'critic')(pretrained=tmp_path / 'c').eval()
    assert back.use_action_mask is True
    with torch.no_grad(): assert torch.equal(back(seq, ACTION_MASK, mask), c(seq, ACTION_MASK, mask))
    assert family_class('gpt2', 'critic')(pretrained=tmp_path / 'c', use_action_mask=False).use_action_mask is False
    a = family_class('gpt2', 'actor')(config=tiny_config('gpt2'), position_ids_from_mask=False)
    a.save_pretrained(tmp_path / 'a')
    assert family_class('gpt2', 'actor')(pretrained=tmp_path / 'a').position_ids_from_mask is False


# ---------------------------------------------------------------------------------------------------------------
# 4. generation: coati.models.generation.generate_with_actor vs coati_nb.generation.generate
# ---------------------------------------------------------------------------------------------------------------

PROMPT_FULL = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
PROMPT_PADDED = torch.tensor([[5, 6, 7, 8, 9], [PAD, PAD, 10, 11, 12]])
PMASK_PADDED = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
MAX_LEN = 14
# train_prompts.py:178-187 passes max_length, use_cache=True, do_sample=True, temperature=1.0, top_k=50, pad and eos;
# early_stopping is left at generate's default False (coati/models/generation.py:98)
SAMPLING = dict(do_sample=True, temperature=1.0, top_k=50)


def _gpt2_pair(): return pair('gpt2', 'actor')


def _eos_from_free_run(ours, prompt, mask):
    "A token our sampler emits at response step 3 of row 0 (seed 1), used as EOS = pad so that rows really stop."
    torch.manual_seed(1)
    s = generate(ours.model, prompt, attention_mask=mask, max_length=MAX_LEN, early_stopping=False, **SAMPLING)[0]
    return int(s[0, prompt.size(1) + 2])


def test_generate_tokens_and_masks_match_plain_loop_unpadded():
    """ColossalChat's loop without prepare_inputs_fn feeds {'input_ids': ...} only (generation.py:60-62): no mask, no
    cache. On unpadded prompts that is our loop's distribution; with the same seed the tokens are equal, with pad = EOS
    as train_prompts.py:138 sets. The masks: ColossalChat's `sequences != pad` (generation.py:166) hides the EOS;
    ours keeps it unless attention_mask_from_pad=True. The action masks are equal."""
    ours, ref = _gpt2_pair()
    eos = _eos_from_free_run(ours, PROMPT_FULL, None)
    # the mask is passed to both; without prepare_inputs_fn the reference ignores it (generation.py:60-61)
    kw = dict(max_length=MAX_LEN, pad_token_id=eos, eos_token_id=eos, attention_mask=torch.ones_like(PROMPT_FULL), **SAMPLING)
    torch.manual_seed(1)
    r_seq, r_mask, r_act = generate_with_actor(ref, PROMPT_FULL, **kw)
    torch.manual_seed(1)
    o_seq, o_mask, o_act = generate(ours.model, PROMPT_FULL, early_stopping=False, **kw)
    assert torch.equal(o_seq, r_seq)
    assert (r_seq[0, 5:] == eos).any()                                   # row 0 really stopped
    assert torch.equal(o_act, r_act)
    first = 5 + int((r_seq[0, 5:] == eos).nonzero()[0])                 # row 0's first EOS
    assert o_mask[0, first] == 1 and r_mask[0, first] == 0               # ours sees the EOS, theirs hides it
    torch.manual_seed(1)
    c_seq, c_mask, c_act = generate(ours.model, PROMPT_FULL, early_stopping=False, attention_mask_from_pad=True, **kw)
    assert torch.equal(c_seq, r_seq) and torch.equal(c_mask, r_mask) and torch.equal(c_act, r_act)


def test_generate_left_padded_matches_hf_fns_without_cache():
    """With the trainer's prepare_inputs_fn / update_model_kwargs_fn (ppo.py:205-216) and use_cache=False the
    reference re-runs the whole sequence with the growing mask and no position ids; transformers 5 then numbers
    GPT-2 positions 0..S-1. Our generate with position_ids_from_mask=False (KV cache on) gives the same tokens;
    with our default (positions from the mask) the left-padded row differs."""
    ours, ref = _gpt2_pair()
    hf = ref.model
    fns = dict(prepare_inputs_fn=hf.prepare_inputs_for_generation, update_model_kwargs_fn=hf._update_model_kwargs_for_generation)
    kw = dict(max_length=MAX_LEN, pad_token_id=PAD, eos_token_id=2, **SAMPLING)
    torch.manual_seed(5)
    r_seq, _, r_act = generate_with_actor(ref, PROMPT_PADDED, attention_mask=PMASK_PADDED, use_cache=False, **fns, **kw)
    torch.manual_seed(5)
    o_seq, _, o_act = generate(ours.model, PROMPT_PADDED, attention_mask=PMASK_PADDED, early_stopping=False,
                               position_ids_from_mask=False, **kw)
    assert torch.equal(o_seq, r_seq) and torch.equal(o_act, r_act)
    assert (r_seq[0, 5:] == 2).any() and not (r_seq[1, 5:] == 2).any()   # row 0 stops at EOS, row 1 runs to the end
    torch.manual_seed(5)
    d_seq = generate(ours.model, PROMPT_PADDED, attention_mask=PMASK_PADDED, early_stopping=False, **kw)[0]
    assert torch.equal(d_seq[0], r_seq[0])                              # the unpadded row is the same either way
    assert not torch.equal(d_seq[1], r_seq[1])                          # the padded row is not


def test_hf_fns_with_cache_refeed_the_prompt_under_transformers_5():
    """The trainer's setting use_cache=True plus HF's prepare_inputs_for_generation: in transformers 5 that function
    slices input_ids only when given next_sequence_length, which ColossalChat's loop never passes
    (generation.py:60), so every step re-feeds the whole sequence on top of the cache (cache length 5, then 11, ...).
    The tokens after the first step are then drawn from a wrong distribution; this documents why they differ."""
    import transformers
    ours, ref = _gpt2_pair()
    hf = ref.model
    seen, orig = [], hf.forward
    def spy(*args, **kwargs):
        ids = args[0] if args else kwargs['input_ids']
        cache = kwargs.get('cache', kwargs.get('past_key_values'))
        seen.append((ids.size(1), 0 if cache is None else cache.get_seq_length()))
        return orig(*args, **kwargs)
    hf.forward = spy
    torch.manual_seed(1)
    generate_with_actor(ref, PROMPT_FULL, max_length=8, use_cache=True, pad_token_id=PAD, eos_token_id=2,
                        prepare_inputs_fn=hf.prepare_inputs_for_generation,
                        update_model_kwargs_fn=hf._update_model_kwargs_for_generation, **SAMPLING)
    if int(transformers.__version__.split('.')[0]) >= 5 and 'next_sequence_length' in \
            __import__('inspect').signature(hf.prepare_inputs_for_generation).parameters:
        assert seen[:3] == [(5, 0), (6, 5), (7, 11)], seen               # the prompt is fed again at every step


def test_lora_value_head_trainability():
    """ColossalChat's Critic converts to LoRA after attaching the head (coati/models/base/critic.py:21-25), so with
    lora_rank > 0 its head's weight is frozen (coati/models/lora.py:115-118); its RewardModel attaches the head after
    converting (base/reward_model.py:24-33), so that head stays trainable. Ours keep both heads fully trainable."""
    cfg = tiny_config('llama')
    torch.manual_seed(0)
    ref_critic, ref_rm = ref_class('llama', 'critic')(config=cfg, lora_rank=2), ref_class('llama', 'rm')(config=cfg, lora_rank=2)
    ours_critic, ours_rm = family_class('llama', 'critic')(config=cfg, lora_rank=2), family_class('llama', 'rm')(config=cfg, lora_rank=2)
    assert ref_critic.value_head.weight.requires_grad is False and hasattr(ref_critic.value_head, 'lora_A')
    assert ref_rm.value_head.weight.requires_grad is True
    assert ours_critic.value_head.weight.requires_grad and ours_rm.value_head.weight.requires_grad
