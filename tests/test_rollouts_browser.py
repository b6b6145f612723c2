"""rollouts.html (11a_rollout_viewer) in a real browser: headless Debian chromium driven by playwright opens the file
with no server; the page makes no network request, shows one token span per recorded token, its screenshot is not
blank and holds several colours, the KL switch recolours the tokens and swaps the legend, and HTML in the model's
output stays text (no element, no script runs). Under CI a missing chromium or playwright is a failure, not a skip
(`make browser` installs chromium)."""
import io, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import launch, require_chromium

from coati_nb.rollouts import METRICS, colour, rollouts_html, write_rollouts_html

EVIL = ['<script>window.__pwned = 1</script>', '<img src=x onerror="window.__pwned = 2">', '"\'&amp;']


def _records() -> list[dict]:
    "Three updates of three samples whose numbers sweep each scale, the last sample carrying HTML in its text."
    recs = []
    for u in (0, 5, 11):
        samples = []
        for j in range(3):
            n = 6 + 2 * j
            tokens = [f' tok{u}_{j}_{t}' for t in range(n)] if (u, j) != (11, 2) else EVIL + [' end'] * (n - len(EVIL))
            samples.append({'prompt': f'<i>prompt</i> {u}/{j}', 'response': ''.join(tokens), 'ended': j % 2 == 0,
                            'rm_score': 0.1 * j - 0.1, 'gold_reward': -0.5 + 0.25 * j, 'tokens': tokens, 'cut_tokens': 0,
                            'advantage': [(-1) ** t * (t + 1) / n for t in range(n)],
                            'kl': [0.05 * t * (u + 1) for t in range(n)],
                            'logprob': [-3.0 * t / n for t in range(n)],
                            'value': [0.5 - t / n for t in range(n)]})
        recs.append({'update': u, 'episode': u // 4, 'per_sequence': [], 'samples': samples})
    return recs


@pytest.fixture(scope='module')
def browser():
    with require_chromium()() as pw:
        b = launch(pw)
        yield b
        b.close()


def _colours(png: bytes, min_pixels: int = 40) -> tuple[int, float]:
    "(number of colours covering at least `min_pixels` pixels, share of pixels that are not white)."
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert('RGB')
    counts = img.getcolors(maxcolors=1 << 24)
    total = img.width * img.height
    white = sum(c for c, rgb in counts if rgb == (255, 255, 255))
    return sum(1 for c, _ in counts if c >= min_pixels), 1 - white / total


def test_rollouts_page_in_chromium(browser, tmp_path):
    recs = _records()
    path = write_rollouts_html(recs, tmp_path/'rollouts.html')
    page = browser.new_page(viewport={'width': 1000, 'height': 800})
    requests, dialogs = [], []
    page.on('request', lambda r: requests.append(r.url))
    page.on('dialog', lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector('span.tok')
    assert requests == [path.as_uri()], requests                                   # no server, no network, no CDN
    n_tokens = sum(len(s['tokens']) for r in recs for s in r['samples'])
    assert page.locator('span.tok').count() == n_tokens
    assert page.locator('section').count() == len(recs)
    # the model's HTML is text: no element made from it, no script of it ran
    assert page.evaluate('window.__pwned') is None and dialogs == []
    assert page.locator('.resp img, .resp script, .prompt i').count() == 0
    assert EVIL[0] in page.locator('section#update-11 .resp').nth(2).inner_text()
    # rendered: not blank, several colours
    shot_adv = page.screenshot(full_page=True)
    n_colours, ink = _colours(shot_adv)
    assert n_colours >= 6 and ink > 0.02, (n_colours, ink)
    bg = "els => els.map(e => getComputedStyle(e).backgroundColor)"
    before = page.eval_on_selector_all('span.tok', bg)
    assert page.is_visible('.legend[data-metric="advantage"]') and not page.is_visible('.legend[data-metric="kl"]')
    # the KL switch recolours every token with its KL colour and swaps the legend
    page.click('#m-kl')
    page.wait_for_function("!document.querySelector('.legend[data-metric=\"kl\"]').hidden")
    after = page.eval_on_selector_all('span.tok', bg)
    want = page.eval_on_selector_all('span.tok', "els => els.map(e => e.getAttribute('data-kl'))")
    rgb = lambda h: f'rgb({int(h[1:3], 16)}, {int(h[3:5], 16)}, {int(h[5:7], 16)})'
    assert after == [rgb(h) for h in want]
    assert sum(a != b for a, b in zip(before, after)) > n_tokens // 2
    assert not page.is_visible('.legend[data-metric="advantage"]')
    assert page.screenshot(full_page=True) != shot_adv
    page.click('#m-advantage')
    assert page.eval_on_selector_all('span.tok', bg) == before                    # and back
    page.close()


def test_page_is_bounded_and_escaped():
    "No browser needed: one script (ours), the model's text escaped, a size far below 1 MB for a demo-sized record set."
    recs = _records()
    page = rollouts_html(recs)
    assert page.count('<script') == 1 and '<img' not in page and '&lt;script&gt;window.__pwned' in page
    big = [{**r, 'samples': r['samples'] * 2} for r in recs] * 2                 # 6 updates x 6 samples
    assert len(rollouts_html(big).encode('utf-8')) < 1_000_000
    assert colour(0.0, -1, 1) == '#ffffff' and set(METRICS) == {'advantage', 'kl', 'logprob', 'value'}
