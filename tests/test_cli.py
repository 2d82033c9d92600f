"""The `bort` command as a user runs it: a real process, real output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bort import Arch, __version__

BORT = [str(Path(sys.executable).with_name("bort"))]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BORT, *args], capture_output=True, text=True, timeout=120)


def test_info_on_the_default_source() -> None:
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert "⟨D=6, A=12, H=384, I=1536⟩" in out.stdout
    assert "22,713,216" in out.stdout and "2,869,198,848" in out.stdout


def test_info_cpu_names_the_backend() -> None:
    """`bort info --cpu` shows the CPU and the kernels the encoder runs, as the core says."""
    from bort import _core

    out = run("info", "--cpu", "--json")
    report = json.loads(out.stdout)
    assert report["gemm"] == _core.backend()["gemm"] and report["isa"] == _core.backend()["isa"]
    assert f"gemm int8     {report['gemm']['int8']}" in run("info", "--cpu").stdout


def test_info_json_matches_arch(minilm_dir) -> None:
    out = run("info", str(minilm_dir), "--json", "--batch", "8", "--seq-len", "64")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    arch = Arch.from_pretrained(minilm_dir)
    assert report["params"] == arch.params().as_dict()
    assert report["flops"] == {"batch": 8, "seq_len": 64, "flops": arch.flops(8, 64)}
    assert Arch.from_config(report["config"]) == arch


def test_info_layerwise(tmp_path) -> None:
    arch = Arch(hidden=32, layers=[(2, 16, 64), (0, 0, 48)])
    (tmp_path / "config.json").write_text(json.dumps(arch.to_config()))
    out = run("info", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "layer 1" in out.stdout and "no attention, FFN 48" in out.stdout


def test_errors_are_one_clear_line(tmp_path) -> None:
    out = run("info", str(tmp_path / "missing"))
    assert out.returncode == 1
    missing = tmp_path / "missing"
    assert out.stderr.strip() == f"bort info: error: model directory not found: {missing}"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    out = run("info", str(tmp_path))
    assert out.returncode == 1 and "'t5' is not a BERT-family encoder" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_and_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "bort", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == f"bort {__version__}" != "bort 0+unknown"
    assert shutil.which(BORT[0])


def test_help_shows_each_default_once() -> None:
    """A set default is shown; an unset one shows what unset means, not "(default: None)"."""
    out = run("search", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "(default: None)" not in text
    assert "largest parameter count allowed (default: none)" in text
    assert "seed of the surrogate runs (default: 0)" in text
    # argparse may wrap after a hyphen
    pipeline = " ".join(run("pipeline", "--help").stdout.split()).replace("- ", "-")
    assert "source model directory (default: the installed all-MiniLM-L6-v2) --task" in pipeline
