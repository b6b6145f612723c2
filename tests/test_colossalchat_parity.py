"""`--ppo_preset coati` is ColossalChat: the experience and one PPO training step, built by the CLI's own `build_ppo`,
against ColossalChat's code (../shared/reference/colossalchat-2023-06, commit d4fb7bf) on the same weights and inputs.

The reference's `coati.trainer` needs the real colossalai, so `PPOTrainer.training_step` (coati/trainer/ppo.py, lines
164-202) is restated as the oracle in tests/_reference.py. Everything else runs ColossalChat's own code: its GPTActor / GPTCritic /
GPTRM, `generate_with_actor`'s masks and `NaiveExperienceMaker.make_experience`.
Losses, utils, models, data, LoRA and serving have their own files: tests/test_colossalchat_parity_*.py.
"""
import copy, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import HOW_TO_GET, colossalchat_training_step, import_coati

coati = import_coati()
if coati is None: pytest.skip(HOW_TO_GET, allow_module_level=True)

import coati.models.generation as ref_generation
from coati.experience_maker import Experience as RefExperience, NaiveExperienceMaker as RefMaker
from coati.models.gpt import GPTActor as RefGPTActor, GPTCritic as RefGPTCritic, GPTRM as RefGPTRM
from transformers import GPT2LMHeadModel, GPT2Model

from coati_nb.cli import build_ppo, prompts_parser
from coati_nb.experience_maker import Experience
from coati_nb.models import tiny_config
from coati_nb.tokenizer import load_tokenizer
from coati_nb.trainer.ppo import DataStream, PPO_PRESETS


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "A tiny GPT-2 actor folder and reward-model backbone folder over the bundled tokenizer (dropout 0)."
    tok = load_tokenizer()
    cfg = tiny_config('gpt2', vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, max_positions=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    root = tmp_path_factory.mktemp('coati_parity')
    torch.manual_seed(0); GPT2LMHeadModel(cfg).save_pretrained(root/'actor')
    torch.manual_seed(1); GPT2Model(cfg).save_pretrained(root/'rm')
    return root


def _build(folders, preset='coati', *extra):
    argv = ['--model', 'gpt2', '--pretrain', str(folders/'actor'), '--rm_pretrain', str(folders/'rm'), '--ppo_preset', preset,
            '--max_new_tokens', '6', '--experience_batch_size', '4', '--train_batch_size', '4', '--ptx_batch_size', '2',
            '--max_len', '128', '--max_input_len', '64', '--max_datasets_size', '16', '--lr', '1e-3', '--kl_coef', '0.1',
            '--seed', '0', *extra]
    return build_ppo(prompts_parser().parse_args(argv))


def _reference_models(b, folders):
    "ColossalChat's GPTActor / GPTCritic(use_action_mask=True) / GPTRM / initial model, as train_prompts.py builds them, same weights."
    actor, initial = RefGPTActor(pretrained=str(folders/'actor')), RefGPTActor(pretrained=str(folders/'actor'))
    critic = RefGPTCritic(pretrained=str(folders/'rm'), use_action_mask=True)
    rm = RefGPTRM(pretrained=str(folders/'rm'))
    critic.value_head.load_state_dict(b.critic.value_head.state_dict())     # value heads start random in both: copy ours
    rm.value_head.load_state_dict(b.reward_model.value_head.state_dict())
    for m in (actor, critic, rm, initial): m.float()
    return actor, critic, rm, initial


def test_coati_preset_is_train_prompts(folders):
    "Every option train_prompts.py fixes, read off the objects build_ppo made."
    b = _build(folders)
    t = b.trainer
    assert b.tokenizer.pad_token_id == b.tokenizer.eos_token_id                      # tokenizer.pad_token = eos_token
    assert b.critic.use_action_mask is True                                          # GPTCritic(..., use_action_mask=True)
    assert b.reward_model.pooling == 'mean'                                           # values[:, :-1].mean(1)
    assert not any(m.position_ids_from_mask for m in (b.actor, b.critic, b.reward_model, b.initial_model))
    assert b.ptx_coef == 0.9 and t.ptx_mode == 'convex' and t.ptx_stream == 'restart' and t.prompt_stream == 'restart'
    assert t.update_dropout and t.drop_last and t.max_norm is None
    assert t.experience_maker.options['kl_estimator'] == 'k3_coati' and not t.experience_maker.gae
    assert not t.experience_maker.use_sampling_logprobs
    g = t.generate_kwargs
    assert g['top_k'] == 50 and g['temperature'] == 1.0 and g['do_sample'] and not g['early_stopping']
    assert g['attention_mask_from_pad'] and g['min_new_tokens'] == 0 and g['pad_token_id'] == b.tokenizer.eos_token_id
    assert t.update_schedule == 'global'
    from coati_nb.trainer.ppo import ppo_preset
    assert not ppo_preset('coati', 'llama')['models']['pad_is_eos']                # LLaMA keeps a [PAD] (train_prompts.py:135-138)
    c = _build(folders, 'corrected')
    assert c.tokenizer.pad_token_id != c.tokenizer.eos_token_id and c.reward_model.pooling == 'last'
    assert c.trainer.experience_maker.use_sampling_logprobs and not c.trainer.update_dropout


def _experiences(b, folders, seed=0):
    "Our experience from build_ppo's trainer, and ColossalChat's NaiveExperienceMaker on the same sequences."
    batch = next(iter(b.prompt_dataloader))
    torch.manual_seed(seed)
    ours = b.trainer.experience_maker.make_experience(batch['input_ids'], attention_mask=batch['attention_mask'],
                                                      **b.trainer.generate_kwargs)
    ref_actor, ref_critic, ref_rm, ref_initial = _reference_models(b, folders)
    real_generate = ref_generation.generate
    ref_generation.generate = lambda model, input_ids, **kw: ours.sequences   # the same samples; the masks are ColossalChat's own
    try:
        maker = RefMaker(ref_actor, ref_critic, ref_rm, ref_initial, kl_coef=0.1)
        g = b.trainer.generate_kwargs
        ref = maker.make_experience(batch['input_ids'], max_length=ours.sequences.size(1), do_sample=True, top_k=g['top_k'],
                                    temperature=g['temperature'], pad_token_id=g['pad_token_id'], eos_token_id=g['eos_token_id'])
    finally:
        ref_generation.generate = real_generate
    return batch, ours, ref, (ref_actor, ref_critic, ref_rm, ref_initial)


def test_experience_matches_colossalchat(folders):
    b = _build(folders)
    batch, ours, ref, _ = _experiences(b, folders)
    assert (batch['attention_mask'] == 0).any()                                 # left padding (pad = EOS) is exercised
    m = ref.action_mask
    assert torch.equal(ours.sequences, ref.sequences)
    assert torch.equal(ours.attention_mask, ref.attention_mask)                 # sequences != pad: EOS hidden, as ColossalChat
    assert torch.equal(ours.action_mask.bool(), m.bool())
    torch.testing.assert_close(ours.action_log_probs[m], ref.action_log_probs[m], atol=1e-6, rtol=0)   # equal on the actions
    torch.testing.assert_close(ours.values, ref.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.reward, ref.reward, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.advantages, ref.advantages.squeeze(-1), atol=1e-6, rtol=0)   # ColossalChat keeps (B, 1)


def test_one_ppo_step_matches_colossalchat(folders):
    "From the same Experience and PTX batch: the same losses, and the same actor and critic parameters afterwards."
    b = _build(folders)
    batch, ours, ref, (ref_actor, ref_critic, _, _) = _experiences(b, folders)
    # the two experiences agree (previous test); each side learns from its own, as each trainer would
    t = b.trainer
    t._ptx = DataStream(b.pretrain_dataloader, t.ptx_stream)
    lr = t.actor_optim.param_groups[0]['lr']
    ref_actor_optim = torch.optim.Adam(ref_actor.parameters(), lr=lr)
    ref_critic_optim = torch.optim.Adam(ref_critic.parameters(), lr=t.critic_optim.param_groups[0]['lr'])
    torch.manual_seed(123)                                       # next(iter(shuffled loader)) draws the same batch
    ptx_batch = next(iter(b.pretrain_dataloader))
    torch.manual_seed(123)
    met = t.training_step(ours)
    want = colossalchat_training_step(ref_actor, ref_critic, ref_actor_optim, ref_critic_optim, ref, ptx_batch, ptx_coef=b.ptx_coef)
    for k, v in want.items(): assert met[k] == pytest.approx(v, abs=1e-6), (k, met[k], v)
    for name, ours_m, ref_m in (('actor', b.actor, ref_actor), ('critic', b.critic, ref_critic)):
        sd, rsd = ours_m.state_dict(), ref_m.state_dict()
        assert set(sd) == set(rsd), (name, set(sd) ^ set(rsd))
        for k in sd: torch.testing.assert_close(sd[k], rsd[k], atol=1e-6, rtol=0, msg=lambda s, k=k: f'{name} {k}: {s}')
    moved = any(not torch.equal(v, GPT2LMHeadModel.from_pretrained(folders/'actor').state_dict()[k.removeprefix('model.')])
                for k, v in b.actor.state_dict().items() if k.startswith('model.') and 'attn.bias' not in k)
    assert moved                                                  # the step really changed the weights


def test_corrected_departs_from_colossalchat(folders):
    "The corrected preset on the same folders: per-token quantities and sampled-distribution log-probs, not ColossalChat's."
    b = _build(folders, 'corrected')
    batch = next(iter(b.prompt_dataloader))
    torch.manual_seed(0)
    e = b.trainer.experience_maker.make_experience(batch['input_ids'], attention_mask=batch['attention_mask'], **b.trainer.generate_kwargs)
    assert e.values.dim() == 2 and e.advantages.dim() == 2                   # GAE over per-token values
    m = e.action_mask.bool()
    plain = b.actor(e.sequences, e.num_actions, e.attention_mask)
    assert (e.action_log_probs[m] >= plain[m] - 1e-6).all()                  # log q (top-50) >= log π


def test_coati_update_schedule_is_global(folders):
    "ColossalChat counts timesteps across episodes (ppo.py:145,155): with 3 timesteps an episode and update_timesteps=2,"
    "it learns after global steps 2, 4 and 6 and never at an episode's end; the corrected schedule also learns at each end."
    seen = {}
    for preset in ('coati', 'corrected'):
        b = _build(folders, preset, '--max_new_tokens', '3')
        t = b.trainer
        t.train_batch_size = t.replay_buffer.sample_batch_size = 4
        hist = t.fit(b.prompt_dataloader, b.pretrain_dataloader, num_episodes=2, max_timesteps=3, update_timesteps=2)
        seen[preset] = [(h['episode'], h['timestep']) for h in hist]
    assert seen['coati'] == [(0, 1), (1, 0), (1, 2)]
    assert seen['corrected'] == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_saved_pooling_wins_over_the_preset(folders, tmp_path):
    "A reward model trained with last-token pooling keeps it under --ppo_preset coati (a mean over its head would be noise)."
    from coati_nb.models import GPTRM
    rm = GPTRM(pretrained=str(folders/'rm'), pooling='last'); rm.save_pretrained(tmp_path/'rm_last')
    argv = ['--model', 'gpt2', '--pretrain', str(folders/'actor'), '--rm_pretrain', str(tmp_path/'rm_last'), '--ppo_preset', 'coati',
            '--max_len', '128', '--max_input_len', '64', '--max_datasets_size', '16', '--ptx_coef', '0']
    assert build_ppo(prompts_parser().parse_args(argv)).reward_model.pooling == 'last'
    assert _build(folders).reward_model.pooling == 'mean'          # no saved pooling: the preset's
    (tmp_path/'rm_last'/'coati_nb_options.json').write_text('{not json')
    with pytest.raises(ValueError, match='coati_nb_options.json is not valid JSON'):
        build_ppo(prompts_parser().parse_args(argv))
