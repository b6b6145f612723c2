"""The one-page PPO step (05c_ppo_one_page) equals the reusable classes: NaiveExperienceMaker.corrected makes the same
experience, and PPOTrainer.training_step gives the same losses and the same updated weights, on the same models, prompts
and seed. Tiny models with a 64-token vocabulary, so the test runs in seconds."""
import copy

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaModel

from coati_nb.experience_maker import EXPERIENCE_PRESETS, NaiveExperienceMaker
from coati_nb.models import Actor, Critic, RewardModel, make_value_head, tiny_config
from coati_nb.ppo_one_page import KL_COEF, gae, make_experience, ppo_update
from coati_nb.strategies import NaiveStrategy
from coati_nb.trainer.ppo import PPO_PRESETS, PPOTrainer
from coati_nb.utils import set_seed

PAD, EOS = 0, 2
GEN = dict(max_new_tokens=6, do_sample=True, eos_token_id=EOS)   # PPOTrainer adds its pad_token_id itself
PAIRS = dict(log_probs='action_log_probs', ref_log_probs='base_action_log_probs', values='values',
             rewards='reward', advantages='advantages', returns='returns')


def _setup(seed=0):
    "Models for the one page, deep copies of them wrapped in the classes, a reward model and left-padded prompts."
    cfg = tiny_config('llama', vocab_size=64, hidden_size=32, num_layers=2, num_heads=4)
    set_seed(seed)
    p = LlamaForCausalLM(cfg).eval(); r = copy.deepcopy(p).requires_grad_(False)
    b, h = LlamaModel(cfg).eval(), make_value_head(cfg.hidden_size)
    rm = RewardModel(LlamaModel(cfg)).eval().requires_grad_(False)
    p2, r2, b2, h2 = (copy.deepcopy(x) for x in (p, r, b, h))
    ids = torch.randint(3, 64, (6, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids); ids[:2, :3] = PAD; mask[:2, :3] = 0          # two left-padded prompts
    return (p, r, b, h), (Actor(p2), Actor(r2), Critic(b2, value_head=h2)), rm, ids, mask


@pytest.mark.parametrize('seed', [0, 1])
def test_one_page_equals_classes(seed):
    (p, r, b, h), (actor, initial, critic), rm, ids, mask = _setup(seed)
    set_seed(seed + 10)
    ours = make_experience(p, r, b, h, rm, ids, mask, GEN['max_new_tokens'], EOS, PAD)
    set_seed(seed + 10)
    theirs = NaiveExperienceMaker.corrected(actor, critic, rm, initial, kl_coef=KL_COEF).make_experience(
        ids, attention_mask=mask, pad_token_id=PAD, **GEN)
    assert torch.equal(ours['sequences'], theirs.sequences)
    for k, v in PAIRS.items():
        assert torch.allclose(ours[k], getattr(theirs, v), atol=1e-6, rtol=0), k
    ao, co = torch.optim.Adam(p.parameters(), 1e-3), torch.optim.Adam([*b.parameters(), *h.parameters()], 1e-3)
    trainer = PPOTrainer(NaiveStrategy(seed=0), actor, critic, rm, initial,
                         torch.optim.Adam(actor.parameters(), 1e-3), torch.optim.Adam(critic.parameters(), 1e-3),
                         kl_coef=KL_COEF, ptx_coef=0.0, experience_options=EXPERIENCE_PRESETS['corrected'],
                         **PPO_PRESETS['corrected']['trainer'], pad_token_id=PAD, **GEN)
    for _ in range(2):                                     # the second step sees ratios other than 1
        one, cls = ppo_update(p, b, h, ours, ao, co), trainer.training_step(theirs)
        assert one['policy_loss'] == pytest.approx(cls['loss/policy_avg'], abs=1e-6)
        assert one['value_loss'] == pytest.approx(cls['loss/value_avg'], abs=1e-6)
    for x, y in zip([*p.parameters(), *b.parameters(), *h.parameters()], [*actor.parameters(), *critic.parameters()]):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)


def test_gae_equals_compute_gae():
    from coati_nb.experience_maker import compute_gae
    torch.manual_seed(0)
    rw, vl = torch.randn(4, 6), torch.randn(4, 6)
    am = torch.tensor([[1] * n + [0] * (6 - n) for n in (6, 3, 1, 4)]).bool()
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.7, 0.0)]:
        for a, c in zip(gae(rw, vl, am, gamma, lam), compute_gae(rw, vl, am, gamma, lam)):
            assert torch.allclose(a, c, atol=1e-6, rtol=0)
