"""The built wheel serves without torch: build it, install it with its base dependencies alone in a
fresh virtual environment, and serve there what bort trained and saved here, with equal results."""

from __future__ import annotations

import email.parser
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import HELD_OUT, SAMPLE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BASE = ("numpy", "safetensors", "tokenizers")
EXTRAS = {"train", "onnx", "bench", "all", "test"}
TEXTS = SAMPLE[:6] + HELD_OUT[:4]


def _base_pins() -> list[str]:
    """The runtime dependencies at the versions the Makefile's PINS test them with."""
    makefile = (REPO / "Makefile").read_text()
    pins = [m.group(0) for name in BASE for m in [re.search(rf"\b{name}==[\w.]+", makefile)] if m]
    assert len(pins) == len(BASE), f"Makefile PINS must pin {BASE}, found {pins}"
    return pins


def _clean_env() -> dict[str, str]:
    """This environment less anything that would let a child see the source tree or .venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """bort's wheel, built from this tree reusing build/ (as `make wheel` does)."""
    missing = [m for m in ("scikit_build_core", "pybind11", "cmake", "ninja")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the build tools are not installed here ({', '.join(missing)}): "
                    "`make test` installs them")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          f"-Cbuild-dir={REPO / 'build'}", "-w", out, REPO], cwd=REPO)
    (found,) = out.glob("bort-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", root / "env"], cwd=root)
    python = root / "env" / "bin" / "python"
    _run([python, "-m", "pip", "install", "--only-binary=:all:", wheel, *_base_pins()], cwd=root)
    return root / "env"


def test_wheel_contents(wheel) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"bort-{wheel.name.split('-')[1]}.dist-info"
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert {"bort/_licenses/MKL-LICENSE.txt", "bort/_licenses/BORT-LICENSE.txt",
            f"{info}/licenses/LICENSE"} <= names
    assert any(re.fullmatch(r"bort/_core\..*\.so", n) for n in names)
    assert not any(n.startswith(("tests/", "csrc/", "bench/", "build/")) for n in names)
    requires = metadata.get_all("Requires-Dist")
    base = {re.match(r"[\w-]+", r).group(0) for r in requires if "extra ==" not in r}
    assert base == set(BASE)
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS
    torch = [r for r in requires if r.startswith("torch")]
    assert torch and all('extra == "train"' in r for r in torch)
    assert metadata["Name"] == "bort"


def test_fresh_venv_serves_without_torch(venv, minilm_dir, tmp_path) -> None:
    import torch

    import bort
    from bort.model import BortModel
    from bort.runtime import Classifier, Encoder

    python = venv / "bin" / "python"
    outside = tmp_path / "elsewhere"  # the child's working directory: no source tree there
    outside.mkdir()
    no_torch = subprocess.run([python, "-c", "import torch"], cwd=outside, env=_clean_env(),
                              capture_output=True, text=True)
    assert no_torch.returncode != 0 and "ModuleNotFoundError" in no_torch.stderr

    # The training side (torch): save an encoder and a classifier with bort.
    enc_dir, clf_dir = tmp_path / "encoder", tmp_path / "classifier"
    model = BortModel.from_pretrained(minilm_dir)
    model.save_pretrained(enc_dir)
    torch.manual_seed(0)
    clf = BortModel(replace(model.arch, num_labels=2), id2label={0: "neg", 1: "pos"})
    clf.load_checked({**model.state_dict(), **{k: v for k, v in clf.state_dict().items()
                                               if k.startswith("classifier.")}})
    clf.source_dir = minilm_dir
    clf.save_pretrained(clf_dir)

    vectors = Encoder.from_pretrained(enc_dir, num_threads=2).encode(
        TEXTS, pooling="mean", normalize=True)
    pred = Classifier.from_pretrained(clf_dir, num_threads=2).predict(TEXTS)

    # The serving side: the same calls in the fresh environment, from outside the repository.
    script = outside / "serve.py"
    script.write_text(textwrap.dedent("""
        import json, sys, sysconfig
        import numpy as np
        import bort
        from bort.runtime import Classifier, Encoder

        enc_dir, clf_dir, out = sys.argv[1:4]
        texts = json.loads(sys.argv[4])
        vectors = Encoder.from_pretrained(enc_dir, num_threads=2).encode(
            texts, pooling="mean", normalize=True)
        pred = Classifier.from_pretrained(clf_dir, num_threads=2).predict(texts)
        np.savez(out, vectors=vectors, probabilities=pred.probabilities)
        print(json.dumps({"file": bort.__file__, "version": bort.__version__,
                          "site": sysconfig.get_paths()["platlib"], "labels": pred.labels,
                          "torch_loaded": "torch" in sys.modules}))
    """))
    result = _run([python, script, enc_dir, clf_dir, tmp_path / "served.npz", json.dumps(TEXTS)],
                  cwd=outside)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    site = Path(report["site"]).resolve()
    assert Path(report["file"]).resolve().is_relative_to(site), report
    assert site.is_relative_to(venv.resolve()) and not site.is_relative_to(REPO)
    assert not report["torch_loaded"]
    assert report["version"] == bort.__version__

    served = np.load(tmp_path / "served.npz")
    assert np.abs(served["vectors"] - vectors).max() < 1e-5
    assert np.abs(served["probabilities"] - pred.probabilities).max() < 1e-5
    assert report["labels"] == pred.labels

    for cmd in ([venv / "bin" / "bort", "--version"], [python, "-m", "bort", "--version"]):
        assert _run(cmd, cwd=outside).stdout.strip() == f"bort {bort.__version__}"
