"""examples/bloom560m_three_stages.sh, ColossalChat's bloom-560m worked example, run end to end on a tiny BLOOM config:
stage 1 SFT (LoRA 16) -> stage 2 RM (log_exp, --test True) -> stage 3 PPO from 100 sampled prompts; each stage's
folder exists and is the next stage's input. The real-format samples come from COATI_NB_REALDATA (default
../shared/data, read only); missing, the test skips locally and fails on CI, as tests/test_realdata.py does."""
import json, os, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT/'examples'/'bloom560m_three_stages.sh'


@pytest.fixture(scope='module')
def run(tmp_path_factory, real):                 # `real` (conftest): skips locally, fails on CI, when absent
    out = tmp_path_factory.mktemp('bloom560m')
    env = {**os.environ, 'OUT': str(out), 'TINY': '1', 'OMP_NUM_THREADS': '1', 'COATI_NB_REALDATA': str(real)}
    proc = subprocess.run(['bash', str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out, proc.stdout


def test_each_stage_writes_its_folder(run):
    out, stdout = run
    for stage in ('bloom-tiny', 'sft', 'rm', 'actor'):
        assert (out/stage/'model.safetensors').is_file(), stage
        assert json.loads((out/stage/'config.json').read_text())['model_type'] == 'bloom', stage
    assert (out/'rm'/'value_head.safetensors').is_file()
    assert stdout.count('CPU: 2 processes (gloo)') == 3
    for stage in ('sft', 'rm', 'actor'): assert f'saved to {out/stage}' in stdout


def test_each_stage_feeds_the_next(run):
    out, _ = run
    roles = {s: json.loads((out/s/'coati_nb_options.json').read_text())['role'] for s in ('sft', 'rm')}
    assert roles == {'sft': 'BLOOMLM', 'rm': 'BLOOMRM'}
    prompts = json.loads((out/'prompts_100.json').read_text(encoding='utf-8'))
    assert len(prompts) == 100 and [p['id'] for p in prompts] == list(range(100))
    metrics = {s: [json.loads(l) for l in (out/s/'metrics.jsonl').read_text().splitlines() if l.strip()] for s in ('sft', 'rm', 'actor')}
    assert all(metrics.values())
    assert {m['stage'] for m in metrics['sft']} == {'sft'} and {m['stage'] for m in metrics['rm']} == {'rm'}
    from safetensors.torch import load_file
    sft, actor = load_file(out/'sft'/'model.safetensors'), load_file(out/'actor'/'model.safetensors')
    assert sft.keys() == actor.keys()                                        # PPO started from the SFT weights
    assert not any('lora_' in k for k in sft)                                # LoRA 16 merged at save time
    assert any(not (sft[k] == actor[k]).all() for k in sft)                  # and PPO moved them


def test_missing_samples_is_a_clear_error(tmp_path):
    env = {**os.environ, 'OUT': str(tmp_path), 'TINY': '1', 'COATI_NB_REALDATA': str(tmp_path/'nope')}
    proc = subprocess.run(['bash', str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and 'the shared samples are not at' in proc.stderr and 'COATI_NB_REALDATA' in proc.stderr


def test_gpu_commands_are_the_sources(tmp_path):
    "DRY_RUN=1 with PRETRAIN set prints the bloom-560m commands: the source's flags, through this project's parsers."
    import shlex
    from coati_nb.cli import prompts_parser, rm_parser, sft_parser
    env = {**os.environ, 'DRY_RUN': '1', 'OUT': str(tmp_path), 'PRETRAIN': '/models/bloom-560m', 'SFT_DATASET': '/d/instinwild_en.json',
           'RM_DATASET': '/d/hh-rlhf', 'PTX_DATASET': '/d/alpaca_data.json'}
    proc = subprocess.run(['bash', str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    cmds = {c[0]: c[1:] for c in (shlex.split(l[2:]) for l in proc.stdout.splitlines() if l.startswith('+ '))}
    parsers = {'coati_nb_train_sft': sft_parser(), 'coati_nb_train_rm': rm_parser(), 'coati_nb_train_prompts': prompts_parser()}
    a = {k: p.parse_args(cmds[k]) for k, p in parsers.items()}                  # every flag exists in our CLI
    assert (a['coati_nb_train_sft'].lora_rank, a['coati_nb_train_sft'].dataset) == (16, '/d/instinwild_en.json')
    assert (a['coati_nb_train_rm'].loss_fn, a['coati_nb_train_rm'].test, a['coati_nb_train_rm'].subset) == ('log_exp', True, 'harmless-base')
    assert {x.model for x in a.values()} == {'bloom'} and {x.strategy for x in a.values()} == {'colossalai_zero2'}
    assert '--sample_size 100' in shlex.join(cmds['coati_nb_generate_prompt_dataset'])
    assert a['coati_nb_train_prompts'].prompt_dataset == str(tmp_path/'prompts_100.json')
    assert not any(tmp_path.iterdir())                                         # nothing was run
