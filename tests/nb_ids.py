"""Every notebook must carry stable cell ids (nbformat 4.5): nbdev_export writes each cell's id into the module,
so a notebook without ids gets new random ones on every read and `coati_nb/` never matches `nbdev_export`.
Usage: python tests/nb_ids.py [--check]   (adds missing ids in place; --check only reports and fails)."""
import hashlib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def missing_ids(nb: dict) -> int:
    "How many cells lack an id, counting the whole notebook as lacking them when its format is older than 4.5."
    old = (nb.get('nbformat', 4), nb.get('nbformat_minor', 0)) < (4, 5)
    return len(nb['cells']) if old else sum('id' not in c for c in nb['cells'])

def add_ids(nb: dict, name: str) -> dict:
    "Give every cell without an id a stable one (a hash of the notebook name and the cell's position)."
    nb['nbformat'], nb['nbformat_minor'] = 4, max(5, nb.get('nbformat_minor', 0))
    seen = {c['id'] for c in nb['cells'] if 'id' in c}
    for i, c in enumerate(nb['cells']):
        if 'id' in c: continue
        k = 0
        while True:
            cid = hashlib.sha1(f'{name}:{i}:{k}'.encode()).hexdigest()[:8]
            if cid not in seen: break
            k += 1
        c['id'] = cid; seen.add(cid)
    return nb

if __name__ == '__main__':
    check, bad = '--check' in sys.argv[1:], []
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        nb = json.loads(p.read_text(encoding='utf-8'))
        if not missing_ids(nb): continue
        bad.append(p.name)
        if not check:
            p.write_text(json.dumps(add_ids(nb, p.stem), indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    if check and bad: sys.exit(f"notebooks without cell ids (run `make export`): {', '.join(bad)}")
    print(('added cell ids to ' + ', '.join(bad)) if bad else 'every notebook has cell ids')
