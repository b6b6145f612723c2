"""Model size against SFT correctness and CPU time: for each grid point, pre-train (PT) and fine-tune (SFT, clean
demonstrations) a tiny LLaMA, then answer the held-out prompts greedily and score them with the gold reward.

Each grid point is `HIDDEN,LAYERS,HEADS,PT_EPOCHS,SFT_EPOCHS` with optional `FIELD=VALUE` overrides of PipelineConfig
after it, e.g. `256,6,8,2,6` or `256,6,8,2,6,sft_lr=1e-3`. One JSON record per point (resumable: points already in
--out are skipped); the records and a plot (correctness against parameters, colour = CPU minutes) are written atomically.
Usage: python benchmarks/size_curve.py [--grid 128,4,4,2,2 192,4,4,2,6 ...] [--out benchmarks/results/size_curve.json]
                                       [--plot PATH] [--threads N] [--eval-limit N] [--pt-cache DIR] [--include OTHER.json ...]
The measuring code is coati_nb.size_curve (nbs/14a_model_size.ipynb)."""
import argparse, os
from pathlib import Path

import torch

from coati_nb.dataset import read_rows
from coati_nb.size_curve import measure_point, parse_point, point_key, read_records, size_table, write_records
from coati_nb.tokenizer import load_tokenizer
from coati_nb.utils import atomic_write
from coati_nb.toy_task import toy_data_path

DEFAULT_GRID = ['128,4,4,2,2', '128,4,4,2,6', '128,4,4,2,12', '192,4,4,2,6', '256,4,8,2,6', '256,4,8,2,6,sft_lr=1e-3',
                '256,4,8,2,6,pt_lr=1e-3,sft_lr=1e-3']   # the points in benchmarks/results/size_curve.json


def plot(records: list[dict], path: Path):
    "Greedy correctness against parameters; colour and marker size = PT+SFT CPU minutes (PNG, small)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    xs = [r['parameters'] / 1e6 for r in records]; ys = [r['greedy_exact'] for r in records]
    mins = [r['cpu_s'] / 60 for r in records]
    sc = ax.scatter(xs, ys, c=mins, s=[40 + 6 * m for m in mins], cmap='viridis', edgecolors='k')
    seen = {}
    for r, x, y in sorted(zip(records, xs, ys), key=lambda t: -t[2]):   # points at one size: labels stacked downwards
        o = r['overrides']; n = seen[x] = seen.get(x, -1) + 1
        extra = ','.join(f'{k}={v:g}' for k, v in o.items() if k not in ('hidden_size', 'num_layers', 'num_heads', 'pt_epochs', 'sft_epochs'))
        ax.annotate(f"{o['hidden_size']}/{o['num_layers']}L sft{o['sft_epochs']}" + (f' {extra}' if extra else ''), (x, y), fontsize=7,
                    xytext=(-6, 8 - 11 * n), textcoords='offset points', ha='right')
    fig.colorbar(sc, ax=ax, label='PT+SFT CPU minutes')
    ax.set_xlim(0, max(xs) * 1.1); ax.set_ylim(max(0, min(ys) - 0.06), min(1, max(ys) + 0.06)); ax.set_xlabel('parameters (millions)'); ax.set_ylabel('SFT greedy exact-correct share')
    ax.set_title('SFT correctness on the held-out prompts vs model size', fontsize=10); ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format='png'); plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--grid', nargs='*', default=DEFAULT_GRID, help='points HIDDEN,LAYERS,HEADS,PT_EPOCHS,SFT_EPOCHS[,field=value...] (none: only merge --include and plot)')
    p.add_argument('--out', default='benchmarks/results/size_curve.json', help='JSON of records (resumed: done points are skipped)')
    p.add_argument('--plot', default=None, help='PNG to write (default: --out with .png; "none" to skip)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s own)')
    p.add_argument('--eval-limit', type=int, default=None, help='score only the first N held-out prompts')
    p.add_argument('--pt-cache', default=None, help='folder keeping PT models (and their measured time) for points that share PT')
    p.add_argument('--include', nargs='*', default=[], help='other record files (e.g. from a parallel run) to merge into --out')
    a = p.parse_args(argv)
    try: points = [parse_point(s) for s in a.grid]
    except ValueError as e: p.error(str(e))
    for name in ('threads', 'eval_limit'):
        if getattr(a, name) is not None and getattr(a, name) < 1: p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for f in a.include:
        if not Path(f).is_file(): p.error(f"--include {f}: no such file")
    if a.threads: torch.set_num_threads(a.threads)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    records = read_records(out)
    done = {r['key'] for r in records}
    for f in a.include:
        for r in read_records(Path(f)):
            if r['key'] not in done: records.append(r); done.add(r['key'])
    if a.include: write_records(out, records)
    tokenizer = load_tokenizer()
    instructions = [r['instruction'] for r in read_rows(toy_data_path('eval_prompts'))][:a.eval_limit]
    for over in points:
        key = point_key(over)
        if key in done: print(f'skip {key} (already in {out})'); continue
        print(f'run {key} ...', flush=True)
        rec = measure_point(over, tokenizer, instructions, Path(a.pt_cache) if a.pt_cache else None)
        records.append(rec); done.add(key); write_records(out, records)
        print(f"  {rec['parameters']/1e6:.2f}M params  cpu {rec['cpu_s']/60:.1f} min  wall {rec['wall_s']/60:.1f} min  "
              f"exact {rec['greedy_exact']:.3f}  correct {rec['greedy_correct']:.3f}  gold {rec['greedy_gold_reward']:+.3f}", flush=True)
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()} (each record keeps its own threads and load)")
    print(size_table(records))
    png = None if a.plot == 'none' else Path(a.plot or out.with_suffix('.png'))
    if png and records: plot(records, png); print(f'plot: {png}')
    return records


if __name__ == '__main__':
    main()
