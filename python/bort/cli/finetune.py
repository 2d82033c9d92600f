"""`bort finetune`: fine-tuning on a labelled task, plainly, by task distillation from a
teacher (``--teacher DIR``, optionally ``--transfer FILE``), or with Agora (``--agora``:
bort's Agora-style rounds with their controls, `bort.agora_style`; ``--agora paper``: the
paper's loop, `bort.agora`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import AgoraConfig, FinetuneConfig
from ..distributed import is_main, launched_by_torchrun, torchrun
from ..errors import BortError
from ._options import add_settings, settings_from

NAME = "finetune"
HELP = "fine-tune a model on a labelled task (optionally distilled from a teacher, or Agora)"
SETTINGS = (FinetuneConfig, AgoraConfig)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory (a source, or a distilled student)")
    parser.add_argument("--task", required=True, help="installed dataset (bort.data.TASKS), a "
                        "GLUE directory, or CSV/TSV/JSONL file(s)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/dev/test "
                        "split where the task has none (default: 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--teacher", help="a model fine-tuned on the task: without --agora, "
                        "task distillation from its soft labels; with --agora, the labeller "
                        "of new points")
    parser.add_argument("--transfer", type=Path, nargs="+", metavar="FILE", help="text files "
                        "whose sentences (the task's dev and test texts and near copies "
                        "removed) the teacher labels as extra training data (needs --teacher)")
    add_settings(parser, FinetuneConfig)
    agora = parser.add_argument_group("Agora")
    agora.add_argument("--agora", nargs="?", const="bort", choices=("bort", "paper"),
                       help="fine-tune with Agora: bort's Agora-style rounds from the model "
                       "(task distillation first; agora, random and distillation arms; the "
                       "pool is the --transfer sentences), or 'paper', the paper's loop")
    agora.add_argument("--lrs", type=float, nargs="+", help="Θ as learning rates, a shorthand "
                       "for --thetas")
    add_settings(parser, AgoraConfig, skip=("seed",))  # one --seed for both


def agora_config(args: argparse.Namespace) -> AgoraConfig:
    """Agora's settings from the options; --lrs stands for a Θ of learning rates."""
    thetas = [{"lr": lr} for lr in args.lrs] if args.lrs else args.thetas
    return settings_from(args, AgoraConfig, thetas=thetas, seed=args.seed)


def check_agora(args: argparse.Namespace) -> AgoraConfig:
    """Agora's settings, after checking that Agora can run as asked."""
    if launched_by_torchrun():
        raise BortError("--agora runs in one process (its fits are small); drop torchrun")
    if not args.teacher:
        raise BortError("--agora needs --teacher DIR: a model fine-tuned on the task "
                        "(make one with `bort finetune SOURCE --task ...`)")
    if args.transfer and args.agora == "paper":
        raise BortError("--transfer is for task distillation and bort's Agora; the paper's "
                        "loop makes its own new points")
    return agora_config(args)


def transfer_set(args: argparse.Namespace, task, config: FinetuneConfig) -> list[str] | None:
    """The --transfer files' sentences without the task's dev and test texts (and near copies
    of them), at most ``transfer_limit``; None without --transfer."""
    from ..data import transfer_texts

    if not args.transfer:
        return None
    exclude = [t for split in (task.dev, task.test) for t in split.texts + (split.pairs or [])]
    texts, report = transfer_texts(args.transfer, exclude, limit=config.transfer_limit,
                                   seed=config.seed)
    if is_main():
        print(f"transfer: {report['read']} sentences read, {report['out_of_length']} of another "
              f"length, {report['repeated']} repeats, {report['exact']} copies and "
              f"{report['near']} near copies of dev/test removed; {report['kept']} kept")
    return texts


def run_agora(args: argparse.Namespace, task, model, config: FinetuneConfig,
              agora: AgoraConfig) -> int:
    from ..model import BortModel

    teacher = BortModel.from_pretrained(args.teacher)
    if args.agora == "paper":
        from ..agora import finetune_agora

        result = finetune_agora(model, teacher, task, args.out, config, agora)
        for r in result.rounds:
            print(f"round {r['round']}: dev {r['dev']:.4f}, {r['mistakes']} mistakes, "
                  f"{r['points_added']} points added, test {r['test']:.4f}")
        print(f"best: round {result.best_round}, dev {result.dev:.4f}, test {task.metric} "
              f"{result.test:.4f}; model in {args.out / 'model'}")
        return 0
    from ..agora_style import finetune_rounds

    record = finetune_rounds(model, teacher, task, args.out, config, agora,
                             transfer=transfer_set(args, task, config))
    for arm, scores in record["arms"].items():
        print(f"{arm}: selection {task.metric} {scores['selection']:.4f}, test "
              f"{scores['test'][task.metric]:.4f}")
    print(f"shipped: {record['shipped']} (best on the selection data); model in "
          f"{args.out / 'model'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..data import load_task
    from ..finetune import finetune
    from ..model import BortModel

    config = settings_from(args, FinetuneConfig)
    agora = check_agora(args) if args.agora else None  # bad settings fail before any work
    if args.transfer and not args.teacher:
        raise BortError("--transfer needs --teacher DIR: the model that labels its texts")
    task = load_task(args.task, seed=args.split_seed)
    model = BortModel.from_pretrained(args.model)
    if agora is not None:
        return run_agora(args, task, model, config, agora)
    teacher = BortModel.from_pretrained(args.teacher) if args.teacher else None
    with torchrun():
        transfer = transfer_set(args, task, config)
        result = finetune(model, task, args.out, config, teacher=teacher, transfer=transfer,
                          resume=args.resume)
    print(f"dev {task.metric} {result.dev[task.metric]:.4f}, test {task.metric} "
          f"{result.test[task.metric]:.4f}; model in {args.out / 'model'}")
    return 0
