"""Load test of the chat server: N concurrent clients for M seconds against a loopback `coati_nb_serve` that this
script starts itself (the built-in tiny model unless a model folder is given), every request a streamed
/v1/chat/completions. Prints p50/p95 latency and time to first token, tokens/s and the error count (429s included).
Besides them, --quitters clients hang up mid-request, in turn a streamed one after its first piece and a plain one
after --hang_up seconds of waiting; their hang-ups are not errors, but anything else they get is, and so is a server
that has not gone idle (nothing running, nothing queued) soon after every client left.

Bounded: clients send no new request after M seconds, every request has a client timeout, and the server is stopped
at the end; the exit status is 1 when any request failed.
    python benchmarks/serve_load.py [MODEL] [--clients 8 --quitters 4 --seconds 30 --max_tokens 32 --max_running 2
                                             --max_waiting 16 --hang_up 0.2]"""
import argparse, json, math, os, queue, subprocess, sys, threading, time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def start_server(a) -> tuple[subprocess.Popen, str]:
    "Start serve_cli on a free loopback port; return the process and its URL."
    cmd = [sys.executable, '-c', 'from coati_nb.serve import serve_cli; serve_cli()', *([a.model] if a.model else []),
           '--port', '0', '--max_new_tokens', str(a.max_tokens), '--max_running', str(a.max_running),
           '--max_waiting', str(a.max_waiting), '--timeout', str(a.timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'})
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    try: first = lines.get(timeout=180)
    except queue.Empty: first = ''
    if 'serving' not in first:
        proc.kill(); sys.exit(f"the server did not start: {first!r}")
    return proc, first.split(' on ')[-1].strip()


def one_request(http: httpx.Client, body: dict) -> dict:
    "One streamed chat completion: status, latency, time to first token, completion tokens."
    t0, first, tokens = time.perf_counter(), None, 0
    with http.stream('POST', '/v1/chat/completions', json=body) as r:
        if r.status_code != 200:
            r.read()
            return {'ok': False, 'status': r.status_code}
        for line in r.iter_lines():
            if not line.startswith('data: ') or line == 'data: [DONE]': continue
            chunk = json.loads(line[6:])
            if 'error' in chunk: return {'ok': False, 'status': 'stream error: ' + chunk['error'].get('code', '?')}
            if chunk.get('usage'): tokens = chunk['usage']['completion_tokens']
            if first is None and chunk['choices'] and chunk['choices'][0]['delta'].get('content'):
                first = time.perf_counter() - t0
    return {'ok': True, 'latency': time.perf_counter() - t0, 'ttft': first, 'tokens': tokens}


def client(url: str, end: float, a, results: list, lock: threading.Lock, i: int):
    "Send requests back to back until `end`."
    body = {'messages': [{'role': 'user', 'content': f'client {i}: 你好，请数一数：猫、狗、鱼。'}], 'max_tokens': a.max_tokens,
            'stream': True, 'stream_options': {'include_usage': True}}
    with httpx.Client(base_url=url, timeout=a.timeout + 30) as http:
        while time.perf_counter() < end:
            try: res = one_request(http, body)
            except Exception as e: res = {'ok': False, 'status': type(e).__name__}
            with lock: results.append(res)
            if not res['ok']: time.sleep(0.1)                                  # no hot loop of refused requests


def quitter(url: str, end: float, a, results: list, lock: threading.Lock, i: int):
    "Send requests back to back until `end`, hanging up on each before its answer is complete."
    body = {'messages': [{'role': 'user', 'content': f'quitter {i}: 请从一数到一百。'}], 'max_tokens': a.max_tokens}
    with httpx.Client(base_url=url, timeout=a.timeout + 30) as http:
        n = 0
        while time.perf_counter() < end:
            n += 1
            try:
                if n % 2:                                    # streamed: leave after the first piece of text
                    with http.stream('POST', '/v1/chat/completions', json={**body, 'stream': True}) as r:
                        res = {'ok': r.status_code == 200, 'status': r.status_code, 'kind': 'streamed'}
                        if r.status_code == 200:
                            for line in r.iter_lines():
                                if '"content":' in line and '"content": ""' not in line and '"content":""' not in line: break
                        else: r.read()
                else:                                        # plain: give up waiting after --hang_up seconds
                    try:
                        r = http.post('/v1/chat/completions', json=body, timeout=httpx.Timeout(a.timeout + 30, read=a.hang_up))
                        res = {'ok': r.status_code == 200, 'status': r.status_code, 'kind': 'finished first'}
                    except httpx.ReadTimeout: res = {'ok': True, 'status': 'hung up', 'kind': 'plain'}
            except Exception as e: res = {'ok': False, 'status': type(e).__name__}
            with lock: results.append(res)
            if not res['ok']: time.sleep(0.1)


def wait_idle(url: str, within: float) -> dict:
    "Poll /health until nothing runs or waits (or `within` seconds pass); return the last answer."
    end = time.perf_counter() + within
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            h = http.get('/health').json()
            if (h['running'], h['waiting']) == (0, 0) or time.perf_counter() > end: return h
            time.sleep(0.05)


def pct(xs: list[float], q: float) -> float:
    "Nearest-rank percentile."
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)] if xs else float('nan')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', nargs='?', default=None, help='a local model folder (default: the built-in tiny model)')
    p.add_argument('--clients', type=int, default=8); p.add_argument('--seconds', type=float, default=30)
    p.add_argument('--max_tokens', type=int, default=32)
    p.add_argument('--max_running', type=int, default=2); p.add_argument('--max_waiting', type=int, default=16)
    p.add_argument('--timeout', type=float, default=60)
    p.add_argument('--quitters', type=int, default=4, help='clients that hang up mid-request')
    p.add_argument('--hang_up', type=float, default=0.2, help='seconds a quitting plain request waits before hanging up')
    a = p.parse_args(argv)
    proc, url = start_server(a)
    try:
        results, lock = [], threading.Lock()
        with httpx.Client(base_url=url, timeout=30) as http:                 # warm up (first-call allocations)
            one_request(http, {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 4, 'stream': True})
        t0 = time.perf_counter()
        quits = []
        threads = [threading.Thread(target=client, args=(url, t0 + a.seconds, a, results, lock, i)) for i in range(a.clients)]
        threads += [threading.Thread(target=quitter, args=(url, t0 + a.seconds, a, quits, lock, i)) for i in range(a.quitters)]
        for t in threads: t.start()
        for t in threads: t.join()
        wall = time.perf_counter() - t0
        health = wait_idle(url, 60)                                         # every client has left: it must go idle
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill()
    ok = [r for r in results if r['ok']]
    errors = [str(r['status']) for r in results + quits if not r['ok']]
    idle = (health['running'], health['waiting']) == (0, 0)
    if not idle: errors.append('server busy after the clients left')
    lat, ttft = [r['latency'] for r in ok], [r['ttft'] for r in ok if r['ttft'] is not None]
    tokens = sum(r['tokens'] for r in ok)
    print(f"server: {a.model or 'built-in tiny model'}, K={a.max_running} running, Q={a.max_waiting} waiting, "
          f"max_tokens={a.max_tokens}; {a.clients} clients + {a.quitters} quitters for {a.seconds:g} s (wall {wall:.1f} s)")
    print(f"requests   {len(results):6d}   ok {len(ok)}   errors {len(errors)}"
          + (f"  ({', '.join(f'{s}: {errors.count(s)}' for s in sorted(set(errors)))})" if errors else ''))
    print(f"latency    p50 {pct(lat, .5):6.2f} s   p95 {pct(lat, .95):6.2f} s")
    print(f"1st token  p50 {pct(ttft, .5):6.2f} s   p95 {pct(ttft, .95):6.2f} s")
    print(f"throughput {tokens / wall:8.1f} tokens/s   {len(ok) / wall:.2f} requests/s")
    kinds = [r.get('kind') for r in quits if r['ok']]
    print(f"quitters   {len(quits):6d}   hung up: streamed {kinds.count('streamed')}, plain {kinds.count('plain')}"
          f" (plain answers finished first: {kinds.count('finished first')})")
    print(f"afterwards running {health['running']} waiting {health['waiting']} ({'idle' if idle else 'NOT idle'}); "
          f"{health.get('started', '?')} generations started, {health.get('generated_tokens', '?')} tokens generated")
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
