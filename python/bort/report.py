"""The pipeline's report: markdown tables and the training-curves figure, from the results that
`bort.pipeline` records per stage (``pipeline.json``'s ``stages``).

Plots are `matplotlib.figure.Figure` objects (no global backend switch in the user's process):
the caller saves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["curves_figure", "pipeline_report"]

#: The fine-tuning arms the report shows, in this order, and how it names them.
ARMS = (("distilled", "student, task-distilled"), ("agora", "student, bort's Agora"),
        ("random", "student, random points (Agora's control)"),
        ("distill", "student, more task distillation (Agora's control)"),
        ("plain", "student, plain fine-tuning (no teacher)"))
#: The rounds arms of bort's Agora and their colours in the curves.
_ROUND_ARMS = (("agora", "tab:red"), ("random", "tab:blue"), ("distill", "tab:green"))
#: The parts of each latency key: (model, runtime, shape).
Latency = dict[tuple[str, str, str], float]


def curves_figure(stages: Mapping[str, Any]):
    """Distillation loss by step, and each Agora arm's score on the selection data by round."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    a, b = fig.subplots(1, 2)
    loss = stages["distill"]["eval_loss"]
    a.plot([s for s, _ in loss], [v for _, v in loss], marker="o")
    a.set(xlabel="distillation step", ylabel="held-out distillation loss",
          title="distillation from the source")
    ft = stages["finetune"]
    for arm, color in _ROUND_ARMS:  # round 0 is the task-distilled start
        rounds = ft.get(arm, {}).get("rounds")
        if rounds:
            r = [0, *[x["round"] for x in rounds]]
            b.plot(r, [ft["distilled"]["selection"], *[x["score"] for x in rounds]], "-o",
                   color=color, label=f"{arm}: best θ of the round")
            b.set_xticks(r)
    if "data" in ft:
        b.axhline(ft["data"]["teacher_selection"], color="gray", lw=0.8, label="teacher")
    b.set(xlabel="round", ylabel="selection score", title="bort's Agora: rounds")
    if b.get_legend_handles_labels()[0]:  # only a run with Agora arms has rounds
        b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _ms(latency: Latency, key: tuple[str, str, str]) -> str:
    return f"{latency[key]:.2f}" if key in latency else "—"


def _ratio(latency: Latency, slow: tuple[str, str, str], fast: tuple[str, str, str]) -> str:
    return f"{latency[slow] / latency[fast]:.1f}×" if slow in latency and fast in latency else "—"


def _stages_section(stages: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    minutes = [stages[s]["seconds"] / 60 for s in order]
    rows = [[s, f"{m:.1f}"] for s, m in zip(order, minutes)]
    rows.append(["**total** (before the report)", f"**{sum(minutes):.1f}**"])
    return ["## Stages", "", *_table(["stage", "minutes"], rows), ""]


def _search_section(search: Mapping[str, Any]) -> list[str]:
    kind = search.get("cost_kind", "flops")
    cost, source = search["cost"], search["source_cost"]
    what = {"flops": f"{cost / 1e9:.3f} GFLOP", "latency": f"{cost:.3g} ms"}.get(kind, f"{cost:g}")
    rule = {"w": "the largest W-coefficient", "accurate": "the lowest surrogate error",
            "fastest": "the cheapest near the lowest surrogate error"}.get(search.get("rule"), "W")
    speedup = search.get("measured_speedup")
    measured = (f" Timed end to end with bort's encoder it is **{speedup:.1f}×** faster than the "
                "source." if speedup else "")
    return ["## The chosen architecture", "",
            f"The search ({kind} at 1 × 128 tokens as the cost, {search['candidates']} candidates "
            f"in the frontier table, {search['evaluated']} evaluated, chosen by {rule} among those "
            f"meeting the constraints) chose `{search['describe']}`: {search['params']:,} "
            f"parameters ({search['params'] / search['source_params']:.0%} of the source's "
            f"{search['source_params']:,}) and {what} ({cost / source:.1%} of the source's)."
            f"{measured} The paper's rule (largest W) would take `{search.get('by_w', '—')}`. "
            "Front: `search/front.png`.", ""]


def _accuracy_section(stages: Mapping[str, Any], metric: str) -> list[str]:
    search, teacher, ft = stages["search"], stages["teacher"], stages["finetune"]
    rows = [["teacher (source fine-tuned)", f"{search['source_params']:,}",
             f"{teacher['test'][metric]:.4f}", "—", "—", "—"]]
    for arm, name in ARMS:
        if arm in ft:
            a = ft[arm]
            rows.append([f"**{name}** (shipped)" if arm == ft["shipped"] else name,
                         f"{search['params']:,}", f"{a['test'][metric]:.4f}",
                         f"{a['selection']:.4f}",
                         "—" if arm == "distilled" else _ci(a.get("vs_distilled")),
                         f"{a['train_steps']:,}"])
    data = ft.get("data", {})
    where = ("the selection half of dev (no arm trained on it; the teacher scores "
             f"{data['teacher_selection']:.4f} there)" if data.get("selection") == "halves"
             else "dev")
    rounds = (f" The Agora arms ran from the task-distilled student ({data['pool']:,} pool "
              "sentences to retrieve from); an arm whose rounds never beat its start returns "
              "it." if data else "")
    return ["## Accuracy on the test split", "",
            *_table(["model", "parameters", f"test {metric}", f"selection {metric}",
                     "test − task-distilled, points [95% CI]", "training steps"], rows),
            "", f"Each arm was early-stopped and chosen on {where}; the one best there is "
            f"shipped.{rounds} The test split is read once per arm, on its final model; "
            "differences are paired over the test items (bootstrap, 10,000 resamples).", ""]


def _embedding_section(stages: Mapping[str, Any]) -> list[str]:
    search, ft = stages["search"], stages["finetune"]["distilled"]  # the only arm
    scores = [k for k in ft["test"] if k != "cosine"]
    rows = [["**student, embedding-distilled** (the one shipped)", f"{search['params']:,}",
             f"{ft['test']['cosine']:.4f}", *[f"{ft['test'][k]:.4f}" for k in scores],
             f"{ft['dev']['cosine']:.4f}", f"{ft['train_steps']:,}"]]
    n = ft["passages"]
    return ["## The student's vectors against the teacher's (the source), test passages", "",
            *_table(["model", "parameters", "mean cosine", *scores, "dev cosine",
                     "training steps"], rows), "",
            f"Passages of the corpus: {n['train']:,} to train on, {n['dev']:,} dev and "
            f"{n['test']:,} test, held out of every distillation. Mean pooling, unit length, as "
            "the source; recall@10: of each test passage's 10 nearest test passages by the "
            "teacher, the share also among its 10 nearest by the student.", ""]


def _embedding_runtime_section(bench: Mapping[str, Any], latency: Latency,
                               shapes: list[str]) -> list[str]:
    last, rows = shapes[-1], []
    for dtype, acc in bench["accuracy"].items():
        runtime = f"bort-{dtype}"
        rows.append([dtype, *[f"{acc[k]:.4f}" for k in acc["vs_fp32"]],
                     *[_ci(c) for c in acc["vs_fp32"].values()],
                     *[_ms(latency, ("student", runtime, s)) for s in shapes],
                     _ratio(latency, ("source", runtime, last), ("student", runtime, last))])
    names = list(next(iter(bench["accuracy"].values()))["vs_fp32"])
    header = ["dtype", *names, *[f"{k} vs fp32, ×100 [95% CI]" for k in names],
              *[f"ms at {s}" for s in shapes], f"speed-up over the source (same dtype, {last})"]
    return ["## The student under bort's runtime", "", *_table(header, rows), "",
            "Scores against the source's bort fp32 vectors; differences are paired over the test "
            "passages (bootstrap, 10,000 resamples).", ""]


def _ci(r: Mapping[str, float] | None) -> str:
    if not r:
        return "—"
    return f"{100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"


def _runtime_section(bench: Mapping[str, Any], latency: Latency, shapes: list[str]) -> list[str]:
    last = shapes[-1]
    rows = []
    for dtype, acc in bench["accuracy"].items():
        runtime = f"bort-{dtype}"
        rows.append([dtype, f"{acc['accuracy']:.4f}", _ci(acc.get("vs_fp32")),
                     _ci(acc.get("vs_teacher")),
                     *[_ms(latency, ("student", runtime, s)) for s in shapes],
                     _ratio(latency, ("source", runtime, last), ("student", runtime, last))])
    header = ["dtype", "test accuracy", "vs fp32, points [95% CI]", "vs teacher, points [95% CI]",
              *[f"ms at {s}" for s in shapes], f"speed-up over the source (same dtype, {last})"]
    return ["## The student under bort's runtime", "", *_table(header, rows), "",
            "Differences are paired over the test items (bootstrap, 10,000 resamples); the "
            "teacher runs in bort fp32.", ""]


def _latency_section(bench: Mapping[str, Any], latency: Latency, shapes: list[str],
                     b: Any) -> list[str]:
    runtimes = list(dict.fromkeys(r["runtime"] for r in bench["rows"]))
    rows = [[model, runtime, *[_ms(latency, (model, runtime, s)) for s in shapes]]
            for model in ("source", "student") for runtime in runtimes]
    others = [r for r in runtimes if not r.startswith("bort")]
    ratios = [[f"bort-{dtype}", other,
               *[_ratio(latency, ("source", other, s), ("student", f"bort-{dtype}", s))
                 for s in shapes]] for dtype in bench["accuracy"] for other in others]
    return ["## Latency: source and student under each runtime", "",
            f"Median ms at batch {b.batch}, {', '.join(map(str, b.threads))} thread(s), "
            f"{b.rounds} interleaved rounds (`bench/latency.md`, `bench/latency.png`), on "
            f"{bench.get('cpu', 'a CPU the run did not record')}.", "",
            *_table(["model", "runtime", *shapes], rows), "",
            "Speed-up of the student under bort over the source under each other runtime "
            "(source ms / student ms):", "",
            *_table(["student", "vs source on", *shapes], ratios), "",
            *[f"- note: {note}" for note in bench["notes"]]]


def pipeline_report(config: Any, source: str, metric: str, sizes: Mapping[str, int],
                    stages: Mapping[str, Any], order: Sequence[str]) -> str:
    """``report.md`` of a finished run: stage times, the chosen architecture, accuracy of
    teacher and students, the student under each bort dtype, and latency against the peers."""
    bench = stages["bench"]
    latency = {(r["model"], r["runtime"], r["shape"]): r["ms"] for r in bench["rows"]}
    shapes = list(dict.fromkeys(r["shape"] for r in bench["rows"]))
    embedding = stages["teacher"].get("embedding", False)
    data = ("passages of the corpus" if embedding else
            f"train {sizes['train']}, dev {sizes['dev']}, test {sizes['test']}; split in "
            "`split.json`")
    lines = [f"# bort pipeline: {config.name}", "",
             f"Source `{source}`, task `{config.task}` ({data}), seed {config.seed}.",
             "", *_stages_section(stages, order), *_search_section(stages["search"]),
             *(_embedding_section(stages) if embedding else _accuracy_section(stages, metric)),
             *(_embedding_runtime_section(bench, latency, shapes) if embedding
               else _runtime_section(bench, latency, shapes)),
             *_latency_section(bench, latency, shapes, config.bench), "",
             "Figures: `search/front.png` (the front), `curves.png` (training), "
             "`bench/latency.png` (latency).", ""]
    return "\n".join(lines)
