"""The console scripts end to end on the bundled data and a tiny model (under torchrun with 2 gloo processes,
`--strategy ddp` and `fsdp`: tests/test_fsdp_cli.py), a PPO run killed with SIGKILL and continued with `--resume`, and a checkpoint write that fails
(disk full) without harming the last good checkpoint."""
import json, os, signal, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ['--max_len', '64', '--batch_size', '8', '--log_interval', '1']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _run(args, timeout=600, **kw):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV, **kw)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _torchrun(script, *args):
    return _run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr', '127.0.0.1',
                 '--master_port', _free_port(), BIN/script, *args])


def _metrics(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


@pytest.fixture(scope='module')
def stages(tmp_path_factory):
    "SFT then RM with the console scripts, one process each; their folders feed the later tests."
    d = tmp_path_factory.mktemp('stages')
    _run([BIN/'coati_nb_train_sft', '--save_path', d/'sft', '--max_datasets_size', '64', '--lr', '1e-3', *TINY])
    _run([BIN/'coati_nb_train_rm', '--pretrain', d/'sft', '--save_path', d/'rm', '--test', 'True', '--lr', '1e-4', *TINY])
    return d


def _ppo_args(d, save, episodes=1, timesteps=2):
    return ['--pretrain', d/'sft', '--rm_pretrain', d/'rm', '--save_path', save, '--num_episodes', episodes,
            '--max_timesteps', timesteps, '--update_timesteps', '1', '--experience_batch_size', '4', '--train_batch_size', '4',
            '--ptx_batch_size', '4', '--max_new_tokens', '6', '--max_datasets_size', '16', '--lr', '1e-5', *TINY]


def _numbers(path):
    "Every number of every metrics record, without the wall-clock fields."
    return [[v for k, v in sorted(r.items()) if k != 'time' and isinstance(v, (int, float))] for r in _metrics(path)]


def _same_numbers(a, b):
    assert len(a) == len(b), (len(a), len(b))
    for step, (x, y) in enumerate(zip(a, b), 1):
        assert len(x) == len(y) and all(abs(u - v) <= 1e-6 for u, v in zip(x, y)), (step, x, y)


def _kill_after(n, flags, script='prompts'):
    "Run coati_nb_train_<script> and SIGKILL it right after its n-th checkpoint (injected, not timed)."
    proc = subprocess.run([sys.executable, ROOT/'tests'/'_kill_after_checkpoint.py', str(n), script, *map(str, flags)],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == -signal.SIGKILL, f"not killed ({proc.returncode}): {proc.stderr[-3000:]}"


def test_ppo_resumes_after_sigkill(stages, tmp_path):
    "Killed with SIGKILL right after its second checkpoint, then `--resume`: updates 3-8 equal an uninterrupted run's."
    d, save = stages, tmp_path/'ppo'
    flags = [*_ppo_args(d, save, episodes=2, timesteps=4), '--save_interval', '1']
    _kill_after(2, flags)
    assert (save/'checkpoints'/'step-2').is_dir() and not (save/'checkpoints'/'step-3').exists()
    assert not (save/'model.safetensors').exists()               # it really did not finish
    out = _run([BIN/'coati_nb_train_prompts', *flags, '--resume'])
    assert 'PPO: 8 updates' in out.stdout, out.stdout
    assert (save/'model.safetensors').is_file()
    steps = [r['step'] for r in _metrics(save/'metrics.jsonl')]
    assert steps[-1] == 8 and set(steps) == set(range(1, 9))
    _run([BIN/'coati_nb_train_prompts', *_ppo_args(d, tmp_path/'whole', episodes=2, timesteps=4), '--save_interval', '1'])
    _same_numbers(_numbers(tmp_path/'whole'/'metrics.jsonl'), _numbers(save/'metrics.jsonl'))


def test_resume_keeps_models_built_at_random(tmp_path):
    """No --pretrain: every model is built at random. Killed after update 3 and resumed with *another* --seed, the run
    still equals the uninterrupted one, because the checkpoint holds the reference and reward models too."""
    flags = lambda save, seed: ['--save_path', save, '--num_episodes', '2', '--max_timesteps', '3', '--update_timesteps', '1',
                                '--experience_batch_size', '4', '--train_batch_size', '4', '--ptx_batch_size', '4',
                                '--max_new_tokens', '6', '--max_datasets_size', '16', '--lr', '1e-3', '--save_interval', '1',
                                '--seed', seed, *TINY]
    _run([BIN/'coati_nb_train_prompts', *flags(tmp_path/'whole', 7)])
    _kill_after(3, flags(tmp_path/'cut', 7))
    assert {'initial_model.safetensors', 'reward_model.safetensors'} <= {p.name for p in (tmp_path/'cut'/'checkpoints'/'step-3').iterdir()}
    _run([BIN/'coati_nb_train_prompts', *flags(tmp_path/'cut', 8), '--resume'])
    _same_numbers(_numbers(tmp_path/'whole'/'metrics.jsonl'), _numbers(tmp_path/'cut'/'metrics.jsonl'))


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    import coati_nb.trainer.base as base
    model = torch.nn.Linear(3, 2)
    base.save_checkpoint(tmp_path, 1, {'m': model})
    good = (tmp_path/'step-1'/'m.safetensors').read_bytes()
    def disk_full(*a, **k): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(base, '_st_save_model', disk_full)
    with torch.no_grad(): model.weight.add_(1.0)
    with pytest.raises(OSError, match='No space left on device'):
        base.save_checkpoint(tmp_path, 2, {'m': model})
    assert base.latest_checkpoint(tmp_path) == tmp_path/'step-1'
    assert (tmp_path/'step-1'/'m.safetensors').read_bytes() == good
    assert not (tmp_path/'step-2').exists() and not list(tmp_path.glob('.tmp-*'))


def test_unwritable_save_path_is_refused_before_training(tmp_path):
    blocker = tmp_path/'file'; blocker.write_text('x')
    proc = subprocess.run([str(BIN/'coati_nb_train_prompts'), '--save_path', str(blocker/'out')], capture_output=True, text=True, env=ENV)
    assert proc.returncode != 0 and 'is not writable' in proc.stderr, proc.stderr


def test_seed_makes_ppo_repeat(tmp_path):
    "Two runs with the same --seed (fresh tiny models, sampling, shuffles) log the same metrics; another seed does not."
    from coati_nb.cli import train_prompts_cli
    def run(name, seed):
        flags = ['--save_path', tmp_path/name, '--num_episodes', '1', '--max_timesteps', '2', '--update_timesteps', '1',
                 '--experience_batch_size', '4', '--train_batch_size', '4', '--ptx_batch_size', '4', '--max_new_tokens', '6',
                 '--max_datasets_size', '16', '--lr', '1e-3', '--seed', seed, *TINY]
        assert train_prompts_cli([str(f) for f in flags]) == 0
        return [{k: v for k, v in r.items() if k != 'time'} for r in _metrics(tmp_path/name/'metrics.jsonl')]
    a, b, c = run('a', 7), run('b', 7), run('c', 8)
    assert a == b
    assert a != c


@pytest.mark.parametrize('script', ['sft', 'rm'])
def test_supervised_scripts_resume_after_sigkill(script, tmp_path):
    """`--ckpt_dir`: a checkpoint after every epoch. Killed with SIGKILL right after epoch 1 of 3 and rerun with
    `--resume`, the run logs the same numbers and saves the same weights as an uninterrupted one."""
    extra = ['--max_datasets_size', '32', '--lr', '1e-3'] if script == 'sft' else ['--test', 'True', '--lr', '1e-4']
    flags = lambda save: ['--save_path', save, '--max_epochs', '3', '--ckpt_dir', save/'ck', *extra, *TINY]
    _run([BIN/f'coati_nb_train_{script}', *flags(tmp_path/'whole')])
    _kill_after(1, flags(tmp_path/'cut'), script)
    assert [p.name for p in sorted((tmp_path/'cut'/'ck').glob('step-*'))] and not (tmp_path/'cut'/'model.safetensors').exists()
    _run([BIN/f'coati_nb_train_{script}', *flags(tmp_path/'cut'), '--resume'])
    _same_numbers(_numbers(tmp_path/'whole'/'metrics.jsonl'), _numbers(tmp_path/'cut'/'metrics.jsonl'))
    from safetensors.torch import load_file
    a, b = load_file(tmp_path/'whole'/'model.safetensors'), load_file(tmp_path/'cut'/'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = subprocess.run([str(BIN/f'coati_nb_train_{script}'), '--resume', *TINY], capture_output=True, text=True, env=ENV)
    assert bad.returncode == 2 and bad.stderr.strip().endswith('--resume needs --ckpt_dir (where the epoch checkpoints are)'), bad.stderr


# --- issue 12: ColossalChat's remaining flags, TensorBoard and wandb (15_cli, 08a §1.1) ---------------------------------

def _tb_scalars(log_dir):
    "tag -> [(step, value)] of every TensorBoard event file under `log_dir` (one run folder)."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    runs = {p.parent for p in Path(log_dir).rglob('events.out.tfevents.*')}
    assert len(runs) == 1, runs
    ea = EventAccumulator(str(runs.pop())); ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()['scalars']}


def _wandb_rows(wandb_dir):
    from coati_nb.trainer.base import _wandb_history
    runs = list(Path(wandb_dir).glob('wandb/offline-run-*/run-*.wandb'))
    assert len(runs) == 1, runs
    return _wandb_history(runs[0])


def _same_as_metrics(recs, tb, stage, keys, wandb_rows=None):
    "Every key's TensorBoard (and wandb) series equals metrics.jsonl's, step by step."
    for k in keys:
        want = [(r['step'], r[k]) for r in recs if k in r]
        assert want, k
        assert [s for s, _ in tb[f'{stage}/{k}']] == [s for s, _ in want], k
        assert [v for _, v in tb[f'{stage}/{k}']] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), k
        if wandb_rows is not None:
            got = [(r['_step'], r[k]) for r in wandb_rows if k in r]
            assert [s for s, _ in got] == [s for s, _ in want], k
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), k


@pytest.fixture
def offline_wandb(tmp_path):
    "WANDB_MODE=offline in a temporary WANDB_DIR: no network, the run's files land in the test's folder."
    env = {**ENV, 'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path/'wb'), 'WANDB_SILENT': 'true'}
    (tmp_path/'wb').mkdir()
    return env


def test_sft_test_flag_log_dir_and_wandb(tmp_path, offline_wandb):
    "train_sft --test True: the first 100 rows; --log_dir / --use_wandb hold exactly metrics.jsonl's numbers."
    out = tmp_path/'sft'
    proc = subprocess.run([str(BIN/'coati_nb_train_sft'), '--save_path', str(out), '--test', 'True', '--accumulation_steps', '2',
                           '--log_dir', str(tmp_path/'logs'), '--use_wandb', '--lr', '1e-3', *TINY],
                          capture_output=True, text=True, timeout=600, env=offline_wandb)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = _metrics(out/'metrics.jsonl')
    assert [r['step'] for r in recs] == list(range(1, 8))          # 100 rows / batch 8 = 13 batches; groups of 2 -> 7 updates
    assert list((tmp_path/'logs').iterdir()) == [tmp_path/'logs'/'sft']   # LOG_DIR/<stage>/<time>
    _same_as_metrics(recs, _tb_scalars(tmp_path/'logs'), 'sft', ('loss', 'lr', 'epoch'), _wandb_rows(tmp_path/'wb'))


def test_ppo_trl_names_in_tensorboard_and_wandb(stages, tmp_path, offline_wandb):
    "train_prompts --log_dir --use_wandb --max_seq_len: TRL's names, the same numbers in all three logs."
    args = [a for a in _ppo_args(stages, tmp_path/'ppo') if a not in ('--max_new_tokens', '6')]
    proc = subprocess.run([str(a) for a in [BIN/'coati_nb_train_prompts', *args, '--max_input_len', '96', '--max_seq_len', '102',
                                            '--log_dir', tmp_path/'logs', '--use_wandb']],
                          capture_output=True, text=True, timeout=600, env=offline_wandb)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = _metrics(tmp_path/'ppo'/'metrics.jsonl')
    assert len(recs) == 2 and all(r['tokens/responses_len_mean'] <= 6 for r in recs)   # 102 − 96 = 6 new tokens at most
    keys = ('policy/entropy_avg', 'val/ratio_var', 'lr', 'objective/kl', 'objective/entropy', 'loss/policy_avg', 'episode')
    _same_as_metrics(recs, _tb_scalars(tmp_path/'logs'), 'ppo', keys, _wandb_rows(tmp_path/'wb'))
    assert all(r['lr'] == 1e-5 and r['policy/entropy_avg'] > 0 for r in recs)


def test_merge_lora_weights_false_writes_a_peft_adapter(tmp_path):
    "--lora_rank 4 --merge_lora_weights False: a PEFT adapter folder; the default merges (no adapter)."
    common = ['--max_datasets_size', '16', '--lora_rank', '4', '--lr', '1e-3', *TINY]
    _run([BIN/'coati_nb_train_sft', '--save_path', tmp_path/'adapter', '--merge_lora_weights', 'False', *common])
    _run([BIN/'coati_nb_train_sft', '--save_path', tmp_path/'merged', *common])
    assert (tmp_path/'adapter'/'adapter_config.json').is_file()
    assert not (tmp_path/'merged'/'adapter_config.json').exists() and (tmp_path/'merged'/'model.safetensors').is_file()


@pytest.mark.parametrize('argv, message', [
    (['--max_new_tokens', '6', '--max_seq_len', '128'], '--max_new_tokens 6 and --max_seq_len 128 disagree'),
    (['--max_seq_len', '64'], '--max_seq_len 64 must be larger than --max_input_len 96'),
])
def test_conflicting_lengths_are_one_line(argv, message, tmp_path):
    proc = subprocess.run([str(BIN/'coati_nb_train_prompts'), '--save_path', str(tmp_path/'x'), *argv],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
