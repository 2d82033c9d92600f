"""The package's shape: short functions, no pickle, one default per setting."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "bort"
#: The longest a function may be (def line to last line), in the package and in `bort.cli`.
MAX_LINES, MAX_CLI_LINES = 60, 40


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_is_long() -> None:
    long = []
    for path in sources():
        limit = MAX_CLI_LINES if path.parent.name == "cli" else MAX_LINES
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({lines} lines > {limit})")
    assert not long, "\n".join(long)


def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """The tokens of a file without comments and strings (docstrings included)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING)]


def test_no_pickle_and_torch_load_only_with_weights_only() -> None:
    found = []
    for path in sources():
        names = [t.string for t in code_tokens(path) if t.type == tokenize.NAME]
        if {"pickle", "cPickle", "dill", "joblib"} & set(names):
            found.append(f"{path.relative_to(PACKAGE)}: imports or uses a pickle module")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                if not safe:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: torch.load "
                                 "without weights_only=True")
    assert not found, "\n".join(found)


def test_the_check_itself_catches_pickle(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""pickle in a docstring is fine."""\nimport pickle  # not this\n')
    assert "pickle" in [t.string for t in code_tokens(bad)]
    bad.write_text('"""pickle in a docstring is fine."""\n# pickle in a comment too\n')
    assert "pickle" not in [t.string for t in code_tokens(bad)]


def test_no_global_matplotlib_backend_switch() -> None:
    for path in sources():
        text = path.read_text(encoding="utf-8")
        assert "matplotlib.use(" not in text and "pyplot" not in text, path


# ---------------------------------------------------------------------- CLI defaults
def settings_options():
    """(command, option, settings field) for every option a settings field generates."""
    from bort.cli import COMMANDS, build_parser
    from bort.cli._options import option_name

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    out = []
    for name, module in COMMANDS.items():
        groups = {g.title: g for g in subparsers[name]._action_groups}
        for cls in module.SETTINGS:
            actions = {a.dest: a for a in groups[f"{cls.title} settings"]._group_actions}
            for f in fields(cls):
                if f.name in actions:
                    out.append((name, option_name(f), f, actions[f.name]))
    return out


def test_every_cli_default_is_its_field_default() -> None:
    options = settings_options()
    assert len(options) > 40  # distill, finetune, Agora, search, bench, export
    for command, option, f, action in options:
        default = f.default_factory() if f.default is MISSING else f.default
        assert action.default == default, f"bort {command} {option}"
        assert f.metadata["help"] and action.help.startswith(f.metadata["help"]), option


def test_the_default_check_would_see_a_drift(monkeypatch) -> None:
    """Change a field's default: the parser follows it (it is read from the field)."""
    from bort.config import DistillConfig

    field = next(f for f in fields(DistillConfig) if f.name == "steps")
    monkeypatch.setattr(field, "default", 7)
    steps = next(a for c, o, f, a in settings_options() if c == "distill" and o == "--steps")
    assert steps.default == 7


@pytest.mark.parametrize(("argv", "message"), [
    (["distill", "--teacher", "t", "--student", "s", "--corpus", "c", "--out", "o",
      "--steps", "0"], "distillation: steps must be >= 1, got 0"),
    (["finetune", "m", "--task", "t", "--out", "o", "--warmup", "2"],
     "fine-tuning: warmup must be <= 1, got 2"),
    (["search", "--space", "nope"], "search: space: unknown value 'nope'"),
])
def test_the_same_bad_value_gets_the_same_error_everywhere(argv, message, capsys,
                                                           tmp_path) -> None:
    from bort.cli import main
    from bort.config import DistillConfig, FinetuneConfig, SearchConfig
    from bort.errors import ConfigError
    from bort.pipeline import PipelineConfig

    assert main(argv) == 1
    assert message in capsys.readouterr().err
    section, key, value = {"distill": ("distill", "steps", 0),
                           "finetune": ("student", "warmup", 2),
                           "search": ("search", "space", "nope")}[argv[0]]
    cls = {"distill": DistillConfig, "finetune": FinetuneConfig, "search": SearchConfig}[argv[0]]
    with pytest.raises(ConfigError, match=message):
        cls(**{key: value})
    toml = tmp_path / "run.toml"
    toml.write_text(f"[{section}]\n{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_toml(toml)
