"""`bort pipeline`: the quick run end to end, interrupted and resumed; settings from TOML."""

from __future__ import annotations

import json

import pytest

from bort import pipeline
from bort.cli import main
from bort.errors import ConfigError
from bort.pipeline import STAGES, PipelineConfig, open_run, run_pipeline

ARMS = ("distilled", "agora", "random", "distill", "plain")


def _check_arms(ft: dict, bort_fp32: float) -> None:
    """The finetune stage's arms: the same steps where they should be, the shipped one chosen on
    the selection data alone, and test correctness that adds up to each arm's test score."""
    assert all(ft[arm]["train_steps"] > 0 for arm in ARMS)
    # every Agora arm starts from the task-distilled student and takes the same steps per fit
    assert ft["random"]["train_steps"] == ft["distill"]["train_steps"] > 0
    assert [r["round"] for r in ft["agora"]["rounds"]][:1] == [1]
    # the shipped arm is the one best on the selection data (the first best on a tie), and it
    # is the model exported and benchmarked
    best = max(ft[arm]["selection"] for arm in ARMS)
    assert ft["shipped"] == next(arm for arm in ARMS if ft[arm]["selection"] == best)
    assert ft["data"]["selection"] == "halves" and ft["data"]["selection_rows"] == 80
    assert bort_fp32 == pytest.approx(ft[ft["shipped"]]["test"]["accuracy"], abs=0.02)
    for arm in ARMS:
        correct = ft[arm]["test_correct"]
        assert len(correct) == 160
        assert correct.count("1") / 160 == pytest.approx(ft[arm]["test"]["accuracy"])


@pytest.mark.slow
def test_quick_pipeline_interrupted_then_resumed(tmp_path, monkeypatch):
    config = PipelineConfig.quick(out=str(tmp_path))
    real = dict(pipeline._STAGE_FUNCS)

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline._STAGE_FUNCS, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, log=lambda m: None)
    run_dir = tmp_path / "quick"
    first = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert list(first) == list(STAGES[:STAGES.index("export")])
    # a bench script reopens the run with the settings it ran with
    reopened = open_run(run_dir, needs=("search", "finetune"), log=lambda m: None)
    assert reopened.config == config and reopened.done("finetune")
    with pytest.raises(ConfigError, match=r"has not finished \['bench'\]"):
        open_run(run_dir, needs=("bench",))
    with pytest.raises(ConfigError, match="not a pipeline run"):
        open_run(tmp_path / "elsewhere")

    calls = []
    for stage in STAGES[:STAGES.index("export")]:  # finished stages must not run again
        monkeypatch.setitem(pipeline._STAGE_FUNCS, stage, lambda run, s=stage: calls.append(s))
    monkeypatch.setitem(pipeline._STAGE_FUNCS, "export", real["export"])
    report = run_pipeline(config, log=lambda m: None)
    assert calls == []
    record = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert list(record) == list(STAGES)
    assert all(record[s]["seconds"] == first[s]["seconds"] for s in first)

    text = report.read_text()
    for part in ("## Accuracy on the test split", "student, bort's Agora", "(shipped)",
                 "student, random points", "student, plain fine-tuning", "teacher (source",
                 "## The student under bort's runtime", "| int8 |", "bort-fp32"):
        assert part in text
    accuracy = record["bench"]["accuracy"]
    assert set(accuracy) == {"fp32", "bf16", "int8"}
    assert abs(accuracy["fp32"]["accuracy"] - accuracy["int8"]["accuracy"]) < 0.05
    ft = record["finetune"]
    _check_arms(ft, accuracy["fp32"]["accuracy"])
    assert record["teacher"]["dev"]["accuracy"] > 2 / 3
    for png in ("search/front.png", "curves.png", "bench/latency.png"):
        assert (run_dir / png).stat().st_size > 1000
    assert (run_dir / "export" / "student.onnx").is_file()
    assert (run_dir / "split.json").is_file()

    # the same seed gives the same accuracies, exactly
    for stage, func in real.items():
        monkeypatch.setitem(pipeline._STAGE_FUNCS, stage, func)
    run_pipeline(config, redo="finetune", log=lambda m: None)
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    for arm in ARMS:
        assert again["finetune"][arm]["test"] == ft[arm]["test"]
    assert again["finetune"]["agora"]["rounds"] == ft["agora"]["rounds"]
    assert again["bench"]["accuracy"]["int8"]["accuracy"] == accuracy["int8"]["accuracy"]


def test_toml_overrides_and_errors(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('name = "mine"\nseed = 3\n[distill]\nsteps = 7\n'
                    '[agora]\nthetas = [{lr = 1e-4}]\n')
    config = PipelineConfig.from_toml(good)
    assert (config.name, config.seed, config.distill.steps) == ("mine", 3, 7)
    assert config.agora.thetas == [{"lr": 1e-4}] and config.teacher.epochs == 2.0
    assert PipelineConfig.from_toml(good, quick=True).max_train == 480
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill]\nstepz = 7\n")
    with pytest.raises(ConfigError, match=r"\[distill\]: unknown setting 'stepz'"):
        PipelineConfig.from_toml(bad)
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PipelineConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="unknown stage 'teach'"):
        run_pipeline(config, skip=["teach"])
    assert main(["pipeline", "--config", str(tmp_path / "missing.toml")]) == 1


def test_a_stage_that_needs_a_skipped_one_says_so(tmp_path):
    config = PipelineConfig.quick(out=str(tmp_path))
    with pytest.raises(ConfigError, match="stage 'extract' needs search"):
        run_pipeline(config, skip=["teacher", "search"], log=lambda m: None)


@pytest.mark.slow
def test_quick_embedding_pipeline(tmp_path):
    """`--task embedding`: the source is the teacher, the student learns its vectors, and the
    report scores each bort dtype by cosine and recall@10 on held-out corpus passages."""
    config = PipelineConfig.quick(out=str(tmp_path), name="emb", task="embedding")
    report = run_pipeline(config, log=lambda m: None).read_text()
    record = json.loads((tmp_path / "emb" / "pipeline.json").read_text())["stages"]
    assert record["teacher"]["embedding"] and set(record["finetune"]) == {
        "distilled", "shipped", "model", "seconds"}
    student = record["finetune"]["distilled"]
    assert student["passages"] == {"train": 480, "dev": 160, "test": 160}
    assert 0.5 < student["test"]["cosine"] <= 1 and 0 < student["test"]["recall@10"] <= 1
    accuracy = record["bench"]["accuracy"]
    assert set(accuracy) == {"fp32", "bf16", "int8"}
    # bort fp32 serves what torch scored (the same passages, teacher and pooling)
    assert accuracy["fp32"]["cosine"] == pytest.approx(student["test"]["cosine"], abs=2e-3)
    for part in ("mean cosine", "recall@10", "| int8 |", "held out of every distillation"):
        assert part in report
