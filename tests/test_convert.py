"""coati_nb_convert (issue 14 item 2): a checkpoint in any format (HF folder, safetensors, legacy .pt read with
weights_only) and any key layout (bare base model, causal LM, coati Actor / Critic / RM, LoRA-wrapped, DDP `module.`)
is written in any other, and every round trip gives the same logits on tiny models of the four families; keys that
do not fit are an error naming the file and the keys, unless --allow_missing names them."""
import os, subprocess, sys
from pathlib import Path

import pytest, torch
from safetensors.torch import load_file, save_file

from coati_nb.models import family_class, get_family, tiny_config
from coati_nb.convert import CheckpointKeyError, convert_checkpoint, convert_cli

FAMILIES = ['llama', 'gpt2', 'bloom', 'opt']
ROOT = Path(__file__).resolve().parent.parent


def _close(a, b, tol=1e-6):
    "Equal within tol (LoRA merging rounds once more than the unmerged forward)."
    assert a.shape == b.shape
    gap = (a - b).abs().max().item()
    assert gap <= tol, f"max |difference| {gap:.3g} > {tol}"


@pytest.fixture(scope='module')
def x():
    return torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))   # (B, S)


def _lora_actor(family, cfg):
    "An Actor with LoRA on every linear layer and a 'trained' (non-zero) B."
    torch.manual_seed(1)
    actor = family_class(family, 'actor')(config=cfg, lora_rank=2).eval()
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if n.endswith('lora_B'): p.normal_(std=0.1)
    return actor


@pytest.mark.parametrize('family', FAMILIES)
def test_round_trips(family, tmp_path, x):
    fam, cfg = get_family(family), tiny_config(family)
    cfg.save_pretrained(tmp_path / 'cfg')
    actor = _lora_actor(family, cfg)
    with torch.no_grad(): want = actor.model(x).logits                              # (B, S, V)
    # 1. LoRA Actor .pt with DDP's prefix -> merged HF causal-LM folder
    torch.save({'module.' + k: v for k, v in actor.state_dict().items()}, tmp_path / 'actor_ddp.pt')
    convert_checkpoint(tmp_path / 'actor_ddp.pt', tmp_path / 'hf', to='causal_lm', config=tmp_path / 'cfg',
                       merge_lora=True, verbose=False)
    lm = fam.causal_lm_cls.from_pretrained(tmp_path / 'hf').eval()
    with torch.no_grad(): ref = lm(x).logits
    _close(ref, want)
    # 2. HF folder -> bare safetensors -> .pt -> HF folder: exactly the same numbers
    convert_checkpoint(tmp_path / 'hf', tmp_path / 'lm.safetensors', to='causal_lm', verbose=False)
    convert_checkpoint(tmp_path / 'lm.safetensors', tmp_path / 'lm.pt', config=tmp_path / 'hf', to='causal_lm', verbose=False)
    convert_checkpoint(tmp_path / 'lm.pt', tmp_path / 'hf2', config=tmp_path / 'hf', verbose=False)
    with torch.no_grad(): assert torch.equal(fam.causal_lm_cls.from_pretrained(tmp_path / 'hf2').eval()(x).logits, ref)
    # 3. -> coati Actor .pt (loads strictly) and -> Actor HF folder (03's save_pretrained)
    lm_cfg = lm.config
    convert_checkpoint(tmp_path / 'hf', tmp_path / 'actor.pt', to='actor', verbose=False)
    a2 = family_class(family, 'actor')(config=lm_cfg).eval()
    a2.load_state_dict(torch.load(tmp_path / 'actor.pt', weights_only=True), strict=True)
    with torch.no_grad(): assert torch.equal(a2.model(x).logits, ref)
    convert_checkpoint(tmp_path / 'actor.pt', tmp_path / 'actor_hf', to='actor', config=tmp_path / 'hf', verbose=False)
    a3 = family_class(family, 'actor')(pretrained=tmp_path / 'actor_hf').eval()
    with torch.no_grad(): assert torch.equal(a3.model(x).logits, ref)
    # 4. -> LoRA-wrapped (B = 0) Actor .pt, loading strictly into Actor(lora_rank=2): the same function
    convert_checkpoint(tmp_path / 'hf', tmp_path / 'lora.pt', to='actor', lora_rank=2, verbose=False)
    a4 = family_class(family, 'actor')(config=lm_cfg, lora_rank=2).eval()
    a4.load_state_dict(torch.load(tmp_path / 'lora.pt', weights_only=True), strict=True)
    with torch.no_grad(): assert torch.equal(a4.model(x).logits, ref)
    # 5. -> bare base model -> RM folder (value head named as new) -> Critic .pt -> Critic folder
    convert_checkpoint(tmp_path / 'actor.pt', tmp_path / 'base.safetensors', to='base', config=tmp_path / 'hf',
                       allow_missing=['model.lm_head.*'], verbose=False)
    base = fam.base_model_cls.from_pretrained(tmp_path / 'hf').eval()
    with torch.no_grad(): hidden = base(x).last_hidden_state                           # (B, S, d)
    b2 = fam.base_model_cls(lm_cfg).eval(); b2.load_state_dict(load_file(tmp_path / 'base.safetensors'), strict=True)
    with torch.no_grad(): assert torch.equal(b2(x).last_hidden_state, hidden)
    convert_checkpoint(tmp_path / 'base.safetensors', tmp_path / 'rm', to='rm', config=tmp_path / 'hf',
                       allow_missing=['value_head.*'], verbose=False)
    rm = family_class(family, 'rm')(pretrained=tmp_path / 'rm').eval()
    with torch.no_grad(): assert torch.equal(rm.model(x).last_hidden_state, hidden)
    r = convert_checkpoint(tmp_path / 'rm', tmp_path / 'critic.pt', to='critic', verbose=False)
    # 03's RM folder (XForSequenceClassification + value_head.safetensors); for llama / opt its keys equal an RM's
    assert r.source_layout == ('seq_cls' if fam.causal_lm_cls.base_model_prefix == 'transformer' else 'rm') + ' (detected)'
    assert not r.notes[:-1] and not r.missing + r.unexpected
    convert_checkpoint(tmp_path / 'critic.pt', tmp_path / 'critic', to='critic', config=tmp_path / 'rm', verbose=False)
    critic = family_class(family, 'critic')(pretrained=tmp_path / 'critic').eval()
    with torch.no_grad(): assert torch.equal(critic.model(x).last_hidden_state, hidden)
    assert torch.equal(critic.value_head.weight, rm.value_head.weight) and torch.equal(critic.value_head.bias, rm.value_head.bias)


@pytest.fixture
def bloom_pt(tmp_path):
    cfg = tiny_config('bloom')
    cfg.save_pretrained(tmp_path / 'cfg')
    torch.manual_seed(0)
    actor = family_class('bloom', 'actor')(config=cfg)
    torch.save(actor.state_dict(), tmp_path / 'actor.pt')
    return tmp_path, actor


def test_refuses_keys_that_do_not_fit(bloom_pt, capsys):
    d, actor = bloom_pt
    with pytest.raises(CheckpointKeyError) as e:
        convert_checkpoint(d / 'actor.pt', d / 'rm', to='rm', config=d / 'cfg')
    msg = str(e.value)
    assert str(d / 'actor.pt') in msg and 'value_head.weight' in msg and '(missing 2)' in msg
    out = capsys.readouterr().out                                   # the report is printed before the error
    assert 'missing (2): value_head.weight, value_head.bias' in out and 'unexpected (0)' in out
    assert 'model.lm_head.weight dropped: a tied copy of model.transformer.word_embeddings.weight' in out
    assert not (d / 'rm').exists()
    # allowed by name: written, and the report says what was accepted
    r = convert_checkpoint(d / 'actor.pt', d / 'rm', to='rm', config=d / 'cfg', allow_missing=['value_head.*'])
    assert sorted(r.allowed) == ['value_head.bias', 'value_head.weight'] and (d / 'rm').is_dir()
    # an LM head that is not a copy of the embeddings is a real loss: unexpected
    sd = actor.state_dict(); sd['model.lm_head.weight'] = sd['model.lm_head.weight'] + 1
    torch.save(sd, d / 'untied.pt')
    with pytest.raises(CheckpointKeyError, match=r'untied\.pt: 1 key\(s\) do not fit a bloom base \(unexpected 1\), e\.g\. model\.lm_head\.weight'):
        convert_checkpoint(d / 'untied.pt', d / 'base.pt', to='base', config=d / 'cfg', verbose=False)


def test_missing_and_mismatched_keys_named(bloom_pt):
    d, actor = bloom_pt
    sd = actor.state_dict()
    del sd['model.transformer.h.1.mlp.dense_4h_to_h.bias']
    sd['model.transformer.ln_f.weight'] = torch.ones(7)
    torch.save(sd, d / 'bad.pt')
    with pytest.raises(CheckpointKeyError, match=r'bad\.pt: 2 key\(s\) do not fit a bloom causal_lm \(missing 1, shape-mismatched 1\)'):
        convert_checkpoint(d / 'bad.pt', d / 'lm.safetensors', config=d / 'cfg', verbose=False)
    r = convert_checkpoint(d / 'bad.pt', d / 'lm.safetensors', config=d / 'cfg', verbose=False,
                           allow_missing=['transformer.h.1.*', 'transformer.ln_f.*'])
    assert r.missing == ['transformer.h.1.mlp.dense_4h_to_h.bias'] and r.mismatched == [('transformer.ln_f.weight', (7,), (32,))]
    assert 'transformer.ln_f.weight' not in load_file(d / 'lm.safetensors')


def test_bad_files_named(bloom_pt):
    d, actor = bloom_pt
    torch.save({'step': 3, 'model': actor.state_dict()}, d / 'trainer.pt')
    with pytest.raises(ValueError, match=r"trainer\.pt: entry 'step' is a int, not a tensor"):
        convert_checkpoint(d / 'trainer.pt', d / 'o.pt', config=d / 'cfg')
    torch.save({'w': torch.zeros(1), 'obj': Path('x')}, d / 'pickle.pt')          # not loadable with weights_only
    with pytest.raises(ValueError, match=r'pickle\.pt: not a readable weights file'):
        convert_checkpoint(d / 'pickle.pt', d / 'o.pt', config=d / 'cfg')
    with pytest.raises(ValueError, match='pass --config'):
        convert_checkpoint(d / 'actor.pt', d / 'o.pt')
    with pytest.raises(FileExistsError, match='pass --overwrite'):
        convert_checkpoint(d / 'actor.pt', d / 'actor.pt', config=d / 'cfg')
    sd = family_class('bloom', 'actor')(config=tiny_config('bloom'), lora_rank=2).state_dict()
    torch.save(sd, d / 'lora.pt')
    with pytest.raises(ValueError, match=r'lora\.pt: has LoRA keys .* pass --merge_lora'):
        convert_checkpoint(d / 'lora.pt', d / 'hf', config=d / 'cfg', verbose=False)
    assert not (d / 'hf').exists()


def test_overwrite_is_atomic_and_rng_untouched(bloom_pt):
    d, actor = bloom_pt
    convert_checkpoint(d / 'actor.pt', d / 'lm', config=d / 'cfg', verbose=False)
    state = torch.get_rng_state()
    convert_checkpoint(d / 'actor.pt', d / 'lm', config=d / 'cfg', overwrite=True, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)                # building the target model does not draw from it
    assert sorted(p.name for p in d.iterdir() if p.name.startswith('.')) == []   # no temporary files left


def test_cli_in_process_and_subprocess(bloom_pt, capsys):
    d, actor = bloom_pt
    assert convert_cli([str(d / 'actor.pt'), str(d / 'lm.safetensors'), '--config', str(d / 'cfg')]) == 0
    assert 'actor (detected) -> causal_lm' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e: convert_cli([str(d / 'actor.pt'), str(d / 'x'), '--to', 'rm', '--config', str(d / 'cfg')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('coati_nb_convert: error:') and 'value_head.weight' in err[0]
    p = subprocess.run([sys.executable, '-c', 'from coati_nb.convert import convert_cli; convert_cli()', str(d / 'lm.safetensors'),
                        str(d / 'x'), '--to', 'rm', '--config', str(d / 'cfg')], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 2 and 'missing (2): value_head.weight, value_head.bias' in p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith('coati_nb_convert: error:')


def test_colossalchat_critic_with_lora_value_head(tmp_path, x):
    "ColossalChat's Critic puts LoRA on its value head too (r > out_features = 1): merged, it scores as ours."
    sys.path.insert(0, str(ROOT / 'tests'))
    from _reference import import_coati, HOW_TO_GET
    if import_coati() is None: pytest.skip(HOW_TO_GET)
    from coati.models.bloom import BLOOMCritic as RefCritic
    cfg = tiny_config('bloom'); cfg.save_pretrained(tmp_path / 'cfg')
    torch.manual_seed(0)
    ref = RefCritic(config=cfg, lora_rank=2).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith('lora_B'): p.normal_(std=0.1)
    torch.save(ref.state_dict(), tmp_path / 'critic.pt')            # ColossalChat's NaiveStrategy.save_model
    convert_checkpoint(tmp_path / 'critic.pt', tmp_path / 'critic', to='critic', config=tmp_path / 'cfg', merge_lora=True, verbose=False)
    ours = family_class('bloom', 'critic')(pretrained=tmp_path / 'critic').eval()
    with torch.no_grad():
        want = ref.value_head(ref.model(x).last_hidden_state)
        got = ours.value_head(ours.model(x).last_hidden_state)
    _close(got, want, 1e-5)


def test_dtype_kept(bloom_pt, x):
    "A bf16 checkpoint stays bf16 in every format (the HF folder is not silently widened to fp32)."
    d, actor = bloom_pt
    torch.save({k: v.to(torch.bfloat16) for k, v in actor.state_dict().items()}, d / 'bf16.pt')
    convert_checkpoint(d / 'bf16.pt', d / 'hf', config=d / 'cfg', verbose=False)
    convert_checkpoint(d / 'hf', d / 'lm.safetensors', verbose=False)
    assert {v.dtype for v in load_file(d / 'hf' / 'model.safetensors').values()} == {torch.bfloat16}
    assert {v.dtype for v in load_file(d / 'lm.safetensors').values()} == {torch.bfloat16}


@pytest.mark.parametrize('family', ['llama', 'bloom'])
def test_peft_adapter_folder(family, tmp_path, x):
    "03's save_pretrained(merge_lora_weights=False) (a PEFT adapter + base_model/) merges with the adapter's own alpha."
    actor = _lora_actor(family, tiny_config(family))
    actor.save_pretrained(tmp_path / 'peft', merge_lora_weights=False)
    r = convert_checkpoint(tmp_path / 'peft', tmp_path / 'hf', merge_lora=True, verbose=False)
    assert any(n.startswith('LoRA merged into') for n in r.notes)
    with torch.no_grad():
        _close(get_family(family).causal_lm_cls.from_pretrained(tmp_path / 'hf').eval()(x).logits, actor.model(x).logits)
    convert_checkpoint(tmp_path / 'peft', tmp_path / 'lora.pt', to='actor', verbose=False)       # LoRA kept
    a2 = family_class(family, 'actor')(config=tiny_config(family), lora_rank=2).eval()
    a2.load_state_dict(torch.load(tmp_path / 'lora.pt', weights_only=True), strict=True)
    with torch.no_grad(): assert torch.equal(a2.model(x).logits, actor.model(x).logits)
