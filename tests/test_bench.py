"""The bench harness with runtimes registered from outside (README: "Extending bort")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bort import Arch
from bort.bench import RUNTIMES, Skip, markdown, run_matrix
from bort.config import BenchConfig
from bort.errors import ConfigError
from bort.model import BortModel
from bort.runtime import Encoder


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    directory = tmp_path / "tiny"
    BortModel(Arch.uniform(2, 2, 32, 64, vocab_size=120, max_positions=64)).save_pretrained(
        directory)
    return directory


@pytest.fixture
def registered():
    """A numpy runtime (its own forward: the embeddings' sum) and one that is never available."""
    calls = []

    def numpy_runtime(target):
        encoder = Encoder.from_pretrained(target.model_dir, num_threads=target.threads)
        return lambda x: calls.append(encoder(x.input_ids, x.attention_mask).sum())

    def missing(target):
        raise Skip("missing-runtime: its package is not installed")

    RUNTIMES.register("numpy-test", numpy_runtime)
    RUNTIMES.register("missing-test", missing)
    yield calls
    RUNTIMES.unregister("numpy-test")
    RUNTIMES.unregister("missing-test")


def test_a_runtime_registered_from_outside_is_timed(tiny, tmp_path, registered) -> None:
    config = BenchConfig(lengths=[8, 16], rounds=3,
                         runtimes=["numpy-test", "missing-test", "bort-fp32"])
    rows, notes = run_matrix({"tiny": tiny}, {"tiny": tmp_path / "unused.onnx"}, config,
                             tmp_path)
    assert {(r["runtime"], r["shape"]) for r in rows} == {
        (rt, s) for rt in ("numpy-test", "bort-fp32") for s in ("1x8", "1x16")}
    assert all(r["ms"] > 0 and np.isfinite(r["gflops_per_s"]) for r in rows)
    assert notes == ["missing-runtime: its package is not installed"]
    assert len(registered) >= 2 * (2 + 3)  # warm-up and timed calls of both shapes
    table = markdown(rows)
    assert "| 1x16 | 1 |" in table and "numpy-test" in table


def test_unknown_runtimes_are_named(registered) -> None:
    with pytest.raises(ConfigError, match="unknown value 'nope'"):
        BenchConfig(runtimes=["numpy-test", "nope"])
    assert "numpy-test" in BenchConfig().runtimes  # the default: every registered runtime


def test_each_round_calls_every_runner_back_to_back_and_times_the_last() -> None:
    """Interleaved rounds: warm-up calls, then per round `back_to_back` calls of each runner in a
    row (so the timed one finds its own data in cache, not the previous runner's)."""
    from bort.timing import BACK_TO_BACK, interleaved_ms

    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    ms = interleaved_ms(runners, rounds=3, warmup=1)
    assert set(ms) == {"a", "b"} and BACK_TO_BACK == 2
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    calls.clear()
    interleaved_ms(runners, rounds=3, warmup=0, back_to_back=1)
    assert calls == ["a", "b"] * 3


def test_the_cpu_label_tells_generations_with_one_model_name_apart(monkeypatch) -> None:
    """Cached latency tables are keyed by `cpu_model`: a bare 'AMD EPYC' of two generations must
    not share one, so the family and model numbers are part of the label."""
    from bort import timing

    def fake(family: str) -> dict[str, str]:
        return {"model name": "AMD EPYC", "cpu family": family, "model": "2",
                "flags": "fpu avx2 fma avx512f avx512_bf16"}

    labels = []
    for family in ("25", "26"):
        monkeypatch.setattr(timing, "_cpuinfo", lambda family=family: fake(family))
        labels.append(timing.cpu_model())
    assert labels == ["AMD EPYC, family 25 model 2", "AMD EPYC, family 26 model 2"]
    assert timing.cpu_summary() == "AMD EPYC, family 26 model 2 (avx2 fma avx512f avx512_bf16)"
    monkeypatch.setattr(timing, "_cpuinfo", dict)  # no /proc/cpuinfo: the platform's name
    assert timing.cpu_model() and "family" not in timing.cpu_model()
