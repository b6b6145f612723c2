"""Fuzzing the chat server's request schema with hypothesis: whatever the body of /v1/chat/completions, /generate or
/generate/stream, the answer is a 2xx or a 4xx with a JSON error message — never a 5xx, never an uncaught exception
(the in-process TestClient re-raises those), never an error event inside a stream. In-process, the built-in tiny
model, at most 3 new tokens per answer."""
import json

import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st

from coati_nb.inference import load_engine
from coati_nb.serve import ServeConfig, create_app, iter_sse

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that includes what breaks naive servers: lone surrogates, NUL, control characters, astral characters.
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ['', ' ', '\ud800', 'a\udfff', '\x00', '你好', '### Instruction:', '</s>', '\U0001F600' * 3, 'x' * 300])
FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-40, 1e-3, 0.01, 0.5, 1.0, 2.0, 10.0, 1e308, -1.0, 5e-324])
INT = st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 3, 4, -1, 2**63 - 1, 2**63])
JSON = st.recursive(st.none() | st.booleans() | INT | FLOAT | TEXT,
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4), max_leaves=12)
ANY = FLOAT | INT | TEXT | st.booleans() | st.none() | JSON

SAFE = st.text(max_size=30)                      # valid Unicode (no surrogates)

@st.composite
def _chat(draw):
    "Messages in a valid order: an optional system message, user/assistant turns, the user last."
    turns = draw(st.integers(0, 2))
    msgs = [{'role': 'system', 'content': draw(SAFE)}] if draw(st.booleans()) else []
    for _ in range(turns): msgs += [{'role': 'user', 'content': draw(SAFE)}, {'role': 'assistant', 'content': draw(SAFE)}]
    last = draw(SAFE | st.lists(st.fixed_dictionaries({'type': st.just('text'), 'text': SAFE}), min_size=1, max_size=2))
    return msgs + [{'role': 'user', 'content': last}]

GOOD_SAMPLING = {'temperature': st.just(0) | st.floats(1e-3, 2), 'top_p': st.floats(1e-6, 1, exclude_min=True),
                 'top_k': st.integers(0, 100_000), 'repetition_penalty': st.floats(1e-2, 10)}
GOOD_OPENAI = st.fixed_dictionaries({'messages': _chat()}, optional={
    **GOOD_SAMPLING, 'model': st.just('coati-nb-tiny'), 'max_tokens': st.integers(1, 3),
    'stop': SAFE.filter(bool) | st.lists(st.text(min_size=1, max_size=8), max_size=4), 'seed': st.integers(0, 2**63 - 1),
    'stream': st.booleans(), 'stream_options': st.fixed_dictionaries({'include_usage': st.booleans()}), 'n': st.just(1)})
GOOD_COLOSSAL = st.fixed_dictionaries({'max_new_tokens': st.integers(1, 3), 'history': st.lists(
    st.fixed_dictionaries({'instruction': st.text(min_size=1, max_size=30), 'response': SAFE}), max_size=2).map(
    lambda h: h + [{'instruction': 'hi', 'response': ''}])}, optional=GOOD_SAMPLING)

# Where a mutation may land: top-level fields, and fields inside the first message / history entry.
OPENAI_SPOTS = ['messages', 'model', 'max_tokens', 'max_completion_tokens', 'stop', 'seed', 'stream', 'stream_options',
                'n', 'logprobs', 'tools', *GOOD_SAMPLING, 'messages.0', 'messages.0.role', 'messages.0.content', 'messages.-1.content']
COLOSSAL_SPOTS = ['max_new_tokens', 'history', *GOOD_SAMPLING, 'history.0', 'history.0.instruction', 'history.-1.response']

def _mutated(good, spots):
    "A valid body with 0-2 of its fields replaced by anything (or removed): mostly near-valid requests."
    @st.composite
    def make(draw):
        body = draw(good)
        for _ in range(draw(st.integers(0, 2))):
            *path, last = draw(st.sampled_from(spots)).split('.')
            node = body
            try:
                for k in path: node = node[int(k)] if isinstance(node, list) else node[k]
                key = int(last) if isinstance(node, list) else last
                if draw(st.integers(0, 5)) == 0 and isinstance(node, dict): node.pop(key, None)
                else: node[key] = draw(ANY)
            except (KeyError, IndexError, TypeError, ValueError): pass
        return body
    return make()

OPENAI = _mutated(GOOD_OPENAI, OPENAI_SPOTS)
COLOSSAL = _mutated(GOOD_COLOSSAL, COLOSSAL_SPOTS)


@pytest.fixture(scope='module')
def client():
    from fastapi.testclient import TestClient
    app = create_app(load_engine(), ServeConfig(max_new_tokens=3, max_prompt_tokens=200, max_body_bytes=65536))
    with TestClient(app) as c: yield c          # one event loop for every request, as under uvicorn


def _encode(body) -> bytes:
    "JSON as a client would send it: lone surrogates as \\u escapes, NaN/Infinity as Python's json writes them."
    return json.dumps(body).encode('ascii')


def _check(r, stream: bool):
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()['error']['message'], str) and r.json()['error']['message'], r.text
    elif stream:
        events = list(iter_sse(r.text.splitlines()))
        assert events, r.text
        for e in events:
            assert e['event'] != 'error', r.text
            if e['data'] not in ('', '[DONE]') and e['data'].startswith('{'):
                assert 'error' not in json.loads(e['data']), r.text


def _post(client, path: str, body) -> None:
    r = client.post(path, content=_encode(body), headers={'content-type': 'application/json'})
    _check(r, path.endswith('/stream') or (path == '/v1/chat/completions' and r.headers.get('content-type', '').startswith('text/event-stream')))


@SETTINGS
@given(body=OPENAI)
def test_chat_completions_never_5xx(client, body):
    _post(client, '/v1/chat/completions', body)


@SETTINGS
@given(body=COLOSSAL, stream=st.booleans())
def test_generate_never_5xx(client, body, stream):
    _post(client, '/generate/stream' if stream else '/generate', body)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(body=JSON, path=st.sampled_from(['/v1/chat/completions', '/generate', '/generate/stream']))
def test_any_json_never_5xx(client, body, path):
    _post(client, path, body)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(raw=st.binary(max_size=200), path=st.sampled_from(['/v1/chat/completions', '/generate']))
def test_any_bytes_never_5xx(client, raw, path):
    _check(client.post(path, content=raw, headers={'content-type': 'application/json'}), False)


def test_examples_that_used_to_fail(client):
    "The user's reports, pinned: each is a 400 naming the field."
    u = [{'role': 'user', 'content': 'hi'}]
    for body, param in [({'messages': u, 'repetition_penalty': 1e-40}, 'repetition_penalty'),
                        ({'messages': u, 'temperature': 1e-40}, 'temperature'),
                        ({'messages': [{'role': 'user', 'content': '\ud800'}]}, 'messages[0].content')]:
        r = client.post('/v1/chat/completions', content=_encode(body), headers={'content-type': 'application/json'})
        assert r.status_code == 400 and r.json()['error']['param'] == param, r.text
