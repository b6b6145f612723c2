"""Perplexity and bytes of a small LLaMA in fp32, fp16, RTN int8 / int4, GPTQ int4 and (where bitsandbytes runs)
bitsandbytes 8-bit / NF4, side by side.

A LLaMA of under a million parameters is trained on the bundled corpus (data/toy/corpus.jsonl, the bundled tokenizer)
for --steps AdamW steps (one to two and a half minutes on 2 CPU cores; --seconds caps it); the last --heldout fraction of the corpus
lines is held out. Each method then
gets the held-out perplexity, the bytes of the quantizable linear layers (every nn.Linear except lm_head) and the
total bytes of the model's state. The quantized models keep their other parts (embeddings, norms, lm_head) in fp16,
as GPTQ checkpoints do, and so do the bitsandbytes models (loaded with dtype=float16).
    python benchmarks/quant.py [--json OUT] [--steps 150] [--hidden 128] [--layers 2] [--group_size 128]"""
import argparse, copy, json, math, tempfile, time, warnings, logging

import torch
import transformers
from transformers import LlamaForCausalLM

from coati_nb.models import tiny_config
from coati_nb.quant import linear_bytes, load_bnb_model, quantize_model, state_bytes
from coati_nb.tokenizer import load_tokenizer
from coati_nb.utils import bundled_data_path, set_seed

def load_chunks(seq_len, heldout):
    "Token chunks (n, seq_len) of the corpus: (train, held-out), split by corpus line."
    tok = load_tokenizer()
    lines = [json.loads(l)['text'] for l in bundled_data_path('toy', 'corpus.jsonl').read_text(encoding='utf-8').splitlines() if l.strip()]
    cut = int(len(lines) * (1 - heldout))
    def chunks(texts):
        ids = [t for text in texts for t in tok(text)['input_ids'] + [tok.eos_token_id]]
        n = len(ids) // seq_len
        return torch.tensor(ids[:n * seq_len]).view(n, seq_len)
    return chunks(lines[:cut]), chunks(lines[cut:]), len(tok)

def train(model, data, max_steps, seconds, batch, lr, seed):
    "AdamW with warm-up and cosine decay over `steps` (stopping early after `seconds`); returns (steps, last loss)."
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    t0, step, loss = time.perf_counter(), 0, float('nan')
    while step < max_steps and time.perf_counter() - t0 < seconds:
        for group in opt.param_groups: group['lr'] = lr * min(1, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / max_steps))
        idx = torch.randint(0, len(data), (batch,), generator=g)
        out = model(data[idx], labels=data[idx])
        opt.zero_grad(); out.loss.backward(); opt.step()
        step, loss = step + 1, out.loss.item()
    return step, loss

@torch.no_grad()
def perplexity(model, data, batch=32):
    "exp(mean next-token NLL) over the held-out chunks."
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i:i + batch]
        logits = model(x).logits.float()                                 # (B, S, V)
        nll += torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction='sum').item()
        n += x[:, 1:].numel()
    return math.exp(nll / n)

def main(a):
    set_seed(a.seed)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(a.threads)
    train_data, eval_data, vocab = load_chunks(a.seq, a.heldout)
    eval_data = eval_data[:a.eval_chunks]
    cfg = tiny_config('llama', vocab_size=vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
                      max_positions=a.seq, intermediate_size=2 * a.hidden)
    model = LlamaForCausalLM(cfg)
    t0 = time.perf_counter()
    steps, loss = train(model, train_data, a.steps, a.seconds, a.batch, a.lr, a.seed)
    print(f"trained {sum(p.numel() for p in model.parameters()):,} parameters for {steps} steps "
          f"({time.perf_counter() - t0:.0f} s), last train loss {loss:.3f}; held-out: {eval_data.numel():,} tokens")
    model.eval()
    calib = [train_data[i:i + 16] for i in range(0, min(a.calib, len(train_data)), 16)]
    variants = {'fp32': lambda: model, 'fp16': lambda: copy.deepcopy(model).half(),
                'rtn8': lambda: quantize_model(copy.deepcopy(model), 8, -1, 'rtn').half(),
                'rtn4': lambda: quantize_model(copy.deepcopy(model), 4, a.group_size, 'rtn').half(),
                'gptq4': lambda: quantize_model(copy.deepcopy(model), 4, a.group_size, 'gptq', calib, act_order=a.act_order).half()}
    results, tmp = {}, tempfile.TemporaryDirectory()
    try:
        import bitsandbytes  # noqa: F401
        model.save_pretrained(tmp.name)
        logging.getLogger('bitsandbytes').setLevel(logging.ERROR)
        variants['bnb8'] = lambda: load_bnb_model(tmp.name, '8bit', dtype=torch.float16)
        variants['bnb4'] = lambda: load_bnb_model(tmp.name, 'nf4', dtype=torch.float16)
    except ImportError:
        print("bitsandbytes is not installed: skipping bnb8 / bnb4 (pip install 'coati_nb[quant]')")
    for name, make in variants.items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            m = make()
            ppl = perplexity(m, eval_data)
        results[name] = {'ppl': ppl, 'linear_bytes': linear_bytes(m), 'total_bytes': state_bytes(m),
                         'seconds': round(time.perf_counter() - t, 2)}
    tmp.cleanup()
    base = results['fp16']
    print(f"\n{'method':8s} {'ppl':>8s} {'Δppl':>7s} {'linear KiB':>11s} {'vs fp16':>8s} {'total KiB':>10s} {'vs fp16':>8s}")
    for name, r in results.items():
        print(f"{name:8s} {r['ppl']:8.3f} {round(r['ppl'] - base['ppl'], 3) + 0.0:+7.3f} {r['linear_bytes'] / 1024:11.1f} {r['linear_bytes'] / base['linear_bytes']:7.2f}x "
              f"{r['total_bytes'] / 1024:10.1f} {r['total_bytes'] / base['total_bytes']:7.2f}x")
    emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    print(f"\nembeddings + lm_head are {emb / sum(p.numel() for p in model.parameters()):.0%} of the parameters: "
          "they stay in fp16, so the total shrinks far less than the linear layers")
    if a.json:
        out = {'methods': results, 'config': {**vars(a), 'train_steps': steps, 'train_loss': loss,
                                               'n_params': sum(p.numel() for p in model.parameters())}}
        with open(a.json, 'w') as f: json.dump(out, f, indent=2)
        print(f"wrote {a.json}")
    return results

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--json', help='write the results to this JSON file')
    p.add_argument('--steps', type=int, default=150, help='training steps (default 150)')
    p.add_argument('--seconds', type=float, default=300, help='stop training early after this many seconds')
    p.add_argument('--hidden', type=int, default=128); p.add_argument('--layers', type=int, default=2)
    p.add_argument('--heads', type=int, default=4); p.add_argument('--seq', type=int, default=64)
    p.add_argument('--batch', type=int, default=16); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--group_size', type=int, default=128, help='GPTQ / RTN-4 group size (ColossalChat: --gptq_group_size)')
    p.add_argument('--act_order', action='store_true', help='GPTQ act-order')
    p.add_argument('--calib', type=int, default=128, help='calibration sequences for GPTQ')
    p.add_argument('--heldout', type=float, default=0.1, help='fraction of corpus lines held out')
    p.add_argument('--eval_chunks', type=int, default=96, help='held-out chunks of --seq tokens to score')
    p.add_argument('--threads', type=int, default=2); p.add_argument('--seed', type=int, default=0)
    main(p.parse_args())
