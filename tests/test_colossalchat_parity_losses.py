"""Parity of the losses and the masked/log-prob utilities with ColossalChat's own code (commit d4fb7bf).

The oracle is imported, never copied: `coati.models.loss` (loss.py) and `coati.models.utils` (utils.py) of
../shared/reference/colossalchat-2023-06. Every comparison runs both on the same float32 inputs and asserts agreement
to 1e-6 (absolute and relative), unless a comment says why not. Where ours departs on purpose the test shows the
measured difference and the named option that restores ColossalChat's behaviour.
Line numbers below refer to the reference files: coati/models/loss.py, coati/models/utils.py, coati/trainer/ppo.py.
"""
import math, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import import_coati, HOW_TO_GET

coati = import_coati()
if coati is None: pytest.skip(HOW_TO_GET, allow_module_level=True)

import coati.models.loss as cl          # noqa: E402  ColossalChat's losses
import coati.models.utils as cu         # noqa: E402  ColossalChat's utilities
import coati_nb.loss as ol              # noqa: E402  ours
import coati_nb.utils as ou             # noqa: E402
import coati_nb.experience_maker as oe  # noqa: E402

TOL = dict(atol=1e-6, rtol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), **(TOL | kw))


def gen(seed): return torch.Generator().manual_seed(seed)


def _batch(seed=0, B=3, A=5):
    "Log-probs, old log-probs, advantages and a ragged action mask (row 1 is short), float32."
    g = gen(seed)
    old = -torch.rand(B, A, generator=g) * 3                              # (B, A) log-probs in (-3, 0]
    lp = old + (torch.rand(B, A, generator=g) - 0.5)                      # ratios in [e^-0.5, e^0.5]: some clipped
    adv = torch.randn(B, A, generator=g)
    mask = torch.ones(B, A, dtype=torch.long); mask[1, 2:] = 0; mask[2, 4:] = 0
    return lp, old, adv, mask


# ---------------------------------------------------------------- GPTLMLoss (loss.py:9-22)
def test_gptlm_loss_matches():
    g = gen(1)
    logits = torch.randn(2, 7, 11, generator=g)
    labels = torch.randint(0, 11, (2, 7), generator=g); labels[0, :3] = -100; labels[1, 6] = -100
    close(ol.GPTLMLoss()(logits, labels), cl.GPTLMLoss()(logits, labels))
    labels_all = torch.randint(0, 11, (2, 7), generator=g)                  # no ignored label
    close(ol.GPTLMLoss()(logits, labels_all), cl.GPTLMLoss()(logits, labels_all))


def test_gptlm_loss_all_ignored():
    "ColossalChat's nn.CrossEntropyLoss() (mean, ignore_index=-100) gives 0/0 = NaN; ours gives 0. A departure."
    logits, labels = torch.randn(2, 5, 7, generator=gen(2)), torch.full((2, 5), -100)
    assert torch.isnan(cl.GPTLMLoss()(logits, labels))
    assert ol.GPTLMLoss()(logits, labels).item() == 0.0


# ---------------------------------------------------------------- PolicyLoss (loss.py:25-46)
@pytest.mark.parametrize('with_mask', [True, False])
def test_policy_loss_matches(with_mask):
    lp, old, adv, mask = _batch(3)
    m = mask if with_mask else None
    for a in (adv, adv[:, :1]):                       # per token (B, A); per sequence (B, 1) as ColossalChat's trainer passes
        close(ol.PolicyLoss(0.2)(lp, old, a, action_mask=m), cl.PolicyLoss(0.2)(lp, old, a, action_mask=m))
    # the gradient agrees too
    x1, x2 = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    ol.PolicyLoss()(x1, old, adv, m).backward(); cl.PolicyLoss()(x2, old, adv, m).backward()
    close(x1.grad, x2.grad)


def test_policy_loss_empty_row_and_garbage():
    "An all-zero mask row: 0 in both (ColossalChat divides by mask_sum + 1e-8, utils.py:185-190), not NaN."
    lp, old, adv, mask = _batch(4)
    mask[0] = 0
    ours, theirs = ol.PolicyLoss()(lp, old, adv, mask), cl.PolicyLoss()(lp, old, adv, mask)
    assert torch.isfinite(theirs)
    close(ours, theirs)
    # where they part: an overflowing padded slot. ColossalChat multiplies inf by the 0 of the mask -> NaN;
    # ours zeroes the padding before exp().
    lp2, adv2 = lp.clone(), adv.clone()
    lp2[1, 4], adv2[1, 4] = 200.0, -1.0                  # (1, 4) is padding; exp(200 - old) = inf in float32
    assert torch.isnan(cl.PolicyLoss()(lp2, old, adv2, mask))   # -min(inf*-1, 1.2*-1) = inf; inf * 0 = NaN
    close(ol.PolicyLoss()(lp2, old, adv2, mask), ol.PolicyLoss()(lp, old, adv, mask))


# ---------------------------------------------------------------- ValueLoss (loss.py:49-68)
def test_value_loss_per_sequence_matches():
    "ColossalChat's critic gives one value per sequence (B,); its ValueLoss ignores action_mask (takes .mean())."
    g = gen(5)
    v, v0, r = torch.randn(4, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g)
    mask = torch.ones(4, 6)
    for use in (True, False):                          # a (B,) value has no action dimension: the option is moot
        close(ol.ValueLoss(0.4, use_action_mask=use)(v, v0, r, mask), cl.ValueLoss(0.4)(v, v0, r, mask))


def test_value_loss_per_token():
    "(B, A) values: use_action_mask=False reproduces ColossalChat (padding averaged in); the default departs."
    lp, _, _, mask = _batch(6)
    g = gen(6)
    v, v0, r = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    theirs = cl.ValueLoss(0.4)(v, v0, r, action_mask=mask)
    close(ol.ValueLoss(0.4, use_action_mask=False)(v, v0, r, mask), theirs)
    close(ol.ValueLoss(0.4)(v, v0, r), theirs)         # no mask given: the same plain mean
    masked = ol.ValueLoss(0.4)(v, v0, r, mask)
    assert abs(masked.item() - theirs.item()) > 1e-3   # the default honours the mask: a different number
    # it equals ColossalChat's per-element loss averaged with ColossalChat's masked_mean, per row then over the batch
    vc = v0 + (v - v0).clamp(-0.4, 0.4)
    per = torch.max((vc - r) ** 2, (v - r) ** 2)
    close(masked, 0.5 * cu.masked_mean(per, mask, dim=1).mean())
    # NaN in a padded value: ColossalChat's loss is NaN (so is ours with use_action_mask=False); the default is unmoved
    vn = v.clone(); vn[1, 4] = float('nan')
    assert torch.isnan(cl.ValueLoss(0.4)(vn, v0, r, action_mask=mask))
    assert torch.isnan(ol.ValueLoss(0.4, use_action_mask=False)(vn, v0, r, mask))
    close(ol.ValueLoss(0.4)(vn, v0, r, mask), masked)


# ---------------------------------------------------------------- PPOPtxActorLoss (loss.py:71-93) and the trainer's mix
def _ptx_inputs(seed=7):
    lp, old, adv, mask = _batch(seed)
    g = gen(seed)
    lm_logits = torch.randn(2, 6, 9, generator=g)
    lm_labels = torch.randint(0, 9, (2, 6), generator=g); lm_labels[:, :2] = -100
    return lp, old, adv, lm_logits, lm_labels, mask


@pytest.mark.parametrize('coef', [0.0, 0.3, 2.0])
def test_ppo_ptx_additive_matches_ppoptxactorloss(coef):
    "ColossalChat's PPOPtxActorLoss returns policy_loss + pretrain_coef * lm_loss (loss.py:93): our mode='additive'."
    args = _ptx_inputs()
    close(ol.PPOPtxActorLoss(0.2, pretrain_coef=coef, mode='additive')(*args),
          cl.PPOPtxActorLoss(0.2, pretrain_coef=coef)(*args))


@pytest.mark.parametrize('c', [0.0, 0.5, 0.9])
def test_ppo_ptx_convex_matches_trainer(c):
    """ColossalChat's PPOTrainer does not use PPOPtxActorLoss: it computes PolicyLoss and GPTLMLoss separately and
    mixes them as `ptx_loss * ptx_coef + actor_loss * (1 - ptx_coef)` (trainer/ppo.py:177-183, ptx_coef default 0.9,
    line 61). coati.trainer does not import on a CPU, so that one line is restated here around its own two losses."""
    lp, old, adv, lm_logits, lm_labels, mask = _ptx_inputs()
    actor_loss = cl.PolicyLoss(0.2)(lp, old, adv, action_mask=mask)
    ptx_loss = cl.GPTLMLoss()(lm_logits, lm_labels)
    theirs = ptx_loss * c + actor_loss * (1 - c) if c != 0 else actor_loss
    close(ol.PPOPtxActorLoss(0.2, pretrain_coef=c, mode='convex')(lp, old, adv, lm_logits, lm_labels, mask), theirs)


# ---------------------------------------------------------------- LogSigLoss / LogExpLoss (loss.py:96-117)
@pytest.mark.parametrize('name', ['LogSigLoss', 'LogExpLoss'])
def test_pairwise_losses_match_where_finite(name):
    g = gen(8)
    rc, rr = torch.randn(16, generator=g) * 10, torch.randn(16, generator=g) * 10    # gaps within about ±60
    for stable in (True, False):
        ours, theirs = getattr(ol, name)(stable=stable), getattr(cl, name)()
        close(ours(rc, rr), theirs(rc, rr))
        a, b = rc.clone().requires_grad_(), rc.clone().requires_grad_()
        ours(a, rr).backward(); theirs(b, rr).backward()
        close(a.grad, b.grad)
    # gaps up to -88 (just inside float32's exp range): still equal
    gaps = torch.tensor([-88., -50., -1., 0., 1., 50., 88.])
    close(getattr(ol, name)()(gaps, torch.zeros(7)), getattr(cl, name)()(gaps, torch.zeros(7)))


@pytest.mark.parametrize('name', ['LogSigLoss', 'LogExpLoss'])
def test_pairwise_losses_overflow(name):
    "Below a gap of about -88.7 ColossalChat's forms give an inf loss and NaN gradient; ours stays finite and exact."
    for gap in (-89., -100., -1e4):
        c_theirs, c_ours = torch.tensor([gap], requires_grad=True), torch.tensor([gap], requires_grad=True)
        theirs = getattr(cl, name)()(c_theirs, torch.zeros(1)); theirs.backward()
        ours = getattr(ol, name)()(c_ours, torch.zeros(1)); ours.backward()
        assert torch.isinf(theirs) and torch.isnan(c_theirs.grad).all(), (gap, theirs, c_theirs.grad)
        close(ours, torch.tensor(-gap)); close(c_ours.grad, torch.tensor([-1.0]))
        # stable=False keeps ColossalChat's literal form, overflow included
        naive = getattr(ol, name)(stable=False)(torch.tensor([gap]), torch.zeros(1))
        assert torch.isinf(naive)


# ---------------------------------------------------------------- masked_mean (utils.py:185-190)
def test_masked_mean_matches():
    g = gen(9)
    x = torch.randn(4, 6, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.4).long(); mask[:, 0] = 1
    for dim in (0, 1):
        close(ou.masked_mean(x, mask, dim=dim), cu.masked_mean(x, mask, dim=dim))
    close(ou.masked_mean(x, mask.bool()), cu.masked_mean(x, mask.bool()))


def test_masked_mean_empty_row_is_zero_in_both():
    "ColossalChat divides by mask_sum + 1e-8 (utils.py:189): an all-zero row gives 0, not NaN. Ours clamps to 1: also 0."
    x = torch.tensor([[1., 2., 3.], [4., 5., 6.]])
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]])
    theirs, ours = cu.masked_mean(x, mask), ou.masked_mean(x, mask)
    assert not torch.isnan(theirs).any()
    close(theirs, torch.tensor([0., 4.5])); close(ours, theirs)


def test_masked_mean_fractional_mask_departs():
    """A departure for non-binary masks only: ours divides by max(sum(mask), 1), ColossalChat by sum(mask) + 1e-8.
    Every mask in the pipeline is 0/1, where the two agree (an integer count >= 1 absorbs 1e-8 in float32)."""
    x, w = torch.tensor([[2., 4.]]), torch.tensor([[0.25, 0.25]])
    close(cu.masked_mean(x, w), torch.tensor([3.0]))                   # 1.5 / 0.5
    close(ou.masked_mean(x, w), torch.tensor([1.5]))                   # 1.5 / max(0.5, 1)


# ---------------------------------------------------------------- masked_normalize, normalize (utils.py:193-206)
def test_masked_normalize_matches_where_colossalchat_works():
    """ColossalChat's masked_normalize subtracts a (B,) mean from a (B, A) tensor without keepdim (utils.py:195-196),
    so along dim=1 it only broadcasts when B == 1. For B == 1 the valid entries agree; ColossalChat zeroes the tensor
    before centring, so its masked-out entries hold -mean/std, ours (x - mean)/std (both are outside the mask)."""
    g = gen(10)
    x = torch.randn(1, 7, generator=g) * 3 + 1
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    ours, theirs = ou.masked_normalize(x, mask), cu.masked_normalize(x, mask)
    close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=1e-5)   # a variance of ~9 in float32: 1e-5
    # B > 1, B != A: ColossalChat raises; ours normalises each row
    x2, m2 = torch.randn(2, 5, generator=g), torch.ones(2, 5)
    with pytest.raises(RuntimeError, match='must match the size'):
        cu.masked_normalize(x2, m2)
    close(ou.masked_normalize(x2, m2).mean(1), torch.zeros(2))
    # B == A: ColossalChat silently centres column j with row j's mean, a wrong result
    x3 = torch.randn(3, 3, generator=g)
    assert (cu.masked_normalize(x3, torch.ones(3, 3)) - ou.masked_normalize(x3, torch.ones(3, 3))).abs().max() > 0.1
    # along dim=0 the shapes broadcast correctly and the two agree
    close(ou.masked_normalize(x3, torch.ones(3, 3), dim=0), cu.masked_normalize(x3, torch.ones(3, 3), dim=0), atol=1e-5, rtol=1e-5)


def test_normalize_matches_whiten_and_masked_normalize():
    "ColossalChat's normalize (imported by naive.py but never called) = our whiten on 1-D, masked_normalize(dim=0) on 2-D."
    g = gen(11)
    x1, x2 = torch.randn(8, generator=g) * 2 + 3, torch.randn(5, 4, generator=g)
    close(ou.whiten(x1), cu.normalize(x1), atol=1e-5, rtol=1e-5)
    close(ou.masked_normalize(x2, torch.ones_like(x2), dim=0), cu.normalize(x2, dim=0), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- log-probs (utils.py:160-182)
def test_log_probs_from_logits_matches():
    g = gen(12)
    logits, labels = torch.randn(3, 6, 13, generator=g) * 4, torch.randint(0, 13, (3, 6), generator=g)
    theirs = cu.log_probs_from_logits(logits, labels)
    for chunk in (128, 5, 1):
        close(ou.log_probs_from_logits(logits, labels, chunk_size=chunk), theirs)


def test_calc_action_log_probs_matches():
    "calc_action_log_probs = log_probs_from_logits(logits[:, :-1], sequences[:, 1:])[:, -num_actions:]."
    g = gen(13)
    seq, logits = torch.randint(0, 13, (2, 9), generator=g), torch.randn(2, 9, 13, generator=g)
    for A in (1, 4, 8):
        theirs = cu.calc_action_log_probs({'logits': logits}, seq, A)
        ours = ou.log_probs_from_logits(logits[:, -(A + 1):-1], seq[:, -A:])          # only the A needed positions
        close(ours, theirs)


# ---------------------------------------------------------------- compute_approx_kl, compute_reward (utils.py:126-157)
def _kl_inputs(seed=14):
    lp, old, _, mask = _batch(seed)
    return lp, old, mask                                   # actor and initial-model log-probs, ragged mask


@pytest.mark.parametrize('with_mask', [True, False])
def test_compute_approx_kl_matches(with_mask):
    lp, base, mask = _kl_inputs()
    m = mask if with_mask else None
    close(oe.compute_approx_kl(lp, base, m, estimator='k3_coati'), cu.compute_approx_kl(lp, base, action_mask=m))
    # the default estimator is Schulman's k3 ((r-1) - log r with r = pi_ref/pi): a different number, on purpose
    assert (oe.compute_approx_kl(lp, base, m) - cu.compute_approx_kl(lp, base, action_mask=m)).abs().max() > 1e-3


def test_compute_approx_kl_empty_row():
    lp, base, mask = _kl_inputs(); mask[0] = 0
    theirs = cu.compute_approx_kl(lp, base, action_mask=mask)
    assert theirs[0].item() == 0.0
    close(oe.compute_approx_kl(lp, base, mask, estimator='k3_coati'), theirs)


@pytest.mark.parametrize('kl_coef', [0.1, 0.02, 1.5])
def test_compute_reward_matches(kl_coef):
    lp, base, mask = _kl_inputs()
    r = torch.randn(3, generator=gen(15))
    for m in (mask, None):
        close(oe.compute_reward(r, kl_coef, lp, base, m, mode='sequence', estimator='k3_coati'),
              cu.compute_reward(r, kl_coef, lp, base, action_mask=m))


def test_compute_reward_kl_coef_not_positive():
    """ColossalChat returns r unchanged for kl_coef <= 0 (utils.py:153-154). Ours: kl_coef == 0 gives r (to the
    bit, for a finite KL); kl_coef < 0 raises ValueError instead of silently switching the penalty off."""
    lp, base, mask = _kl_inputs()
    r = torch.randn(3, generator=gen(16))
    assert cu.compute_reward(r, 0.0, lp, base, action_mask=mask) is r
    assert cu.compute_reward(r, -0.5, lp, base, action_mask=mask) is r
    assert torch.equal(oe.compute_reward(r, 0.0, lp, base, mask, mode='sequence', estimator='k3_coati'), r)
    with pytest.raises(ValueError, match='kl_coef must be >= 0'):
        oe.compute_reward(r, -0.5, lp, base, mask, mode='sequence', estimator='k3_coati')


def test_compute_reward_kl_coef_zero_with_overflowing_kl():
    lp, base, mask = torch.tensor([[100., -1.]]), torch.tensor([[-1., -1.]]), torch.ones(1, 2)   # exp(101) = inf
    r = torch.tensor([0.5])
    assert cu.compute_reward(r, 0.0, lp, base, action_mask=mask) is r
    close(oe.compute_reward(r, 0.0, lp, base, mask, mode='sequence', estimator='k3_coati'), r)
