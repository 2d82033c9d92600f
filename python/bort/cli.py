"""The `bort` command. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .arch import Arch
from .errors import BortError


def _source(path: str | None) -> Path:
    if path is not None:
        return Path(path)
    from .assets import default_source

    return default_source()


def info(source: Path, batch: int, seq_len: int) -> dict[str, Any]:
    """What `bort info` shows: the architecture, parameters by part and FLOPs."""
    arch = Arch.from_pretrained(source)
    return {
        "source": str(source),
        "architecture": arch.describe(),
        "uniform": arch.is_uniform,
        "config": arch.to_config(),
        "params": arch.params().as_dict(),
        "flops": {"batch": batch, "seq_len": seq_len, "flops": arch.flops(batch, seq_len)},
    }


def _print_info(report: dict[str, Any]) -> None:
    arch = Arch.from_config(report["config"])
    p, f = report["params"], report["flops"]
    print(f"source        {report['source']}")
    print(f"architecture  {report['architecture']}")
    print(f"              {arch.family} family, {arch.activation} activation, "
          f"{arch.position_style} positions, LayerNorm eps {arch.layer_norm_eps:g}")
    print(f"vocabulary    {arch.vocab_size:,} tokens, {arch.max_positions:,} positions, "
          f"{arch.type_vocab_size} token types")
    if not arch.is_uniform:
        for i, layer in enumerate(arch.layers):
            attn = f"{layer.heads} heads × {layer.head_dim}" if layer.heads else "no attention"
            ffn = f"FFN {layer.ffn}" if layer.ffn else "no FFN"
            print(f"  layer {i:<3}   {attn}, {ffn}, {layer.params(arch.hidden):,} parameters")
    print(f"parameters    {p['total']:>14,}")
    for part in ("embeddings", "encoder", "pooler", "head"):
        share = 100 * p[part] / p["total"]
        print(f"  {part:<11} {p[part]:>14,}  {share:5.1f}%")
    print(f"FLOPs         {f['flops']:>14,}  (batch {f['batch']} × {f['seq_len']} tokens, "
          f"{f['flops'] / 1e9:.2f} GFLOP)")


def _runtimes() -> tuple[str, ...]:
    from .bench import RUNTIMES

    return RUNTIMES


def _bench(args: argparse.Namespace) -> int:
    import tempfile

    from .bench import markdown, run_matrix
    from .export import export_onnx
    from .model import BortModel

    source = _source(args.model)
    runtimes = tuple(args.runtimes or _runtimes())
    unknown = set(runtimes) - set(_runtimes())
    if unknown:
        raise ValueError(f"unknown runtimes {sorted(unknown)}; choose from {_runtimes()}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(BortModel.from_pretrained(source).eval(), onnx)
        shapes = {f"{args.batch}x{n}": [n] * args.batch for n in args.lengths}
        name = source.parent.name if source.name == "model" else source.name
        rows, notes = run_matrix({name: source}, {name: onnx}, shapes,
                                 args.threads, runtimes, args.rounds, Path(tmp))
    print(markdown(rows))
    for note in notes:
        print("note:", note)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "notes": notes}, indent=2) + "\n")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .extract import extract, target_arch
    from .model import BortModel

    source = BortModel.from_pretrained(args.source)
    if args.arch:
        try:
            d, a, h, i = (int(x) for x in args.arch.split(","))
        except ValueError:
            raise ValueError(f"--arch takes four integers D,A,H,I, got {args.arch!r}") from None
        target = target_arch(source.arch, d, a, h, i)
    else:
        try:
            spec = json.loads(args.arch_json.read_text())
            target = replace(source.arch, hidden=spec["hidden"], layers=tuple(spec["layers"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{args.arch_json}: expected {{\"hidden\": H, \"layers\": "
                             f"[[heads, head_dim, ffn], ...]}} ({e})") from None
    texts = None
    if args.texts:
        texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t.strip()]
        if not texts:
            raise ValueError(f"{args.texts} holds no text")
    model = extract(source, target, texts)
    model.save_pretrained(args.out)
    p = model.arch.params()
    print(f"wrote {args.out}: {model.arch.describe()}, {p.total:,} parameters "
          f"({100 * p.total / source.arch.params().total:.1f}% of the source)")
    return 0


def _distill(args: argparse.Namespace) -> int:
    import torch

    from .distill import Corpus, DistillConfig, distill
    from .model import BortModel

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # under torchrun
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        config = DistillConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                               lr=args.lr, eval_every=args.eval_every,
                               checkpoint_every=args.checkpoint_every, bf16=args.bf16)
        result = distill(BortModel.from_pretrained(args.teacher),
                         BortModel.from_pretrained(args.student), Corpus(args.corpus), args.out,
                         config, resume=args.resume)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    first, last = result["eval_loss"][0], result["eval_loss"][-1]
    print(f"held-out loss {first[1]:.4f} (step {first[0]}) -> {last[1]:.4f} (step {last[0]}); "
          f"student in {args.out / 'student'}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from .data import load_task
    from .finetune import FinetuneConfig, finetune
    from .model import BortModel

    task = load_task(args.task, seed=args.split_seed)
    config = FinetuneConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                            seq_len=args.seq_len, patience=args.patience,
                            evals_per_epoch=args.evals_per_epoch, seed=args.seed, bf16=args.bf16)
    model = BortModel.from_pretrained(args.model)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.agora:
        from .agora import AgoraConfig, finetune_agora

        if distributed:
            raise BortError("--agora runs in one process (its fits are small); drop torchrun")
        if not args.teacher:
            raise BortError("--agora needs --teacher DIR: a model fine-tuned on the task "
                            "(make one with `bort finetune SOURCE --task ...`)")
        thetas = json.loads(args.thetas) if args.thetas else [{"lr": lr} for lr in args.lrs]
        if not isinstance(thetas, list) or not all(isinstance(t, dict) for t in thetas):
            raise BortError('--thetas must be a JSON list of settings, e.g. [{"lr": 1e-4}]')
        result = finetune_agora(model, BortModel.from_pretrained(args.teacher), task, args.out,
                                config, thetas=thetas,
                                agora_config=AgoraConfig(max_rounds=args.rounds, seed=args.seed),
                                generators=args.generators, quantile=args.quantile,
                                per_point=args.per_point)
        for r in result.rounds:
            print(f"round {r['round']}: dev {r['dev']:.4f}, {r['mistakes']} mistakes, "
                  f"{r['points_added']} points added, test {r['test']:.4f}")
        print(f"best: round {result.best_round}, dev {result.dev:.4f}, test {task.metric} "
              f"{result.test:.4f}; model in {args.out / 'model'}")
        return 0
    if distributed:  # under torchrun
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        result = finetune(model, task, args.out, config, resume=args.resume)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    print(f"dev {task.metric} {result.dev[task.metric]:.4f}, test {task.metric} "
          f"{result.test[task.metric]:.4f}; model in {args.out / 'model'}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig, run_pipeline

    if args.config:
        config = PipelineConfig.from_toml(args.config, quick=args.quick)
    else:
        config = PipelineConfig.quick() if args.quick else PipelineConfig()
    overrides = {k: v for k, v in (("name", args.name), ("source", args.source),
                                   ("task", args.task), ("out", args.out),
                                   ("seed", args.seed), ("threads", args.threads))
                 if v is not None}
    if args.corpus:
        overrides["corpus"] = [str(f) for f in args.corpus]
    config = config.updated({k: str(v) if isinstance(v, Path) else v
                             for k, v in overrides.items()})
    report = run_pipeline(config, skip=args.skip, redo=args.redo)
    if report.is_file():
        print(report.read_text(encoding="utf-8"))
        print(f"wrote {report}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import torch

    from .costs import importance, measure_latency
    from .data import default_corpus
    from .distill import Corpus
    from .model import BortModel
    from .search import LayerwiseSpace, UniformSpace, optimal_subarchitecture, plot_front
    from .space import ROBERTA_LARGE

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = torch.distributed.get_rank()
    try:
        source = BortModel.from_pretrained(_source(args.source))
        corpus = Corpus(args.corpus or default_corpus())
        imp = importance(source, corpus.head(64))
        arch = source.arch
        if args.space == "layerwise":
            space = LayerwiseSpace.from_source(arch)
        elif args.space == "uniform":
            space = UniformSpace.around(arch)
        else:
            if arch.hidden < ROBERTA_LARGE.hidden or len(arch.layers) < 12:
                raise ValueError("--space bort needs a source at least as large as its grid "
                                 "(12 layers, 16 heads, hidden 1024, FFN 3072)")
            space = UniformSpace.bort(base=arch)
        options = {}
        if args.cost == "latency":
            heads = sorted({h for x in arch.layers for h in range(0, x.heads + 1)})
            ffns = sorted({f for x in arch.layers for f in range(0, x.ffn + 1, 64)} |
                          {x.ffn for x in arch.layers})
            options["table"] = measure_latency(arch, [arch.hidden], heads, ffns)
        result = optimal_subarchitecture(
            source, space, corpus, importance=imp, epsilon=args.epsilon, cost=args.cost,
            representatives_count=args.representatives, steps=args.steps,
            max_params=args.max_params, max_latency_ms=args.max_latency_ms,
            min_speedup=args.min_speedup, out=args.out, **options)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    unit = "ms" if args.cost == "latency" else "FLOPs"
    print(f"{'':2}{'architecture':60} {'params':>12} {unit:>12} {'error':>8} {'W':>8}")
    for x in result.evaluated:
        mark = "*" if x is result.optimum else " "
        print(f"{mark} {x.arch.describe()[:60]:60} {x.params:>12,} {x.cost:>12.4g} "
              f"{x.error:>8.4f} {x.w:>8.4f}")
    print(f"source: {result.maximum.params:,} parameters, {result.maximum.cost:.4g} {unit}; "
          f"{len(result.candidates)} candidates in the table")
    print(f"evaluation took {result.evaluation_seconds / 60:.2f} min (predicted "
          f"{result.predicted_seconds / 60:.2f}); the whole search {result.seconds / 60:.2f} min")
    plot_front(result, args.out / "front.png", unit, max_params=args.max_params,
               max_latency_ms=args.max_latency_ms)
    print(f"wrote {args.out / 'front.json'} and {args.out / 'front.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bort", description="Optimal sub-architecture extraction for BERT-family encoders.")
    parser.add_argument("--version", action="version", version=f"bort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_info = commands.add_parser(
        "info", help="architecture, parameters by part and FLOPs of a model")
    p_info.add_argument("source", nargs="?", help="model directory (default: the installed "
                        "all-MiniLM-L6-v2)")
    p_info.add_argument("--batch", type=int, default=1, help="batch size for the FLOP count")
    p_info.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p_info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p_export = commands.add_parser("export", help="write a model as one ONNX file")
    p_export.add_argument("model", help="model directory (bort or Hugging Face BERT/RoBERTa)")
    p_export.add_argument("--out", required=True, help="the .onnx file to write")
    p_export.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")

    p_extract = commands.add_parser("extract", help="initialise a sub-architecture from a source's "
                                    "weights")
    p_extract.add_argument("source", help="source model directory")
    group = p_extract.add_mutually_exclusive_group(required=True)
    group.add_argument("--arch", help="uniform target D,A,H,I (layers, heads, hidden, FFN)")
    group.add_argument("--arch-json", type=Path, help='layer-wise target: {"hidden": H, '
                       '"layers": [[heads, head_dim, ffn], ...]} (one entry per source layer)')
    p_extract.add_argument("--texts", type=Path, help="sample text, one per line, to rank heads, "
                           "neurons and channels by importance (default: weight magnitude)")
    p_extract.add_argument("--out", required=True, type=Path, help="directory to write")

    p_distill = commands.add_parser("distill", help="distil a student from a teacher on text")
    p_distill.add_argument("--teacher", required=True, help="teacher model directory")
    p_distill.add_argument("--student", required=True, help="student model directory "
                           "(e.g. from bort extract)")
    p_distill.add_argument("--corpus", required=True, nargs="+", type=Path,
                           help="plain-text files, one document per line")
    p_distill.add_argument("--out", required=True, type=Path,
                           help="run directory: checkpoints/ and student/")
    p_distill.add_argument("--steps", type=int, default=1000)
    p_distill.add_argument("--batch-size", type=int, default=32)
    p_distill.add_argument("--seq-len", type=int, default=128)
    p_distill.add_argument("--lr", type=float, default=1e-4)
    p_distill.add_argument("--eval-every", type=int, default=100)
    p_distill.add_argument("--checkpoint-every", type=int, default=200)
    p_distill.add_argument("--bf16", action="store_true", help="bf16 autocast for the student")
    p_distill.add_argument("--resume", action="store_true",
                           help="continue from the newest checkpoint under --out")

    p_ft = commands.add_parser("finetune", help="fine-tune a model on a labelled task "
                               "(optionally with Agora)")
    p_ft.add_argument("model", help="model directory (a source, or a distilled student)")
    p_ft.add_argument("--task", required=True, help="installed dataset (rotten_tomatoes, imdb, "
                      "bbc_news), a GLUE directory, or CSV/TSV/JSONL file(s)")
    p_ft.add_argument("--out", required=True, type=Path, help="directory to write")
    p_ft.add_argument("--lr", type=float, default=5e-5)
    p_ft.add_argument("--epochs", type=float, default=3.0)
    p_ft.add_argument("--batch-size", type=int, default=32)
    p_ft.add_argument("--seq-len", type=int, default=128)
    p_ft.add_argument("--patience", type=int, default=2, help="evaluations without a better "
                      "dev score before stopping")
    p_ft.add_argument("--evals-per-epoch", type=int, default=1)
    p_ft.add_argument("--seed", type=int, default=0)
    p_ft.add_argument("--split-seed", type=int, default=0, help="seed of the train/dev/test "
                      "split where the task has none")
    p_ft.add_argument("--bf16", action="store_true")
    p_ft.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p_ft.add_argument("--agora", action="store_true", help="fine-tune with Agora")
    p_ft.add_argument("--teacher", help="(Agora) a model fine-tuned on the task, to label points")
    p_ft.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-5, 2e-5],
                      help="(Agora) Θ as learning rates")
    p_ft.add_argument("--thetas", help='(Agora) Θ as JSON, e.g. [{"lr": 1e-4, "epochs": 2}]')
    p_ft.add_argument("--rounds", type=int, default=10, help="(Agora) at most this many rounds")
    p_ft.add_argument("--generators", nargs="+", default=["embedding"],
                      choices=["embedding", "dropout", "swap", "synonyms"])
    p_ft.add_argument("--quantile", type=float, default=0.5, help="(Agora) ball radius as this "
                      "quantile of nearest-neighbour distances in the embedding table")
    p_ft.add_argument("--per-point", type=int, default=8, help="(Agora) new points per mistake")

    p_pipe = commands.add_parser("pipeline", help="the main job: teacher, search, extract, "
                                 "distill, Agora, export, bench, report")
    p_pipe.add_argument("--config", type=Path, help="TOML file overriding any setting")
    p_pipe.add_argument("--quick", action="store_true", help="the few-minute version")
    p_pipe.add_argument("--name", help="run name: results go to OUT/NAME (default demo/quick)")
    p_pipe.add_argument("--source", type=Path, help="source model directory (default: "
                        "all-MiniLM-L6-v2)")
    p_pipe.add_argument("--task", help="installed dataset, GLUE directory or CSV/TSV/JSONL "
                        "(default: rotten_tomatoes)")
    p_pipe.add_argument("--corpus", nargs="+", type=Path, help="distillation text files "
                        "(default: the installed default corpus)")
    p_pipe.add_argument("--out", type=Path, help="runs directory (default: runs)")
    p_pipe.add_argument("--seed", type=int)
    p_pipe.add_argument("--threads", type=int, help="torch threads for training")
    p_pipe.add_argument("--skip", nargs="+", default=[], metavar="STAGE",
                        help="stages not to run")
    p_pipe.add_argument("--redo", metavar="STAGE", help="run this stage and all later ones again")

    p_search = commands.add_parser("search", help="the Bort search: frontier table, surrogate "
                                   "error by short distillation, W-coefficient")
    p_search.add_argument("source", nargs="?", help="source model (default: all-MiniLM-L6-v2)")
    p_search.add_argument("--space", choices=["layerwise", "uniform", "bort"], default="layerwise")
    p_search.add_argument("--cost", choices=["flops", "latency"], default="flops")
    p_search.add_argument("--epsilon", type=float, default=0.01)
    p_search.add_argument("--representatives", type=int, default=8)
    p_search.add_argument("--steps", type=int, default=50, help="distillation steps per candidate")
    p_search.add_argument("--max-params", type=int)
    p_search.add_argument("--max-latency-ms", type=float)
    p_search.add_argument("--min-speedup", type=float)
    p_search.add_argument("--corpus", nargs="+", type=Path,
                          help="text files (default: bort's default corpus)")
    p_search.add_argument("--out", type=Path, default=Path("runs/search"))

    p_bench = commands.add_parser("bench", help="latency of a model: bort vs torch, ONNX Runtime, "
                                  "OpenVINO (whichever are installed)")
    p_bench.add_argument("model", nargs="?", help="model directory (default: all-MiniLM-L6-v2)")
    p_bench.add_argument("--lengths", type=int, nargs="+", default=[16, 128],
                         help="sequence lengths, batch 1 each")
    p_bench.add_argument("--batch", type=int, default=1)
    p_bench.add_argument("--threads", type=int, nargs="+", default=[1])
    p_bench.add_argument("--runtimes", nargs="+", default=None,
                         help="subset of: " + " ".join(_runtimes()))
    p_bench.add_argument("--rounds", type=int, default=10)
    p_bench.add_argument("--json", type=Path, help="also write the rows as JSON here")

    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            report = info(_source(args.source), args.batch, args.seq_len)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                _print_info(report)
        elif args.command == "export":
            from .export import export_onnx
            from .model import BortModel

            path = export_onnx(BortModel.from_pretrained(args.model), args.out, opset=args.opset)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        elif args.command == "bench":
            return _bench(args)
        elif args.command == "extract":
            return _extract(args)
        elif args.command == "distill":
            return _distill(args)
        elif args.command == "search":
            return _search(args)
        elif args.command == "finetune":
            return _finetune(args)
        elif args.command == "pipeline":
            return _pipeline(args)
    except (BortError, OSError, ValueError) as e:
        print(f"bort {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
