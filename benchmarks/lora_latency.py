"""Generation latency of a LoRA model with the adapter unmerged (an extra low-rank branch in every linear layer)
against the same model merged into plain weights (W + (alpha/r)·B·A), side by side in one run.

The Alpaca-LoRA write-up reports unmerged LoRA inference as about 10x slower; how much it costs depends on the
model size, the rank, the batch and the device — this measures it for a given setting on this machine.
Usage: python benchmarks/lora_latency.py [--hidden 512 --layers 4 --rank 8 --batch 4 --new_tokens 32 --repeats 3 --json OUT]"""
import argparse, copy, json, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from coati_nb.generation import generate
from coati_nb.lora import LoraLinear, convert_to_lora_module, merge_lora_weights


def _timed(model, ids, new_tokens, repeats):
    generate(model, ids, max_new_tokens=2, do_sample=False)                 # warm-up
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        out = generate(model, ids, max_new_tokens=new_tokens, do_sample=False)[0]
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--hidden', type=int, default=512); p.add_argument('--layers', type=int, default=4)
    p.add_argument('--rank', type=int, default=8); p.add_argument('--batch', type=int, default=4)
    p.add_argument('--prompt', type=int, default=32); p.add_argument('--new_tokens', type=int, default=32)
    p.add_argument('--repeats', type=int, default=3); p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=a.prompt + a.new_tokens + 8)
    model = convert_to_lora_module(LlamaForCausalLM(cfg), a.rank).eval()
    with torch.no_grad():                                                     # a trained-looking, non-zero update
        for m in model.modules():
            if isinstance(m, LoraLinear): m.lora_B.normal_(0, 0.02)
    merged = merge_lora_weights(copy.deepcopy(model)).eval()
    n_lora = sum(isinstance(m, LoraLinear) for m in model.modules())
    ids = torch.randint(3, 2048, (a.batch, a.prompt))
    t_un, out_un = _timed(model, ids, a.new_tokens, a.repeats)
    t_me, out_me = _timed(merged, ids, a.new_tokens, a.repeats)
    same = torch.equal(out_un, out_me)
    rows = {'unmerged': t_un, 'merged': t_me}
    print(f"LLaMA hidden {a.hidden}, {a.layers} layers, LoRA rank {a.rank} on {n_lora} linear layers; "
          f"batch {a.batch}, prompt {a.prompt}, {a.new_tokens} new tokens, greedy, best of {a.repeats}")
    print('| LoRA | s per generate | tokens/s | vs merged |\n|---|---|---|---|')
    for k, t in rows.items(): print(f"| {k} | {t:.3f} | {a.batch * a.new_tokens / t:.0f} | {t / t_me:.2f}x |")
    print(f"same tokens: {same}")
    if a.json:
        with open(a.json, 'w') as f: json.dump({'args': vars(a), 'seconds': rows, 'same_tokens': same}, f, indent=1)
    return 0 if same else 1


if __name__ == '__main__':
    raise SystemExit(main())
