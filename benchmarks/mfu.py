"""SFT training FLOP/s against this machine's measured float32 matmul peak: the model FLOPs utilisation (MFU).

1. Peak: `torch.mm` of two n×n float32 matrices for a few n, best of several runs each, counted as 2·n³ FLOPs; the
   peak is the best of all sizes, measured separately for every thread count.
2. Throughput: `coati_nb.trainer.sft.SFTTrainer` (NaiveStrategy, AdamW, gradient clipping at 1.0, as `run_sft`) on the
   first batches of the bundled SFT data, timed per optimizer step from the trainer's `on_step_end` callback;
   warm-up steps are dropped.
3. Model FLOPs per token (PaLM's MFU, Chowdhery et al. 2022, appendix B; the 6N term from Kaplan et al. 2020):
       6·N + 12·L·d·S
   N = parameters without the input token-embedding table (a lookup, not a matmul; the untied LM head is a matmul
   and is counted), L = layers, d = hidden size, S = the batch's padded sequence length. Every position of the
   padded (B, S) batch is counted, since the hardware computes them all; the share of real tokens is printed.
Every rate is given per wall second and per second of the process's CPU time (`time.process_time`, all threads): on
a machine shared with other jobs the wall figures fall with the load, the CPU-time ones much less (threads that spin
while waiting for a busy sibling still count, so the 2-thread CPU figure is a lower bound).

Two models: a ~20 M-parameter tiny LLaMA (hidden 512, 7 layers), where matmuls dominate, and the demo's default size
(`PipelineConfig()`: hidden 128, 4 layers), where per-operation overhead does.
    python benchmarks/mfu.py [--threads 1,2 --steps 8 --warmup 2 --json OUT]"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader

from coati_nb.dataset import DataCollatorForSupervisedDataset, SupervisedDataset
from coati_nb.models import family_class
from coati_nb.pipeline import PipelineConfig, tiny_llama_config
from coati_nb.strategies import NaiveStrategy
from coati_nb.tokenizer import load_tokenizer
from coati_nb.toy_task import toy_data_path
from coati_nb.trainer.base import Callback
from coati_nb.trainer.sft import SFTTrainer
from coati_nb.utils import atomic_write, count_parameters, set_seed

FORMULA = '6*N_non_embedding + 12*n_layers*d*seq per token (PaLM MFU, Chowdhery et al. 2022 app. B; 6N: Kaplan et al. 2020)'


def matmul_peak(sizes: list[int], repeats: int) -> dict:
    "Best float32 torch.mm FLOP/s for each n in `sizes` (2·n³ FLOPs per product) and the best of them, per wall and per CPU second."
    by, by_cpu = {}, {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)                                                     # warm-up
        best = best_cpu = float('inf')
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time(); torch.mm(a, b)
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        by[n], by_cpu[n] = 2 * n ** 3 / best, 2 * n ** 3 / max(best_cpu, 1e-9)
    return {'by_size': by, 'peak': max(by.values()), 'by_size_cpu': by_cpu, 'peak_cpu': max(by_cpu.values())}


def build_model(tok, hidden: int, layers: int, heads: int, max_len: int, seed: int = 0):
    "The pipeline's tiny LLaMA LM of this size, randomly initialised."
    set_seed(seed)
    cfg = PipelineConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, max_len=max_len)
    return family_class('llama', 'lm')(config=tiny_llama_config(tok, cfg))


def model_counts(model) -> dict:
    "Total parameters (count_parameters), the input-embedding table, and the N of the FLOPs formula."
    total = count_parameters(model)[1]
    emb = model.get_base_model().get_input_embeddings().weight.numel()
    return {'parameters': total, 'embedding': emb, 'non_embedding': total - emb}


class _StepTimes(Callback):
    "Wall time and process CPU time (all threads) of every optimizer step (from fit's start or the previous step's end)."
    def on_fit_start(self, trainer): self.t, self.c, self.times, self.cpu = time.perf_counter(), time.process_time(), [], []
    def on_step_end(self, trainer, step, metrics):
        now, c = time.perf_counter(), time.process_time()
        self.times.append(now - self.t); self.cpu.append(c - self.c); self.t, self.c = now, c


def sft_throughput(model, batches: list[dict], warmup: int, cfg: dict, n_non_emb: int) -> dict:
    "Train on `batches` (one optimizer step each); FLOP/s of the steps after `warmup` by the formula above."
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    timer = _StepTimes()
    SFTTrainer(model, NaiveStrategy(seed=0), opt, None, max_epochs=1, accumulation_steps=1, max_norm=1.0,
               callbacks=[timer]).fit(batches)
    if len(timer.times) != len(batches): raise RuntimeError(f"{len(batches)} batches gave {len(timer.times)} steps")
    flops = tokens = real = secs = cpu = 0.0
    for b, dt, dc in list(zip(batches, timer.times, timer.cpu))[warmup:]:
        B, S = b['input_ids'].shape
        flops += B * S * (6 * n_non_emb + 12 * cfg['layers'] * cfg['hidden'] * S)
        tokens += B * S; real += float(b['attention_mask'].sum()); secs += dt; cpu += dc
    return {'flops_per_s': flops / secs, 'flops_per_cpu_s': flops / max(cpu, 1e-9), 'tokens_per_s': tokens / secs,
            's_per_step': secs / (len(batches) - warmup), 'cpu_s_per_step': cpu / (len(batches) - warmup),
            'tokens_per_step': tokens / (len(batches) - warmup), 'real_token_share': real / tokens,
            'step_times': timer.times}


def _ints(p: argparse.ArgumentParser, s: str, flag: str) -> list[int]:
    "Comma-separated integers >= 1, or the parser's error naming `flag`."
    try: xs = [int(x) for x in s.split(',') if x.strip()]
    except ValueError: p.error(f"{flag} must be comma-separated integers, got {s!r}")
    if not xs or min(xs) < 1: p.error(f"{flag} must list integers >= 1, got {s!r}")
    return xs


def _load() -> str:
    try: return Path('/proc/loadavg').read_text().split()[0]
    except OSError: return 'n/a'


def parse_args(argv=None) -> argparse.Namespace:
    "The checked command line; the lists `threads`, `matmul_sizes` and `small` are parsed (an error names the flag)."
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--hidden', type=int, default=512, help='width of the large model')
    p.add_argument('--layers', type=int, default=7, help='layers of the large model')
    p.add_argument('--heads', type=int, default=8, help='heads of the large model')
    p.add_argument('--small', type=str, default='128,4,4', help="hidden,layers,heads of the small model (the demo's default)")
    p.add_argument('--max-len', type=int, default=80, help='longest SFT sample in tokens (the demo: 80)')
    p.add_argument('--batch-size', type=int, default=32, help='samples per step (the demo: 32)')
    p.add_argument('--steps', type=int, default=8, help='measured optimizer steps')
    p.add_argument('--warmup', type=int, default=2, help='steps run first and dropped')
    p.add_argument('--threads', type=str, default='1,2', help='torch thread counts to measure, comma-separated')
    p.add_argument('--matmul-sizes', type=str, default='256,512,1024,2048', help='n of the n×n matmuls of the peak')
    p.add_argument('--repeats', type=int, default=5, help='runs per matmul size (the best is kept)')
    p.add_argument('--json', type=str, default=None, help='write the results here')
    a = p.parse_args(argv)
    a.threads, a.matmul_sizes = _ints(p, a.threads, '--threads'), _ints(p, a.matmul_sizes, '--matmul-sizes')
    a.small = _ints(p, a.small, '--small')
    if len(a.small) != 3: p.error(f"--small must be hidden,layers,heads, got {a.small}")
    for k in ('hidden', 'layers', 'heads', 'max_len', 'batch_size', 'steps', 'repeats'):
        if getattr(a, k) < 1: p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if a.warmup < 0: p.error(f"--warmup must be >= 0, got {a.warmup}")
    for name, (h, nh) in {'--hidden/--heads': (a.hidden, a.heads), '--small': (a.small[0], a.small[2])}.items():
        if h % nh: p.error(f"{name}: hidden size {h} is not divisible by {nh} heads")
    return a


def main(argv=None):
    a = parse_args(argv)
    threads, sizes, small = a.threads, a.matmul_sizes, a.small
    transformers.utils.logging.set_verbosity_error()
    tok = load_tokenizer()
    ds = SupervisedDataset(toy_data_path('sft'), tok, max_length=a.max_len)
    dl = DataLoader(ds, batch_size=a.batch_size, shuffle=False, collate_fn=DataCollatorForSupervisedDataset(tok))
    it, batches = iter(dl), []
    for _ in range(a.warmup + a.steps):
        try: batches.append(next(it))
        except StopIteration: raise SystemExit(f"--steps + --warmup: the SFT data has fewer than {a.warmup + a.steps} batches of {a.batch_size}")
    models = {'large': dict(hidden=a.hidden, layers=a.layers, heads=a.heads),
              'demo': dict(hidden=small[0], layers=small[1], heads=small[2])}
    load_before = _load()
    res = {'machine': {'cpus': os.cpu_count(), 'torch': torch.__version__, 'load_before': load_before},
           'formula': FORMULA, 'settings': {k: getattr(a, k) for k in ('max_len', 'batch_size', 'steps', 'warmup', 'repeats')},
           'peak': {}, 'models': {}}
    for name, c in models.items():
        res['models'][name] = {'config': c, **model_counts(build_model(tok, c['hidden'], c['layers'], c['heads'], a.max_len)),
                               'runs': {}}
    for t in threads:
        torch.set_num_threads(t)
        res['peak'][t] = matmul_peak(sizes, a.repeats)
        for name, c in models.items():
            m = res['models'][name]
            model = build_model(tok, c['hidden'], c['layers'], c['heads'], a.max_len)
            r = sft_throughput(model, batches, a.warmup, c, m['non_embedding'])
            r['mfu'] = r['flops_per_s'] / res['peak'][t]['peak']
            r['mfu_cpu'] = r['flops_per_cpu_s'] / res['peak'][t]['peak_cpu']
            m['runs'][t] = r
    res['machine']['load_after'] = _load()

    mc = res['machine']
    print(f"machine: {mc['cpus']} CPUs, torch {mc['torch']}, 1-min load {mc['load_before']} before / {mc['load_after']} after")
    print(f"FLOPs per token: {FORMULA}")
    for name, m in res['models'].items():
        c = m['config']
        print(f"{name}: hidden {c['hidden']}, {c['layers']} layers, {c['heads']} heads; parameters: {m['parameters']:,} "
              f"(input embedding {m['embedding']:,}, N non-embedding {m['non_embedding']:,})")
    b0 = batches[a.warmup:]
    print(f"SFT batches: {a.steps} measured after {a.warmup} warm-up, batch {a.batch_size}, mean padded length "
          f"{statistics.mean(b['input_ids'].shape[1] for b in b0):.1f}")
    print("wall: FLOP/s of elapsed time; CPU: FLOP per second of the process's CPU time (all threads), which other jobs on a")
    print("shared machine do not inflate. MFU = model FLOP/s / matmul peak, each of the same kind and thread count.")
    print(f"{'threads':>7s} {'model':>6s} {'s/step':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'peak':>7s} {'MFU':>6s} "
          f"{'CPU s/step':>10s} {'GFLOP/CPU-s':>11s} {'peak':>7s} {'MFU CPU':>7s}")
    for t in threads:
        pk = res['peak'][t]
        for name, m in res['models'].items():
            r = m['runs'][t]
            print(f"{t:7d} {name:>6s} {r['s_per_step']:8.3f} {r['tokens_per_s']:9.0f} {r['flops_per_s'] / 1e9:8.2f} "
                  f"{pk['peak'] / 1e9:7.1f} {r['mfu']:6.3f} {r['cpu_s_per_step']:10.3f} {r['flops_per_cpu_s'] / 1e9:11.2f} "
                  f"{pk['peak_cpu'] / 1e9:7.1f} {r['mfu_cpu']:7.3f}")
        print(f"{'':7s} matmul GFLOP/s by n (wall): " + ', '.join(f"{n}: {v / 1e9:.1f}" for n, v in pk['by_size'].items()))
        print(f"{'':7s} matmul GFLOP/CPU-s by n:    " + ', '.join(f"{n}: {v / 1e9:.1f}" for n, v in pk['by_size_cpu'].items()))
        lg, dm = res['models']['large']['runs'][t], res['models']['demo']['runs'][t]
        print(f"{'':7s} MFU ratio large/demo: wall {lg['mfu'] / dm['mfu']:.2f}, CPU {lg['mfu_cpu'] / dm['mfu_cpu']:.2f}")
    if len(threads) > 1:
        t0, t1 = threads[0], threads[-1]
        for name, m in res['models'].items():
            print(f"{name}: tokens/s with {t1} threads / with {t0}: {m['runs'][t1]['tokens_per_s'] / m['runs'][t0]['tokens_per_s']:.2f}")
    print(f"real (non-pad) share of the counted positions: {res['models']['large']['runs'][threads[0]]['real_token_share']:.2f}")
    if a.json:
        with atomic_write(Path(a.json)) as f: f.write_text(json.dumps(res, indent=1))


if __name__ == '__main__': main()
