import json
import subprocess
import sys

from drfast.cli import main


def test_info_prints_build(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd"] in info["simd_supported"] and info["threads"] >= 1


def test_demo_small_run_agrees_with_reference(capsys):
    assert main(["demo", "--n", "3000", "--dim", "40", "--batch", "5", "--k", "20", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "fused native search" in out and "agreeing with the reference: 100.00%" in out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "drfast", "info"], capture_output=True, text=True, check=True)
    assert '"simd"' in out.stdout
