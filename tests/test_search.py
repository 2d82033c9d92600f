"""The search driver: representatives, surrogate errors, W-coefficient, constraints, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HELD_OUT, SAMPLE

from bort import Arch, ConfigError
from bort.costs import importance
from bort.distill import Corpus, surrogate_error
from bort.model import BortModel
from bort.search import (
    Candidate,
    LayerwiseSpace,
    optimal_subarchitecture,
    representatives,
    w_coefficient,
)

SMALL = dict(epsilon=0.1, representatives=3, steps=2, log=None)


@pytest.fixture(scope="module")
def setup(minilm_dir, tmp_path_factory):
    source = BortModel.from_pretrained(minilm_dir)
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text("\n".join(SAMPLE * 2 + HELD_OUT))
    space = LayerwiseSpace.from_source(source.arch, head_step=4, ffn_step=384)
    return source, Corpus([path], held_out=0.25), space, importance(source, SAMPLE)


def test_w_coefficient_and_representatives() -> None:
    assert w_coefficient(25, 40, 0.5, 100, 80) == pytest.approx(0.75 * 0.5 / 0.5)
    with pytest.raises(ValueError, match="positive"):
        w_coefficient(1, 1, 0.0, 2, 2)
    arch = Arch.uniform(1, 1, 8, 8)
    cands = [Candidate(arch, p, float(10 - p), 0.0) for p in range(10)]  # shuffled on purpose
    picked = representatives(cands[::-1], 3)
    assert [c.params for c in picked] == [1, 4, 8]  # middles of [0..2], [3..6], [7..9]
    assert representatives(cands, 20) == sorted(cands, key=lambda c: c.params)


def test_search_finds_the_best_w_and_resumes(setup, tmp_path, monkeypatch) -> None:
    source, corpus, space, imp = setup
    result = optimal_subarchitecture(source, space, corpus, importance=imp, out=tmp_path, **SMALL)
    assert len(result.evaluated) == 3 and result.predicted_seconds > 0
    assert result.optimum == max(result.evaluated, key=lambda x: x.w)
    x = result.evaluated[0]
    assert x.error == surrogate_error(x.arch, source, corpus, 2, 0, importance=imp)
    assert x.w == pytest.approx(w_coefficient(x.params, x.cost, x.error, result.maximum.params,
                                              result.maximum.cost))
    saved = json.loads((tmp_path / "front.json").read_text())
    assert saved["optimum"]["describe"] == result.optimum.arch.describe()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished candidate was evaluated again")

    monkeypatch.setattr("bort.distill.surrogate_error", must_not_run)
    again = optimal_subarchitecture(source, space, corpus, importance=imp, out=tmp_path, **SMALL)
    assert [e.error for e in again.evaluated] == [e.error for e in result.evaluated]


def test_constraints(setup) -> None:
    source, corpus, space, imp = setup
    cap = 16_000_000
    result = optimal_subarchitecture(source, space, corpus, importance=imp, max_params=cap,
                                     min_speedup=2.0, **SMALL)
    assert all(x.params <= cap and 2 * x.cost <= result.maximum.cost for x in result.evaluated)
    with pytest.raises(ConfigError, match="no candidate meets"):
        optimal_subarchitecture(source, space, corpus, importance=imp, max_params=10, **SMALL)
    with pytest.raises(ValueError, match="needs cost 'latency'"):
        optimal_subarchitecture(source, space, corpus, importance=imp, max_latency_ms=5, **SMALL)


def test_latency_search_measures_its_table(setup, tmp_path, monkeypatch) -> None:
    """cost "latency" without a table: the driver measures one over the space (COSTS' prepare);
    a bound below every candidate then stops it before any surrogate run."""
    source, corpus, space, imp = setup
    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no candidate meets"):
        optimal_subarchitecture(source, space, corpus, importance=imp, cost="latency",
                                max_latency_ms=1e-9, cost_options={"seq_len": 16}, **SMALL)
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1


def test_search_command(minilm_dir, tmp_path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SAMPLE * 2 + HELD_OUT))
    out = subprocess.run([str(Path(sys.executable).with_name("bort")), "search", str(minilm_dir),
                          "--corpus", str(corpus), "--representatives", "2", "--steps", "2",
                          "--epsilon", "0.2", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "*" in out.stdout and "predicted" in out.stdout
    assert (tmp_path / "run" / "front.json").is_file()
    assert (tmp_path / "run" / "front.png").is_file()


def test_two_ranks_give_the_same_search(minilm_dir, tmp_path) -> None:
    """torchrun shares the representatives out across 2 processes: same candidates, same
    optimum, errors within float tolerance (thread counts differ between the runs)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SAMPLE * 2 + HELD_OUT))
    bort = str(Path(sys.executable).with_name("bort"))
    args = ["search", str(minilm_dir), "--corpus", str(corpus), "--representatives", "3",
            "--steps", "2", "--epsilon", "0.2"]
    one = subprocess.run([bort, *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29519", bort, *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "front.json").read_text())
    b = json.loads((tmp_path / "two" / "front.json").read_text())
    assert [x["describe"] for x in a["evaluated"]] == [x["describe"] for x in b["evaluated"]]
    assert a["optimum"]["describe"] == b["optimum"]["describe"]
    for x, y in zip(a["evaluated"], b["evaluated"]):
        assert x["error"] == pytest.approx(y["error"], rel=1e-3)
    assert len(list((tmp_path / "two").glob("evaluated.rank*.jsonl"))) == 2
