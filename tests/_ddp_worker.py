"""One rank of the multi-process strategy tests; tests/test_ddp.py launches it with torchrun:

    python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_worker.py MODE OUT_DIR [EPOCHS]

MODE is `ddp` (DDPStrategy), `fsdp`, `fsdp_grad_op`, `fsdp_hybrid`, `fsdp_none`, `fsdp_offload` (FSDPStrategy, FSDP2 on
gloo), `colossalai` (ColossalAIStrategy stage 0 = TorchDDPPlugin, CPU-capable) or, on GPUs, `zero2`, `zero2_cpu`, `gemini`. Every rank trains a tiny next-token model through the Strategy interface, records
the sample indices and losses of every step, exercises the collectives and the checkpoint round trip, and writes
OUT_DIR/rank{r}.json; rank 0 also writes the checkpoints the test reads. Importing this file has no side effects:
the test uses TinyLM, make_data, lm_loss and the constants to train the single-process reference."""
import json, os, sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

V, T, N, BATCH, LR, SEED = 16, 6, 16, 2, 1e-2, 42   # vocab, length, samples, per-rank batch, AdamW lr, strategy seed


class TinyLM(nn.Module):
    "Embedding -> MLP -> vocabulary logits: a language model small enough for 2 CPU processes."
    def __init__(self, vocab: int = V, dim: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):                       # (B, T) -> (B, T, V)
        return self.head(self.mlp(self.emb(ids)))


def make_data() -> torch.Tensor:
    "N sequences of consecutive integers (mod V) from random starts, plus noise tokens: (N, T)."
    g = torch.Generator().manual_seed(0)
    seq = (torch.randint(0, V, (N, 1), generator=g) + torch.arange(T)) % V
    noise = torch.rand(N, T, generator=g) < 0.2
    return torch.where(noise, torch.randint(0, V, (N, T), generator=g), seq)


def lm_loss(model, ids):
    "Mean next-token cross entropy of a batch (every sequence has T tokens, so batch means compose exactly)."
    logits = model(ids).float()                   # (B, T, V)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def _make_strategy(mode: str):
    from coati_nb.strategies import ColossalAIStrategy, DDPStrategy, FSDPStrategy
    if mode == 'ddp': return DDPStrategy(seed=SEED)
    if mode == 'fsdp': return FSDPStrategy(seed=SEED)
    if mode == 'fsdp_offload': return FSDPStrategy(seed=SEED, cpu_offload=True)
    if mode.startswith('fsdp_'): return FSDPStrategy(seed=SEED, sharding=mode[len('fsdp_'):])
    if mode == 'colossalai': return ColossalAIStrategy(stage=0, precision='fp32', seed=SEED)
    if mode == 'zero2': return ColossalAIStrategy(stage=2, precision='fp32', seed=SEED)
    if mode == 'zero2_cpu': return ColossalAIStrategy(stage=2, precision='fp32', placement_policy='cpu', seed=SEED)
    if mode == 'gemini': return ColossalAIStrategy(stage=3, precision='fp16', placement_policy='cuda', seed=SEED, initial_scale=2**8)
    raise SystemExit(f"unknown mode {mode!r}")


def _step(strategy, model, optim, ids):
    loss = lm_loss(model, ids)
    strategy.backward(loss, model, optim)
    strategy.optimizer_step(optim)
    strategy.zero_grad(optim)
    return loss.item()


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optim(a, b) -> bool:
    sa, sb = a.state_dict()['state'], b.state_dict()['state']
    return sa.keys() == sb.keys() and all(_same_state(sa[k], sb[k]) for k in sa)


def _describe_plugin(plugin) -> dict:
    "What the colossalai plugin was configured with (colossalai renames LowLevelZeroPlugin's class, so test isinstance)."
    from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin
    if isinstance(plugin, LowLevelZeroPlugin):
        kw = plugin.zero_optim_kwargs
        return {'plugin': 'LowLevelZeroPlugin', 'stage': plugin.stage, 'precision': plugin.precision,
                'partition_grad': kw['partition_grad'], 'cpu_offload': kw['cpu_offload'],
                'reduce_bucket_size': kw['reduce_bucket_size'], 'overlap_communication': kw['overlap_communication']}
    if isinstance(plugin, GeminiPlugin):
        c = plugin.gemini_config
        return {'plugin': 'GeminiPlugin', 'placement_policy': c['placement_policy'], 'offload_param_frac': c['offload_param_frac'],
                'offload_optim_frac': c['offload_optim_frac'], 'search_range_m': c['search_range_m'], 'pin_memory': c['pin_memory']}
    return {'plugin': type(plugin).__name__}


def main(mode: str, out: Path, epochs: int = 2):
    strategy = _make_strategy(mode)
    rank, world = strategy.rank, strategy.world_size
    dev = torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')
    with strategy.model_init_context(): model = TinyLM()
    full_numel = sum(p.numel() for p in model.parameters())
    model, optim = strategy.prepare((model, torch.optim.AdamW(model.parameters(), lr=LR)))
    data = make_data()
    loader = strategy.setup_dataloader(TensorDataset(torch.arange(N), data), batch_size=BATCH)
    rec = {'mode': mode, 'rank': rank, 'world_size': world, 'indices': [], 'losses': [], 'full_numel': full_numel,
           'local_numel': sum((p.to_local() if hasattr(p, 'to_local') else p).numel() for p in model.parameters())}

    # 1. training: indices and loss of every step
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        rec['indices'].append([])
        for idx, ids in loader:
            rec['indices'][-1].append(idx.tolist())
            rec['losses'].append(_step(strategy, model, optim, ids.to(dev)))

    # 2. collectives
    mine = {'x': float(rank + 1), 't': torch.tensor([rank, 10 * rank])}
    rec['reduce'] = {op: {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in strategy.all_reduce(mine, op).items()}
                     for op in ('mean', 'sum', 'max', 'min')}
    rec['gather'] = strategy.all_gather(torch.tensor([rank, rank])).tolist()

    # 3. checkpoint round trip: rank 0 writes, every rank loads into a differently initialised model
    strategy.save_model(model, out/'model.safetensors')
    strategy.save_optimizer(optim, out/'optim.pt', only_rank0=True)
    torch.manual_seed(1000 + rank)
    with strategy.model_init_context(): fresh = TinyLM()
    fresh, fresh_optim = strategy.prepare((fresh, torch.optim.AdamW(fresh.parameters(), lr=LR)))
    strategy.load_model(fresh, out/'model.safetensors')
    strategy.load_optimizer(fresh_optim, out/'optim.pt')
    if mode in ('ddp', 'colossalai'):           # replicated parameters: compare directly
        rec['load_equal'] = _same_state(strategy.unwrap_model(model).state_dict(), strategy.unwrap_model(fresh).state_dict())
        rec['optim_equal'] = _same_optim(optim, fresh_optim)
    if mode.startswith('fsdp'):                 # sharded: compare the pieces each rank holds, and the gathered whole
        local = lambda m: {k: (v.to_local() if hasattr(v, 'to_local') else v) for k, v in m.state_dict().items()}
        rec['load_equal'] = _same_state(local(model), local(fresh))
        gathered = strategy.full_state_dict(model)
        rec['gathered_entries'] = len(gathered)               # rank 0 only: the remedy for the OOM while saving
        rec['gathered_equal'] = _same_state(gathered, strategy.full_state_dict(fresh))
    # one more step on both, on this rank's first batch: equal only if weights and Adam state were both restored
    ids = data[torch.tensor(rec['indices'][0][0])].to(dev)
    _step(strategy, model, optim, ids); _step(strategy, fresh, fresh_optim, ids)
    strategy.save_model(model, out/'after_a.safetensors')
    strategy.save_model(fresh, out/'after_b.safetensors')

    # 4. colossalai's sharded folders (only_rank0=False); colossalai 0.5.0 cannot load a sharded optimizer on CPU
    #    (its CPU accelerator has no synchronize()), so that part runs on GPUs only
    if mode != 'ddp' and not mode.startswith('fsdp'):
        torch.manual_seed(2000 + rank)
        with strategy.model_init_context(): other = TinyLM()
        other, other_optim = strategy.prepare((other, torch.optim.AdamW(other.parameters(), lr=LR)))
        strategy.save_model(other, out/'model_shards', only_rank0=False)  # a first folder, then replaced:
        strategy.save_model(model, out/'model_shards', only_rank0=False)  # loading must see the second one
        strategy.load_model(other, out/'model_shards')
        if torch.cuda.is_available():
            strategy.save_optimizer(optim, out/'optim_shards')      # default only_rank0=False: sharded folder
            strategy.load_optimizer(other_optim, out/'optim_shards')
            _step(strategy, model, optim, ids); _step(strategy, other, other_optim, ids)
            strategy.save_model(model, out/'sharded_a.safetensors')
        strategy.save_model(other, out/'sharded_b.safetensors')    # equals sharded_a (GPU) or after_a (CPU)

    # 5. the GPU-only strategies construct (no boost) on CPU too
    if mode == 'colossalai':
        from coati_nb.strategies import ColossalAIStrategy, strategy_from_name
        built = {'zero2': strategy_from_name('colossalai_zero2'), 'zero2_cpu': strategy_from_name('colossalai_zero2_cpu'),
                 'gemini': strategy_from_name('colossalai_gemini'), 'zero1_bf16': ColossalAIStrategy(stage=1, precision='bf16')}
        rec['plugins'] = {k: _describe_plugin(s.plugin) for k, s in built.items()}

    (out/f'rank{rank}.json').write_text(json.dumps(rec))
    strategy.barrier()


FSDP_VARIANTS = ('fsdp_grad_op', 'fsdp_hybrid', 'fsdp_none', 'fsdp_offload')

if __name__ == '__main__':
    mode, out, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2
    if mode == 'fsdp_variants':                 # every other sharding in one process group: OUT_DIR/<variant>/rank{r}.json
        for variant in FSDP_VARIANTS:
            (out/variant).mkdir(exist_ok=True)
            main(variant, out/variant, epochs)
    else: main(mode, out, epochs)
