"""Multi-process tests of coati_nb.strategies: `torchrun --nproc_per_node=2` with gloo on CPU.

Each torchrun run (tests/_ddp_worker.py) trains a tiny next-token model through the Strategy interface and records
what every rank saw; here we train the same model in one process on the combined batches and compare. The
colossalai tests skip only when colossalai is not installed; the ZeRO / Gemini training tests need CUDA."""
import importlib.util, json, os, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

from coati_nb.strategies import NaiveStrategy

WORKER = Path(__file__).resolve().parent/'_ddp_worker.py'
_spec = importlib.util.spec_from_file_location('_ddp_worker', WORKER)
w = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(w)

def _has_real_colossalai() -> bool:
    "colossalai with its Booster (not the two-line `colossalai.logging` stand-in the parity tests put on sys.path)."
    try: return importlib.util.find_spec('colossalai.booster') is not None
    except ModuleNotFoundError: return False

HAS_COLOSSALAI = _has_real_colossalai()
needs_colossalai = pytest.mark.skipif(not HAS_COLOSSALAI, reason='colossalai is not installed (optional extra: `make colossalai`)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(mode: str, out: Path, nproc: int = 2, epochs: int = 2, timeout: int = 120, records: Path|None = None) -> list[dict]:
    "Run the worker under torchrun; return every rank's record (read from `records`, default `out`)."
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr', '127.0.0.1',
           '--master_port', str(_free_port()), str(WORKER), mode, str(out), str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, f"torchrun {mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    recs = [json.loads(((records or out)/f'rank{r}.json').read_text()) for r in range(nproc)]
    assert [r['world_size'] for r in recs] == [nproc] * nproc
    return recs


def _weights(path: Path) -> dict:
    "Load a checkpoint into a plain TinyLM (so it must carry no wrapper prefix)."
    m = w.TinyLM()
    NaiveStrategy().load_model(m, path)
    return m.state_dict()


def _one_process_reference(recs: list[dict]):
    "Train in one process on the union of the ranks' batches, step by step; return (weights, losses)."
    torch.manual_seed(w.SEED)
    model, data = w.TinyLM(), w.make_data()
    opt = torch.optim.AdamW(model.parameters(), lr=w.LR)
    losses = []
    for e in range(len(recs[0]['indices'])):
        for s in range(len(recs[0]['indices'][e])):
            idx = sum((r['indices'][e][s] for r in recs), [])
            loss = w.lm_loss(model, data[idx])
            loss.backward(); opt.step(); opt.zero_grad()
            losses.append(loss.item())
    return model.state_dict(), losses


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _check_equivalence(recs, out, tol):
    ref, ref_losses = _one_process_reference(recs)
    assert _max_diff(_weights(out/'model.safetensors'), ref) < tol
    rank_mean = [sum(r['losses'][i] for r in recs) / len(recs) for i in range(len(ref_losses))]
    assert max(abs(a - b) for a, b in zip(rank_mean, ref_losses)) < tol
    # the test can fail: training moved the weights far beyond the tolerance
    torch.manual_seed(w.SEED)
    assert _max_diff(w.TinyLM().state_dict(), ref) > 100 * tol


def _check_sharding(recs):
    for e in range(len(recs[0]['indices'])):
        seen = [[i for step in r['indices'][e] for i in step] for r in recs]
        assert len({len(s) for s in seen}) == 1                       # every rank the same number of samples
        for a in range(len(seen)):
            for b in range(a + 1, len(seen)): assert not set(seen[a]) & set(seen[b]), f"ranks {a} and {b} overlap in epoch {e}"
        assert sorted(i for s in seen for i in s) == list(range(w.N))  # together: the whole dataset, once
    assert recs[0]['indices'][0] != recs[0]['indices'][1]              # set_epoch reshuffled


def _check_round_trip(recs, out):
    a, b = _weights(out/'after_a.safetensors'), _weights(out/'after_b.safetensors')
    assert _max_diff(a, b) == 0                                        # weights and Adam state both restored
    assert _max_diff(a, _weights(out/'model.safetensors')) > 0         # ... and the extra step did move them


# ---------------------------------------------------------------- DDPStrategy (torch.distributed, gloo on CPU)
def _run_once(mode: str):
    "A module-scoped fixture: one torchrun of the worker in `mode`, giving (records, out folder)."
    @pytest.fixture(scope='module')
    def run(tmp_path_factory):
        out = tmp_path_factory.mktemp(mode)
        return _torchrun(mode, out), out
    return run


ddp_run = _run_once('ddp')


def test_ddp_equals_one_process_on_the_combined_batch(ddp_run):
    recs, out = ddp_run
    _check_equivalence(recs, out, tol=1e-5)


def test_ddp_ranks_see_disjoint_data(ddp_run):
    recs, _ = ddp_run
    _check_sharding(recs)


def test_ddp_collectives(ddp_run):
    recs, _ = ddp_run
    for r in recs:
        assert r['reduce'] == {'mean': {'x': 1.5, 't': [0.5, 5.0]}, 'sum': {'x': 3.0, 't': [1, 10]},
                               'max': {'x': 2.0, 't': [1, 10]}, 'min': {'x': 1.0, 't': [0, 0]}}
        assert r['gather'] == [0, 0, 1, 1]


def test_ddp_checkpoint_round_trip(ddp_run):
    recs, out = ddp_run
    assert all(r['load_equal'] and r['optim_equal'] for r in recs)     # rank 0 wrote, every rank loaded
    _check_round_trip(recs, out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == []   # no temporary file left


# ---------------------------------------------------------------- FSDPStrategy (FSDP2 fully_shard, gloo on CPU)
fsdp_run = _run_once('fsdp')


def test_fsdp_equals_one_process_on_the_combined_batch(fsdp_run):
    recs, out = fsdp_run
    _check_equivalence(recs, out, tol=1e-5)
    _check_sharding(recs)


def test_fsdp_each_rank_holds_half_of_the_parameters(fsdp_run):
    recs, _ = fsdp_run
    assert [r['local_numel'] for r in recs] == [recs[0]['full_numel'] // 2] * 2   # TinyLM's dims are all even


def test_fsdp_checkpoint_gathers_on_rank_0_and_round_trips(fsdp_run):
    recs, out = fsdp_run
    n_keys = len(w.TinyLM().state_dict())
    assert [r['gathered_entries'] for r in recs] == [n_keys, 0]           # the full weights exist on rank 0 only
    assert all(r['load_equal'] and r['gathered_equal'] for r in recs)     # every rank got its own shard back
    _check_round_trip(recs, out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == []


@pytest.fixture(scope='module')
def fsdp_variants_run(tmp_path_factory):
    "One torchrun trains every other sharding (and CPU offload) in turn."
    out = tmp_path_factory.mktemp('fsdp_variants')
    _torchrun('fsdp_variants', out, timeout=300, records=out/w.FSDP_VARIANTS[-1])
    return out


@pytest.mark.parametrize('mode', w.FSDP_VARIANTS)
def test_fsdp_every_sharding_equals_one_process(mode, fsdp_variants_run):
    out = fsdp_variants_run/mode
    recs = [json.loads((out/f'rank{r}.json').read_text()) for r in range(2)]
    _check_equivalence(recs, out, tol=1e-5)
    full = recs[0]['full_numel']
    assert [r['local_numel'] for r in recs] == [full if mode == 'fsdp_none' else full // 2] * 2
    _check_round_trip(recs, out)


# ---------------------------------------------------------------- ColossalAIStrategy, TorchDDPPlugin on CPU
colossal_run = _run_once('colossalai')


@needs_colossalai
def test_colossalai_ddp_plugin_trains_like_one_process(colossal_run):
    recs, out = colossal_run
    _check_equivalence(recs, out, tol=1e-5)
    _check_sharding(recs)


@needs_colossalai
def test_colossalai_checkpoint_round_trip(colossal_run):
    recs, out = colossal_run
    assert all(r['load_equal'] and r['optim_equal'] for r in recs)
    _check_round_trip(recs, out)
    assert (out/'model_shards'/'model.safetensors.index.json').is_file()          # colossalai's sharded folder
    assert _max_diff(_weights(out/'sharded_b.safetensors'), _weights(out/'after_a.safetensors')) == 0


@needs_colossalai
def test_colossalai_zero_and_gemini_strategies_construct(colossal_run):
    recs, _ = colossal_run
    p = recs[0]['plugins']
    assert p['zero2'] == {'plugin': 'LowLevelZeroPlugin', 'stage': 2, 'precision': 'fp16', 'partition_grad': True,
                          'cpu_offload': False, 'reduce_bucket_size': 12 * 1024**2, 'overlap_communication': True}
    assert p['zero2_cpu']['cpu_offload'] is True and p['zero2_cpu']['stage'] == 2
    assert p['zero1_bf16']['partition_grad'] is False and p['zero1_bf16']['precision'] == 'bf16'
    assert p['gemini'] == {'plugin': 'GeminiPlugin', 'placement_policy': 'static', 'offload_param_frac': 0.0,
                           'offload_optim_frac': 0.0, 'search_range_m': 32, 'pin_memory': True}


# ---------------------------------------------------------------- ZeRO / Gemini training (CUDA only)
def _gpus() -> int:
    return min(2, torch.cuda.device_count())


@pytest.mark.gpu
@needs_colossalai
@pytest.mark.parametrize('mode', ['zero2', 'zero2_cpu'])
def test_zero2_equals_one_process(mode, tmp_path):
    recs = _torchrun(mode, tmp_path, nproc=_gpus(), timeout=300)
    _check_equivalence(recs, tmp_path, tol=1e-4)                          # fp32 ZeRO: the same maths, sharded
    _check_sharding(recs)
    _check_round_trip(recs, tmp_path)
    assert _max_diff(_weights(tmp_path/'sharded_a.safetensors'), _weights(tmp_path/'sharded_b.safetensors')) == 0


@pytest.mark.gpu
@needs_colossalai
def test_gemini_trains_and_round_trips(tmp_path):
    epochs = 16
    recs = _torchrun('gemini', tmp_path, nproc=_gpus(), epochs=epochs, timeout=300)
    steps = len(recs[0]['losses']) // epochs
    first = sum(sum(r['losses'][:steps]) for r in recs) / (steps * len(recs))
    last = sum(sum(r['losses'][-steps:]) for r in recs) / (steps * len(recs))
    assert last < 0.75 * first, (first, last)                             # fp16 Gemini learns
    _check_sharding(recs)
    _check_round_trip(recs, tmp_path)
    assert _max_diff(_weights(tmp_path/'sharded_a.safetensors'), _weights(tmp_path/'sharded_b.safetensors')) == 0
