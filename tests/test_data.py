"""Task loaders (registry datasets, GLUE TSV, CSV/TSV/JSONL), splits and metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bort.data import (
    TASKS,
    Dataset,
    default_transfer,
    load_task,
    stratified_split,
    transfer_texts,
)
from bort.errors import ConfigError, DataError
from bort.metrics import accuracy, f1, kendall_tau, mcc, mcnemar, pearson, spearman


def test_rotten_tomatoes_split_is_seeded_stratified_and_recorded(tmp_path):
    task = load_task("rotten_tomatoes", seed=0)
    assert "rotten_tomatoes" in TASKS
    assert (len(task.train), len(task.dev), len(task.test)) == (6824, 852, 854)
    assert task.labels == ["negative", "positive"] and task.metric == "accuracy"
    for split in (task.train, task.dev, task.test):
        assert abs(split.labels.mean() - 0.5) < 0.002  # balanced, as the source is
    idx = task.split["indices"]
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["dev"]) & set(idx["test"])
    assert sorted(idx["train"] + idx["dev"] + idx["test"]) == list(range(8530))
    again = load_task("rotten_tomatoes", seed=0)
    other = load_task("rotten_tomatoes", seed=1)
    assert again.test.texts == task.test.texts and other.test.texts != task.test.texts
    record = json.loads(task.write_split(tmp_path).read_text())
    assert record["indices"]["test"] == idx["test"] and record["sizes"]["test"] == 854
    assert record["test_sha256"] == again.split["test_sha256"]


def test_bbc_news_has_five_topics():
    task = load_task("bbc_news")
    assert task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) + len(task.dev) + len(task.test) == 2225


@given(st.lists(st.integers(0, 3), min_size=20, max_size=200), st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_stratified_split_partitions_each_class(labels, seed):
    labels = np.asarray(labels)
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for c in np.unique(labels):
        n = np.sum(labels == c)
        assert abs(np.sum(labels[parts[0]] == c) - 0.6 * n) <= 1


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if kind == "tsv" else ","
        keys = list(rows[0])
        path.write_text(sep.join(keys) + "\n" + "".join(
            sep.join(str(r[k]) for k in keys) + "\n" for r in rows))


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_table_files(tmp_path, kind):
    rows = [{"text": f"sentence {i}", "text_pair": f"other {i}", "label": ["no", "yes"][i % 2]}
            for i in range(50)]
    _write(tmp_path / f"all.{kind}", rows, kind)
    task = load_task(tmp_path / f"all.{kind}", seed=3)
    assert task.labels == ["no", "yes"] and task.pair
    assert len(task.train) + len(task.dev) + len(task.test) == 50
    i = task.train.texts.index("sentence 7")
    assert task.train.pairs[i] == "other 7" and task.labels[task.train.labels[i]] == "yes"


def test_directory_of_splits_and_regression(tmp_path):
    for split, n in (("train", 40), ("dev", 10), ("test", 10)):
        _write(tmp_path / f"{split}.csv", [{"text": f"{split} {i}", "label": i / 7}
                                           for i in range(n)], "csv")
    task = load_task(tmp_path)
    assert task.regression and task.num_labels == 1 and task.metric == "pearson"
    assert task.test.texts[0] == "test 0" and task.test.labels.dtype == np.float32


def test_glue_layouts(tmp_path):
    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text("sentence\tlabel\n" + "".join(
        f"good film {i}\t1\nbad film {i}\t0\n" for i in range(20)))
    (sst / "dev.tsv").write_text("sentence\tlabel\nfine \"quoted\" film\t1\nawful\t0\n")
    task = load_task(sst)
    assert task.name == "sst-2" and len(task.test) == 2
    assert task.test.texts[0] == 'fine "quoted" film'
    assert len(task.train) + len(task.dev) == 40 and task.split["test_from"] == "GLUE dev"
    cola = tmp_path / "CoLA"
    cola.mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (cola / f).write_text("".join(f"gj04\t{i % 2}\t\tsentence {i} .\n" for i in range(30)))
    task = load_task(cola)
    assert task.metric == "mcc" and task.labels == ["0", "1"] and "sentence 1 ." in task.test.texts
    sts = tmp_path / "STS-B"
    sts.mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (sts / f).write_text("index\tsentence1\tsentence2\tscore\n" + "".join(
            f"{i}\ta {i}\tb {i}\t{i / 10:.1f}\n" for i in range(1, 30)))
    task = load_task(sts)
    assert task.regression and task.pair and task.metric == "pearson"


def test_a_tsv_directory_of_ones_own_is_not_glue(tmp_path):
    own = tmp_path / "reviews"
    own.mkdir()
    _write(own / "train.tsv", [{"text": f"train {i}", "label": ["neg", "pos"][i % 2]}
                               for i in range(40)], "tsv")
    _write(own / "test.tsv", [{"text": f"test {i}", "label": ["neg", "pos"][i % 2]}
                              for i in range(10)], "tsv")
    task = load_task(own, seed=1)
    assert task.name == "reviews" and task.labels == ["neg", "pos"] and not task.pair
    assert "layout" not in task.split and task.split["split_from"] == "train"
    assert task.test.texts == [f"test {i}" for i in range(10)]
    assert sorted(task.train.texts + task.dev.texts) == sorted(f"train {i}" for i in range(40))
    assert task.labels[task.test.labels[3]] == "pos" and len(task.dev) == 4
    named = tmp_path / "SST-2"  # a GLUE name over one's own header: still one's own layout
    named.mkdir()
    for f in ("train.tsv", "test.tsv"):
        (named / f).write_text((own / f).read_text())
    assert load_task(named).test.texts == task.test.texts
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "train.tsv").write_text("sentence\ttarget\na\t1\n")
    with pytest.raises(DataError, match="names a GLUE task .*'text' and 'label'"):
        load_task(neither)


def test_a_dataset_registered_from_outside_loads_by_name():
    def colours():
        texts = [f"{c} thing {i}" for i in range(20) for c in ("red", "blue")]
        return texts, None, [t.split()[0] for t in texts]

    TASKS.register("toy_colours", Dataset("colour words (40, balanced)", "none", colours))
    try:
        task = load_task("toy_colours", seed=0)
        assert task.labels == ["blue", "red"] and len(task.train) == 32
        assert task.split["source"] == "toy_colours"
        with pytest.raises(ConfigError, match="already registered"):
            TASKS.register("toy_colours", Dataset("again", "none", colours))
    finally:
        TASKS.unregister("toy_colours")
    assert "toy_colours" not in TASKS and "rotten_tomatoes" in TASKS


def test_bad_task_input(tmp_path):
    (tmp_path / "nolabel.csv").write_text("text,target\na,1\nb,0\n")
    with pytest.raises(DataError, match="no 'label' column"):
        load_task(tmp_path / "nolabel.csv")
    d = tmp_path / "unseen"
    d.mkdir()
    _write(d / "train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "csv")
    _write(d / "dev.csv", [{"text": "c", "label": "x"}], "csv")
    _write(d / "test.csv", [{"text": "d", "label": "z"}], "csv")
    with pytest.raises(DataError, match="test split has labels never seen in training: 'z'"):
        load_task(d)
    e = tmp_path / "empty"
    e.mkdir()
    _write(e / "train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "csv")
    (e / "dev.csv").write_text("text,label\n")
    _write(e / "test.csv", [{"text": "d", "label": "x"}], "csv")
    with pytest.raises(DataError, match="dev split is empty"):
        load_task(e)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_task(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="not one of the installed datasets"):
        load_task("no_such_task")


def test_metrics_against_closed_forms():
    gold = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    pred = np.array([1, 1, 0, 0, 0, 1, 1, 1])
    tp, tn, fp, fn = 3, 2, 2, 1
    assert accuracy(pred, gold) == 5 / 8
    assert f1(pred, gold) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert mcc(pred, gold) == pytest.approx(
        (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert mcc(gold, gold) == pytest.approx(1.0) and mcc(np.zeros(8, int), gold) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties here
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert spearman(np.array([1, 2, 2, 3.0]), np.array([1, 2, 2, 3.0])) == pytest.approx(1.0)


def test_kendall_tau_against_counting_pairs():
    """τ-b by counting every pair by hand, with ties on both sides."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)
        pairs = [(a[i] - a[j], b[i] - b[j]) for i in range(9) for j in range(i + 1, 9)]
        concordant = sum(x * y > 0 for x, y in pairs)
        discordant = sum(x * y < 0 for x, y in pairs)
        untied_a, untied_b = sum(x != 0 for x, _ in pairs), sum(y != 0 for _, y in pairs)
        expected = ((concordant - discordant) / math.sqrt(untied_a * untied_b)
                    if untied_a and untied_b else 0.0)
        assert kendall_tau(a, b) == pytest.approx(expected)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0


def test_mcnemar_is_the_exact_binomial_test():
    a = np.array([1] * 10 + [0] * 2 + [1] * 30, bool)  # 10 a-only, 2 b-only, 30 both right
    b = np.array([0] * 10 + [1] * 2 + [1] * 30, bool)
    out = mcnemar(a, b)
    p = 2 * sum(math.comb(12, i) for i in range(3)) / 2 ** 12
    assert (out["a_only"], out["b_only"]) == (10, 2) and out["p_value"] == pytest.approx(p)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_bootstrap_against_the_normal_approximation() -> None:
    from bort.metrics import paired_bootstrap

    rng = np.random.default_rng(1)
    a = rng.random(2000) < 0.80
    b = np.where(rng.random(2000) < 0.9, a, ~a)  # b agrees with a on 90% of the items
    r = paired_bootstrap(a, b, seed=3)
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert r["difference"] == pytest.approx(d.mean())
    assert r["low"] == pytest.approx(d.mean() - half, abs=0.004)
    assert r["high"] == pytest.approx(d.mean() + half, abs=0.004)
    assert paired_bootstrap(a, a)["low"] == paired_bootstrap(a, a)["high"] == 0.0


# ---------------------------------------------------------------------- transfer text
EXCLUDED = ["the acting is superb but the story drags on far too long in the middle",
            "a warm , funny and quietly devastating film about two sisters",
            "must be seen to be believed", "simply a gem"]


def test_transfer_texts_drop_copies_of_the_excluded(tmp_path):
    lines = [
        "the acting is superb but the story drags on far too long in the middle",  # exact
        "the acting is superb but the story drags on far too long in the end.",  # Jaccard 0.83
        "A Warm, Funny and Quietly Devastating Film about Two Sisters!",  # the same normalised
        "A warm, funny and quietly.",  # too short
        "The orchestra rehearsed the symphony for weeks before the premiere. It went well.",
        "Farmers worry about the long dry summer ahead of them. Farmers worry about the long "
        "dry summer ahead of them.",  # a repeat
        "Stocks fell sharply on Tuesday after the quarterly report came out.",
        "He said it must be seen to be believed, and he was right.",  # holds an excluded
        "It is simply a gem of a movie and I loved every minute.",  # too short an excluded
    ]
    (tmp_path / "a.txt").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[4:]) + "\n")
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    texts, report = transfer_texts(files, EXCLUDED, limit=10, seed=0)
    assert texts == ["The orchestra rehearsed the symphony for weeks before the premiere.",
                     "Farmers worry about the long dry summer ahead of them.",
                     "Stocks fell sharply on Tuesday after the quarterly report came out.",
                     "It is simply a gem of a movie and I loved every minute."]
    assert report == {"read": 11, "out_of_length": 2, "repeated": 1, "exact": 1, "near": 3,
                      "eligible": 4, "kept": 4}
    two, again = transfer_texts(files, EXCLUDED, limit=2, seed=0)
    assert len(two) == again["kept"] == 2 and set(two) <= set(texts)
    assert two == transfer_texts(files, EXCLUDED, limit=2, seed=0)[0]  # seeded
    assert {tuple(transfer_texts(files, EXCLUDED, limit=2, seed=s)[0]) for s in range(8)} != {
        tuple(two)}
    assert transfer_texts(files, [], limit=10, seed=0)[1]["eligible"] == 8


def test_default_transfer_for_rotten_tomatoes_leaves_out_dev_and_test():
    from bort.data import _normalised

    task = load_task("rotten_tomatoes", seed=0)
    texts, report = default_transfer(task, 300, seed=0)
    assert len(texts) == report["kept"] == 300 and report["files"][0].endswith("imdb.txt")
    assert report["read"] > 300000 and report["near"] > 0 and report["excluded"] == (
        "rotten_tomatoes dev+test")
    held = {_normalised(t) for t in task.dev.texts + task.test.texts}
    assert not {_normalised(t) for t in texts} & held
    assert all(6 <= len(t.split()) <= 40 for t in texts)
