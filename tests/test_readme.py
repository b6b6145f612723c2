"README.md holds the same text as nbs/index.ipynb and gives the two commands first."
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_sync import index_markdown, ROOT


def test_readme_matches_index():
    assert (ROOT/'README.md').read_text(encoding='utf-8') == index_markdown(), \
        "README.md differs from nbs/index.ipynb: edit index.ipynb, then run `make readme`"


def test_two_commands_come_first():
    text = (ROOT/'README.md').read_text(encoding='utf-8')
    first_block = text.split('```bash', 1)[1].split('```', 1)[0]
    assert 'make demo' in first_block and 'make test' in first_block


def test_ci_runs_the_readme_test_command():
    assert 'make test' in (ROOT/'.ci'/'run').read_text()


def test_readme_images_exist_and_are_small():
    import re
    text = (ROOT/'README.md').read_text(encoding='utf-8')
    images = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
    assert images, "the README shows the demo's plots"
    for rel in images:
        f = ROOT/rel
        assert f.is_file(), f"README shows {rel}, which is not in the repository (run `make docs-images` after a demo)"
        assert f.stat().st_size <= 200 * 1024, f"{rel} is over 200 KiB"
