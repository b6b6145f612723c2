"""The chat server and the terminal chat end to end: the real `serve_cli` in a subprocess on a free loopback port,
talked to with the `openai` client (plain and streamed) and plain HTTP (httpx): bad requests get a 4xx with a message,
the K running + Q waiting limit answers 429 beyond that, disconnects (plain, streamed, queued) and timeouts free the
generation slot, a foreign Host / Origin / Content-Type is refused, slow bodies get 408 and slow or idle connections
are closed, a taken port is a one-line error, the SSE wire format is right; `chat_cli` driven through stdin; the web page driven in headless Debian chromium by playwright.
The models are tiny random LLaMAs with the bundled tokenizer, saved with save_pretrained into a temporary folder."""
import json, os, queue, shutil, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import CHROMIUM, launch, require_chromium
ENV = {**os.environ, 'PYTHONIOENCODING': 'utf-8', 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
USER = [{'role': 'user', 'content': '你好，请数到一百。'}]


class Server:
    "`serve_cli` in a subprocess on a free port (--port 0); the address is read from the line it prints."
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, '-c', 'from coati_nb.serve import serve_cli; serve_cli()',
                                      *args, '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, encoding='utf-8', env=ENV, cwd=ROOT)
        self.lines, self.stderr, self.url = queue.Queue(), [], None
        threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.stderr.append(l) for l in self.proc.stderr], daemon=True).start()

    def ready(self, startup=120) -> 'Server':
        "Wait for the 'serving ... on URL' line (servers start in parallel, so this is where the time goes)."
        if self.url: return self
        try: first = self.lines.get(timeout=startup)
        except queue.Empty: first = ''
        if 'serving' not in first:
            self.stop()
            raise RuntimeError(f"the server did not start: {first!r}\n{''.join(self.stderr)}")
        self.url = first.split(' on ')[-1].strip()
        # no pooled connections: a server with a 1 s keep-alive could close one just as a request reuses it
        self.http = httpx.Client(base_url=self.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        return self

    def health(self) -> dict: return self.http.get('/health').json()

    def wait_idle(self, within: float) -> dict:
        "Poll /health until nothing runs or waits; return the last answer."
        end = time.monotonic() + within
        while True:
            h = self.health()
            if (h['running'], h['waiting']) == (0, 0) or time.monotonic() > end: return h
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


def _save_tiny(folder: Path, max_positions: int) -> Path:
    from coati_nb.inference import tiny_chat_model
    model, tok = tiny_chat_model(max_positions=max_positions)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp('tiny') / 'actor', 4096)


@pytest.fixture(scope='module')
def servers(model_dir):
    "The servers of this module, started at once: the main one, one with a 1 s timeout, the built-in model."
    started = {'main': Server(str(model_dir), '--max_new_tokens', '1000', '--max_prompt_tokens', '256', '--max_running', '1',
                              '--max_waiting', '1', '--max_body_bytes', '8192', '--timeout', '30', '--model_name', 'tiny-test',
                              '--allowed_host', 'chat.example'),
               'timeout': Server(str(model_dir), '--timeout', '1', '--context_len', '1000000', '--max_new_tokens', '500000', '--body_timeout', '1',
                                 '--keep_alive', '1', '--header_timeout', '1'),
               'endless': Server(str(model_dir), '--context_len', '1000000', '--max_new_tokens', '500000',
                                 '--max_running', '1', '--max_waiting', '2', '--timeout', '100000')}
    if Path(CHROMIUM).is_file(): started['builtin'] = Server('--max_new_tokens', '60')
    yield started
    for s in started.values(): s.stop()


@pytest.fixture(scope='module')
def server(servers): return servers['main'].ready()


@pytest.fixture(scope='module')
def oai(server):
    openai = pytest.importorskip('openai')
    return openai.OpenAI(base_url=server.url + '/v1', api_key='unused', max_retries=0, timeout=30)


def test_binds_loopback_by_default(server):
    assert server.url.startswith('http://127.0.0.1:'), server.url
    assert server.health()['max_running'] == 1


# --- the openai client ---------------------------------------------------------------------------------------------

def test_openai_models(oai):
    assert [m.id for m in oai.models.list().data] == ['tiny-test']


def test_openai_plain_and_streamed_agree(oai):
    from coati_nb.tokenizer import load_tokenizer
    from coati_nb.toy_task import format_prompt
    kw = dict(model='tiny-test', messages=USER, max_tokens=12, seed=11, temperature=0.8)
    r = oai.chat.completions.create(**kw)
    answer, choice = r.choices[0].message.content, r.choices[0]
    assert isinstance(answer, str) and answer and choice.message.role == 'assistant'
    assert choice.finish_reason in ('stop', 'length') and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.prompt_tokens == len(load_tokenizer()(format_prompt(USER[0]['content']))['input_ids'])
    chunks = list(oai.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == 'assistant'
    assert ''.join(c.choices[0].delta.content or '' for c in chunks) == answer     # same seed, same answer
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert len({c.id for c in chunks}) == 1 and all(c.object == 'chat.completion.chunk' for c in chunks)


def test_openai_errors(oai):
    import openai
    with pytest.raises(openai.BadRequestError, match="above this server's cap of 1000"):
        oai.chat.completions.create(model='tiny-test', messages=USER, max_tokens=1001)
    with pytest.raises(openai.NotFoundError, match='is not served here'):
        oai.chat.completions.create(model='/etc/passwd', messages=USER, max_tokens=2)


# --- plain HTTP ----------------------------------------------------------------------------------------------------

def test_sse_wire_format(server):
    body = {'messages': USER, 'max_tokens': 6, 'stream': True, 'stream_options': {'include_usage': True}}
    with server.http.stream('POST', '/v1/chat/completions', json=body) as r:
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/event-stream')
        raw = r.read().decode('utf-8')
    assert raw.endswith('data: [DONE]\n\n')
    events = raw[:-2].split('\n\n')
    assert all(line.startswith('data: ') for e in events for line in e.split('\n')), raw
    chunks = [json.loads(e[len('data: '):]) for e in events[:-1]]
    assert chunks[-1]['choices'] == [] and chunks[-1]['usage']['completion_tokens'] <= 6
    assert chunks[-2]['choices'][0]['finish_reason'] in ('stop', 'length')
    assert all(set(c['choices'][0]['delta']) <= {'role', 'content'} for c in chunks[:-1])


def test_colossalchat_endpoints(server):
    from coati_nb.serve import iter_sse
    hist = {'max_new_tokens': 8, 'temperature': 0.0,
            'history': [{'instruction': 'Add 3 and 15.', 'response': '18'}, {'instruction': '再加 2 呢？', 'response': ''}]}
    r = server.http.post('/generate', json=hist)
    assert r.status_code == 200 and isinstance(r.json(), str)
    with server.http.stream('POST', '/generate/stream', json=hist) as s:
        events = list(iter_sse(s.iter_lines()))
    assert events[-1] == {'event': 'end', 'data': ''} and {e['event'] for e in events[:-1]} <= {'generate'}
    assert ''.join(e['data'] for e in events[:-1]) == r.json()          # greedy: the same answer both ways


def _chunked(data: bytes, size=1000):
    for i in range(0, len(data), size): yield data[i:i + size]

BAD = [  # (request body, expected status, words the error message must contain)
    (b'{"messages": [', 400, 'not valid JSON'),
    (b'"just a string"', 400, 'must be a JSON object'),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}', 400, 'not valid JSON'),
    (b'\xff\xfe{}', 400, 'not valid JSON'),
    ({}, 400, 'messages'),
    ({'messages': 'hello'}, 400, 'messages'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'temperature': 2.5}, 400, 'temperature'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'top_k': -1}, 400, 'top_k'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'max_tokens': 0}, 400, 'max_tokens'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'max_tokens': True}, 400, 'max_tokens'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'stream': 'yes'}, 400, 'stream'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'n': 3}, 400, 'n=1'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'tools': [{'type': 'function'}]}, 400, 'tools'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'stop': ['a', 'b', 'c', 'd', 'e']}, 400, 'stop'),
    ({'messages': [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': 'file:///etc/passwd'}]}]}, 400, 'content'),
    ({'messages': [{'role': 'assistant', 'content': 'x'}]}, 400, "role 'assistant'"),
    ({'messages': [{'role': 'user', 'content': '很长的问题' * 200}]}, 400, 'without any history'),
    ({'messages': [{'role': 'user', 'content': 'x' * 9000}]}, 413, 'larger than 8192 bytes'),
    # degenerate sampling values: each names its parameter (they used to reach the sampler and give a 500)
    ({'messages': [{'role': 'user', 'content': 'x'}], 'repetition_penalty': 1e-40}, 400, 'repetition_penalty'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'repetition_penalty': 0}, 400, 'repetition_penalty'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'repetition_penalty': -2.0}, 400, 'repetition_penalty'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'temperature': 1e-40}, 400, 'temperature'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'temperature': -1.0}, 400, 'temperature'),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', 400, 'temperature'),      # inf
    (b'{"messages": [{"role": "user", "content": "x"}], "repetition_penalty": 1e999}', 400, 'repetition_penalty'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'top_p': 0}, 400, 'top_p'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'top_p': 1.5}, 400, 'top_p'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'seed': -1}, 400, 'seed'),
    # invalid Unicode: a lone surrogate, named by where it is
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, 'messages[0].content is not valid Unicode'),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": ["ok", "a\\udfff"]}', 400, 'stop[1] is not valid Unicode'),
    (b'[' * 5000, 400, 'nested too deeply'),
]

@pytest.mark.parametrize('body,status,words', BAD, ids=range(len(BAD)))
def test_bad_request_gets_4xx(server, body, status, words):
    kw = {'content': body, 'headers': {'content-type': 'application/json'}} if isinstance(body, bytes) else {'json': body}
    r = server.http.post('/v1/chat/completions', **kw)
    assert r.status_code == status, r.text
    assert words in r.json()['error']['message'], r.json()


def test_generate_rejects_degenerate_sampling(server):
    for param, value in [('repetition_penalty', 1e-40), ('temperature', 1e-40), ('top_k', -3), ('top_p', 2)]:
        r = server.http.post('/generate', json={'max_new_tokens': 4, 'history': [{'instruction': 'a'}], param: value})
        assert r.status_code == 400 and r.json()['error']['param'] == param, r.text
    r = server.http.post('/generate', content=b'{"max_new_tokens": 4, "history": [{"instruction": "\\ud800"}]}',
                         headers={'content-type': 'application/json'})
    assert r.status_code == 400 and r.json()['error']['param'] == 'history[0].instruction', r.text


def test_more_4xx(server, tmp_path):
    http = server.http
    big = json.dumps({'messages': [{'role': 'user', 'content': 'x' * 9000}]}).encode()
    r = http.post('/v1/chat/completions', content=_chunked(big), headers={'content-type': 'application/json'})
    assert r.status_code == 413 and 'larger than' in r.json()['error']['message']   # no Content-Length: counted while read
    secret = tmp_path / 'secret.txt'
    secret.write_text('TOP-SECRET-CONTENT')
    r = http.post('/v1/chat/completions', json={'messages': USER, 'model': str(secret)})   # `model` is a name, never a path
    assert r.status_code == 404 and 'TOP-SECRET' not in r.text
    assert http.post('/generate', json={'max_new_tokens': 4, 'history': []}).status_code == 400
    r = http.post('/generate', json={'max_new_tokens': 4, 'history': [{'instruction': 'a', 'response': 'b'}]})
    assert r.status_code == 400 and r.json()['error']['param'] == 'history'
    assert http.post('/generate/stream', json={'max_new_tokens': 5000, 'history': [{'instruction': 'a'}]}).status_code == 400
    assert http.get('/v1/chat/completions').status_code == 405
    assert http.get('/no/such/page').json()['error']['message'] == 'Not Found'
    assert server.health()['status'] == 'ok'                                # still serving


def test_concurrency_limit_429_and_disconnect(server):
    "K=1 running and Q=1 waiting: a third request is refused at once; a closed stream hands its slot on and stops."
    long = {'messages': USER, 'max_tokens': 1000, 'temperature': 0, 'stream': True}
    got, let_b_go = {}, threading.Event()
    def b():
        with httpx.Client(base_url=server.url, timeout=60) as c, c.stream('POST', '/v1/chat/completions', json=long) as r:
            got['b_status'], lines = r.status_code, r.iter_lines()     # keep the iterator: dropping it closes the stream
            got['b_first'] = next(lines)
            let_b_go.wait(30)
    with httpx.Client(base_url=server.url, timeout=30) as a_http, a_http.stream('POST', '/v1/chat/completions', json=long) as a:
        a_lines = a.iter_lines()
        assert a.status_code == 200 and next(a_lines).startswith('data: ')    # A runs
        tb = threading.Thread(target=b); tb.start()
        end = time.monotonic() + 60                                            # a bound for a hung server, not a race
        while server.health()['waiting'] != 1 and time.monotonic() < end: time.sleep(0.02)
        h = server.health()
        assert (h['running'], h['waiting']) == (1, 1) and 'b_status' not in got, (h, got)   # B waits in the queue
        r = server.http.post('/v1/chat/completions', json={'messages': USER, 'max_tokens': 4})
        assert r.status_code == 429, r.text                       # refused, not queued (a queued one would get 200)
        assert 'retry later' in r.json()['error']['message'] and r.headers['retry-after'] == '1'
    end = time.monotonic() + 60                                               # A hung up mid-answer ...
    while 'b_first' not in got and time.monotonic() < end: time.sleep(0.02)
    h = server.health()
    assert got.get('b_status') == 200 and got['b_first'].startswith('data: '), got   # ... so its slot went to B
    assert (h['running'], h['waiting']) == (1, 0), h
    let_b_go.set(); tb.join(30)
    h = server.wait_idle(within=60)                                           # B hung up too: nothing runs
    assert (h['running'], h['waiting']) == (0, 0), h


def test_request_timeout(servers):
    "A generation that outlasts --timeout is stopped: 504 for a plain request, an error event then [DONE] for a stream."
    s = servers['timeout'].ready()
    body = {'messages': USER, 'max_tokens': 500000, 'temperature': 0}     # no machine writes that in 1 s
    r = s.http.post('/v1/chat/completions', json=body)
    assert r.status_code == 504 and r.json()['error']['code'] == 'timeout', r.text
    with s.http.stream('POST', '/v1/chat/completions', json={**body, 'stream': True}) as st:
        events = [l for l in st.iter_lines() if l]
    assert events[-1] == 'data: [DONE]' and json.loads(events[-2][6:])['error']['code'] == 'timeout'
    h = s.wait_idle(within=60)
    assert (h['running'], h['waiting']) == (0, 0), h


def _raw_post(url: str, path: str, body: dict, send_body: bool = True) -> socket.socket:
    "A POST on a plain socket (so the test decides when the connection closes); the caller closes it."
    host, port = url.split('//')[1].rsplit(':', 1)
    raw = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(f'POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n'
                 f'Content-Length: {len(raw)}\r\n\r\n'.encode() + (raw if send_body else raw[:len(raw) // 2]))
    return sock


def _wait_health(server, ok, within: float = 60) -> dict:
    "Poll /health until `ok(health)` holds (the bound only catches a hung server); return the last answer."
    end = time.monotonic() + within
    while True:
        h = server.health()
        if ok(h) or time.monotonic() > end: return h
        time.sleep(0.05)


def test_disconnect_cancels_plain_and_queued_requests(servers):
    "A plain (non-streamed) request stops when its client hangs up; a queued one whose client left never runs."
    s = servers['endless'].ready()               # greedy answers of up to 500000 tokens: they never end on their own
    body = {'messages': USER, 'max_tokens': 500000, 'temperature': 0}
    a = _raw_post(s.url, '/v1/chat/completions', body)                       # A: plain, gets the only slot
    h = _wait_health(s, lambda h: h['running'] == 1 and h['generated_tokens'] > 0)
    assert (h['running'], h['started']) == (1, 1), h
    b = _raw_post(s.url, '/v1/chat/completions', {**body, 'stream': True})  # B: streamed, queued behind A
    c = _raw_post(s.url, '/generate', {'max_new_tokens': 500000, 'history': [{'instruction': 'hi'}]})   # C: queued too
    h = _wait_health(s, lambda h: h['waiting'] == 2)
    assert (h['running'], h['waiting']) == (1, 2), h
    b.close(); c.close()                                                     # B and C leave the queue ...
    h = _wait_health(s, lambda h: h['waiting'] == 0)
    assert (h['running'], h['waiting']) == (1, 0), h
    a.close()                                                                # ... and A's generation stops
    h = _wait_health(s, lambda h: h['running'] == 0)
    assert (h['running'], h['waiting'], h['started']) == (0, 0, 1), h       # B and C never ran
    assert s.health()['generated_tokens'] == h['generated_tokens']         # nothing generates any more


def test_host_origin_and_content_type_checks(server):
    "DNS rebinding (a foreign Host), cross-site browser requests (a foreign Origin) and non-JSON bodies are refused."
    body = {'messages': USER, 'max_tokens': 2}
    r = server.http.post('/v1/chat/completions', json=body, headers={'host': 'evil.example'})
    assert r.status_code == 421 and '--allowed_host' in r.json()['error']['message'], r.text
    assert server.http.get('/', headers={'host': 'evil.example:80'}).status_code == 421      # the page too
    assert server.http.post('/v1/chat/completions', json=body, headers={'host': 'chat.example'}).status_code == 200
    assert server.http.post('/v1/chat/completions', json=body, headers={'host': 'localhost'}).status_code == 200
    r = server.http.post('/v1/chat/completions', json=body, headers={'origin': 'http://evil.example'})
    assert r.status_code == 403 and 'cross-origin' in r.json()['error']['message'], r.text
    assert server.http.post('/generate', json={'max_new_tokens': 2, 'history': [{'instruction': 'a'}]},
                            headers={'origin': 'null'}).status_code == 403
    assert server.http.post('/v1/chat/completions', json=body, headers={'origin': server.url}).status_code == 200   # own page
    for ctype in ('text/plain', 'application/x-www-form-urlencoded', None):
        headers = {'content-type': ctype} if ctype else {}
        r = server.http.post('/v1/chat/completions', content=json.dumps(body).encode(), headers=headers)
        assert r.status_code == 415 and 'application/json' in r.json()['error']['message'], (ctype, r.text)
    r = server.http.post('/v1/chat/completions', content=json.dumps(body).encode(),
                         headers={'content-type': 'application/json; charset=utf-8'})
    assert r.status_code == 200, r.text


def _read_until_closed(sock: socket.socket) -> bytes:
    "Everything the server sends until it closes the connection (the socket's timeout bounds a hang)."
    out = b''
    while True:
        try: data = sock.recv(65536)
        except ConnectionResetError: return out
        except socket.timeout: raise AssertionError(f"the server never closed the connection; it sent {out[:200]!r}") from None
        if not data: return out
        out += data


def test_slow_body_gets_408(servers):
    "A client that sends the headers and half the body, then nothing, gets 408 after --body_timeout (1 s here)."
    s = servers['timeout'].ready()
    sock = _raw_post(s.url, '/v1/chat/completions', {'messages': USER, 'max_tokens': 2}, send_body=False)
    with sock: answer = _read_until_closed(sock)
    assert answer.startswith(b'HTTP/1.1 408 '), answer
    assert b'body_timeout' in answer, answer
    assert s.health()['running'] == 0


def test_idle_keep_alive_connection_is_closed(servers):
    "An idle keep-alive connection is closed by the server after --keep_alive seconds (1 s here)."
    s = servers['timeout'].ready()
    host, port = s.url.split('//')[1].rsplit(':', 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f'GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n'.encode())
        answer = _read_until_closed(sock)                                    # returns once the server closes it
    assert answer.startswith(b'HTTP/1.1 200 ') and b'"status":"ok"' in answer, answer


@pytest.mark.parametrize('sent', [b'', b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty'])
def test_slow_or_silent_headers_are_closed(servers, sent):
    "A connection that sends nothing, or half its headers, is closed after --header_timeout (1 s here)."
    s = servers['timeout'].ready()
    host, port = s.url.split('//')[1].rsplit(':', 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(sent)
        sock.settimeout(60)                                                  # a bound against a hang only
        try: answer = sock.recv(65536)
        except ConnectionResetError: answer = b''
    assert answer == b'', answer                                             # closed, nothing answered
    assert s.health()['status'] == 'ok'


def test_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0)); taken.listen(1)
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, '-c', 'from coati_nb.serve import serve_cli; serve_cli()', '--port', str(port)],
                           capture_output=True, text=True, encoding='utf-8', env=ENV, cwd=ROOT, timeout=180)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'coati_nb_serve: error: port {port} on 127.0.0.1 is already in use'), p.stderr
    assert 'Traceback' not in p.stderr and 'serving' not in p.stdout


# --- the terminal chat ---------------------------------------------------------------------------------------------

def test_terminal_chat(model_dir):
    from coati_nb.inference import load_engine
    lines = ['你好', 'Tell me more about the number seven, please.', 'and then?', 'one more question',
             '/reset', '你好', '/exit', 'never answered']
    p = subprocess.run([sys.executable, '-c', 'from coati_nb.inference import chat_cli; chat_cli()', str(model_dir),
                        '--max_new_tokens', '8', '--temperature', '0', '--context_len', '140', '--stats'],
                       input='\n'.join(lines) + '\n', capture_output=True, text=True, encoding='utf-8', env=ENV,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    stats = [dict(kv.split('=') for kv in l.strip('[]').split()) for l in p.stderr.splitlines() if l.startswith('[prompt')]
    assert len(stats) == 5, p.stderr                                          # 5 messages before /exit
    pt = [int(s['prompt_tokens']) for s in stats]
    assert all(n <= 140 - 8 for n in pt), pt                                  # history truncated to the context
    assert any(int(s['dropped_turns']) > 0 for s in stats[:4]), stats         # ... by dropping old turns
    assert pt[1] > pt[0] and pt[4] == pt[0] and stats[4]['dropped_turns'] == '0', pt   # /reset starts afresh
    assert '(history cleared)' in p.stdout
    first = load_engine(model_dir).chat([{'role': 'user', 'content': '你好'}], max_new_tokens=8, temperature=0)
    assert p.stdout.startswith(first + '\n'), (first, p.stdout)              # the streamed print is the answer



def test_terminal_chat_serves_a_gptq_checkpoint(tmp_path):
    "--precision gptq loads a folder written by save_quantized through 12_quant's loader; the answer is the engine's."
    import torch
    from coati_nb.inference import load_engine, tiny_chat_model
    from coati_nb.quant import quantize_model, save_quantized
    model, tok = tiny_chat_model(max_positions=256)
    calib = [torch.tensor([tok('Below is an instruction. 你好')['input_ids']])]
    save_quantized(quantize_model(model, 4, 32, 'gptq', calib), tmp_path/'gptq')
    p = subprocess.run([sys.executable, '-c', 'from coati_nb.inference import chat_cli; chat_cli()', str(tmp_path/'gptq'),
                        '--precision', 'gptq', '--max_new_tokens', '6', '--temperature', '0'],
                       input='你好\n', capture_output=True, text=True, encoding='utf-8', env=ENV, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    first = load_engine(tmp_path/'gptq', 'gptq').chat([{'role': 'user', 'content': '你好'}], max_new_tokens=6, temperature=0)
    assert p.stdout == first + '\n', (first, p.stdout)

# --- the web page in a browser -------------------------------------------------------------------------------------

def test_browser_chat(servers, tmp_path):
    sync_playwright = require_chromium()
    s = servers['builtin'].ready()                                            # the built-in tiny model
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page()
        bodies = []
        page.on('request', lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith('/v1/chat/completions') else None)
        page.goto(s.url + '/')
        page.wait_for_function("document.getElementById('model').textContent === 'coati-nb-tiny'")
        page.evaluate("""() => { window.__lens = [];
            new MutationObserver(() => { const a = document.querySelector('.assistant');
                if (a) window.__lens.push(a.textContent.length); })
              .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill('#input', '你好，今天天气怎么样？')
        page.press('#input', 'Enter')
        page.wait_for_selector('.assistant[data-done="1"]', timeout=60_000)
        answer = page.eval_on_selector('.assistant', 'e => e.textContent')
        lens = page.evaluate('window.__lens')
        grown = sorted({n for n in lens if n > 0})
        assert answer.strip() and len(grown) >= 2, (answer, lens)         # the text appeared piece by piece
        assert page.query_selector('.error') is None
        page.fill('#input', 'and tomorrow?')
        page.press('#input', 'Enter')
        page.wait_for_function("document.querySelectorAll('.assistant[data-done=\"1\"]').length === 2", timeout=60_000)
        assert [m['role'] for m in bodies[-1]['messages']] == ['user', 'assistant', 'user']   # history sent back
        assert bodies[-1]['messages'][1]['content'] == answer and bodies[-1]['stream'] is True
        shot = tmp_path / 'chat.png'
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        page.click('#reset')
        assert page.query_selector_all('.msg') == []
        browser.close()


def test_serve_cli_hands_its_timeouts_to_uvicorn(monkeypatch):
    "--keep_alive reaches uvicorn's own setting (checked on the config, not by timing a connection)."
    import uvicorn
    from coati_nb.serve import serve_cli
    seen = {}
    class _NoServer:
        def __init__(self, config): seen['config'] = config
        def run(self, sockets): seen['sockets'] = sockets
    monkeypatch.setattr(uvicorn, 'Server', _NoServer)
    serve_cli(['--port', '0', '--keep_alive', '7', '--max_new_tokens', '4'])
    for s in seen['sockets']: s.close()
    assert seen['config'].timeout_keep_alive == 7
