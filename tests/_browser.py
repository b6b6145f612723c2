"""The browser the page tests drive: Debian's headless chromium through playwright (never a downloaded browser).
Under CI a missing chromium or playwright is a failure (`make browser` installs chromium); elsewhere a skip."""
import os
from pathlib import Path

import pytest

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def require_chromium():
    "playwright's `sync_playwright`, once chromium and playwright are known to be installed."
    if not Path(CHROMIUM).is_file():
        msg = f"{CHROMIUM} is missing: install Debian's chromium (make browser, or apt-get install -y chromium)"
        if os.environ.get('CI'): pytest.fail(msg)
        pytest.skip(msg)
    try: from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get('CI'): pytest.fail("playwright is missing: pip install playwright (never `playwright install`)")
        pytest.skip('playwright is not installed')
    return sync_playwright


def launch(pw):
    "Headless chromium from a running sync_playwright."
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
