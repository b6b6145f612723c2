"""Peak memory and time of chunked `log_probs_from_logits` against the direct `log_softmax(logits).gather(labels)`.

Each variant runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. glibc's malloc raises
its mmap threshold as large blocks are freed and then keeps freed heap pages resident, which would charge the chunked
variant for memory it no longer uses; the children therefore run with a fixed MALLOC_MMAP_THRESHOLD_.
    python benchmarks/log_probs.py [--batch 4 --seq 256 --vocab 32000 --repeats 3]"""
import argparse, json, os, subprocess, sys

CHILD = r'''
import json, resource, sys, time, torch, torch.nn.functional as F
from coati_nb.utils import log_probs_from_logits
B, S, V, reps, how = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
logits = torch.randn(B, S, V); labels = torch.randint(0, V, (B, S))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
for _ in range(reps):
    if how == 'direct': out = F.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    else: out = log_probs_from_logits(logits, labels)
dt = (time.perf_counter() - t0) / reps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (peak - before) / 1024, "seconds": dt, "checksum": float(out.sum())}))
'''

def run(how, a):
    out = subprocess.run([sys.executable, '-c', CHILD, str(a.batch), str(a.seq), str(a.vocab), str(a.repeats), how],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'}).stdout
    return json.loads(out)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--batch', type=int, default=4); p.add_argument('--seq', type=int, default=256)
    p.add_argument('--vocab', type=int, default=32000); p.add_argument('--repeats', type=int, default=3)
    a = p.parse_args()
    d, c = run('direct', a), run('chunked', a)
    logits_mib = a.batch * a.seq * a.vocab * 4 / 2**20
    print(f"logits (B={a.batch}, S={a.seq}, V={a.vocab}) fp32: {logits_mib:.0f} MiB")
    print(f"{'variant':10s} {'extra peak MiB':>15s} {'seconds':>9s}")
    for name, r in (('direct', d), ('chunked', c)):
        print(f"{name:10s} {r['extra_mib']:15.1f} {r['seconds']:9.3f}")
    print(f"ratio chunked/direct: memory {c['extra_mib']/max(d['extra_mib'],1e-9):.2f}x, time {c['seconds']/d['seconds']:.2f}x")
    assert abs(d['checksum'] - c['checksum']) < 1e-2 * abs(d['checksum']), 'the two variants disagree'
