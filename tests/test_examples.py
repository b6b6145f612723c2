"""examples/train_{sft,rm,prompts}.sh, as ColossalChat ships them: on a machine without a GPU they fall back to two
CPU processes (torchrun, gloo) with the bundled tiny setting, and each stage feeds the next."""
import os, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_example_scripts_run_in_order_on_cpu(tmp_path):
    env = {**os.environ, 'OUT': str(tmp_path), 'TINY': '1', 'OMP_NUM_THREADS': '1'}
    for name, made in (('train_sft.sh', 'sft'), ('train_rm.sh', 'rm'), ('train_prompts.sh', 'actor')):
        proc = subprocess.run(['bash', str(ROOT/'examples'/name)], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert 'CPU: 2 processes (gloo)' in proc.stdout
        assert (tmp_path/made/'model.safetensors').is_file(), name
    assert (tmp_path/'rm'/'value_head.safetensors').is_file()
