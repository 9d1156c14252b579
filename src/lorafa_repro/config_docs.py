"""Write the config reference (docs/config.md) from the typed schema (schema.py) and the config files (conf/).

    python -m lorafa_repro.config_docs --out docs/config.md      (make docs)

Every key: its type and default from the schema's dataclasses, its description from the comments above the
field in schema.py. Every config group: its options, each with the comment at the top of its file (the command
that uses it, then notes) and the keys it sets. tests/test_config_docs.py fails when the committed page differs
from what this writes, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lorafa_repro import schema

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
DEFAULT_OUT = REPO / "docs" / "config.md"
#: shown in full up to this many characters; longer values are cut (the file has them)
MAX_VALUE = 48


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines right above its declaration(s) in the class body, and its inline comment."""
    lines, first = inspect.getsourcelines(cls)
    node = ast.parse("".join(lines)).body[0]
    out: dict[str, list[str]] = {}
    for stmt in node.body:  # type: ignore[attr-defined]
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, i = [], stmt.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            text = lines[i].strip().lstrip("#").strip()
            if text.startswith("---"):  # a section header (e.g. "--- wmt16 family ---") is not this field's
                break
            above.insert(0, text)
            i -= 1
        line = lines[stmt.lineno - 1]
        inline = line.split("#", 1)[1].strip() if "#" in line and "'" not in line and '"' not in line else ""
        out.setdefault(stmt.target.id, []).extend(above + ([inline] if inline else []))
    return {k: " ".join(v) for k, v in out.items()}


def _value(v: Any) -> str:
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    text = str(list(v)) if isinstance(v, (list, tuple)) else str(v)
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return f"`{text[:MAX_VALUE]}…`" if len(text) > MAX_VALUE else f"`{text}`"


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _value(f.default_factory())  # type: ignore[misc]
    if f.default is dataclasses.MISSING or f.default == "???":
        return "required (the group's option sets it)"
    return _value(f.default)


def section_table(cls: type, prefix: str) -> list[str]:
    comments = field_comments(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_inner(f)):
            continue
        desc = (comments.get(f.name, "") or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{f.type}` | {_default(f)} | {desc} |")
    return rows


def _inner(f: dataclasses.Field) -> Any:
    """The dataclass a field nests (``model: ModelConfig``, ``tensorboard: Optional[TensorBoardLoggerConfig]``)."""
    name = str(f.type).removeprefix("Optional[").removesuffix("]")
    return getattr(schema, name, None)


def _file_comment(path: Path) -> tuple[str, str]:
    """(the command in the file's first comment line, the other leading comment lines)."""
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            head.append(text)
    command = head[0].split("   ")[0].split("  #")[0].strip() if head else ""
    rest = " ".join([head[0][len(command):].strip(" #")] + head[1:]).strip() if head else ""
    return command, rest


def _sets(path: Path, prefix: str, defaults: dict[str, Any]) -> str:
    """The keys an option file sets to something else than the schema's default, as ``key=value``."""
    flat: dict[str, Any] = {}

    def walk(node: Any, at: str) -> None:
        for k, v in node.items_ex(resolve=False):
            if k == "defaults":
                continue
            if OmegaConf.is_dict(v):
                walk(v, f"{at}{k}.")
            else:
                flat[f"{at}{k}"] = OmegaConf.to_container(v) if OmegaConf.is_list(v) else v

    walk(OmegaConf.load(path), prefix)
    return ", ".join(f"`{k}`={_value(v)}" for k, v in flat.items() if k not in defaults or defaults[k] != v)


def _schema_defaults() -> dict[str, Any]:
    from lorafa_repro.results import flatten

    return flatten(OmegaConf.to_container(OmegaConf.structured(schema.TrainConfig)))


def group_table(group: str) -> list[str]:
    rows = ["| option | command | notes | sets (besides the schema's defaults) |", "|---|---|---|---|"]
    defaults, prefix = _schema_defaults(), group.replace("/", ".") + "."
    for path in sorted((CONF_DIR / group).rglob("*.yaml")):
        option = path.relative_to(CONF_DIR / group).with_suffix("").as_posix()
        command, notes = _file_comment(path)
        sets = _sets(path, prefix, defaults).replace("|", "/")
        rows.append(f"| `{option}` | `{command}` | {notes.replace('|', '/')} | {sets} |")
    return rows


def config_groups() -> list[str]:
    """conf/'s groups: each folder under conf/ (options may sit in subfolders: ``task=glue/mrpc``), and Hydra's
    own groups under conf/hydra/ (``hydra/launcher``)."""
    groups = set()
    for path in CONF_DIR.rglob("*.yaml"):
        parts = path.relative_to(CONF_DIR).parts
        if len(parts) > 1:
            groups.add("/".join(parts[:2]) if parts[0] == "hydra" else parts[0])
    return sorted(groups)


def render() -> str:
    train = OmegaConf.load(CONF_DIR / "train.yaml")
    defaults = [", ".join(f"{k}={v}" for k, v in d.items()) for d in OmegaConf.to_container(train.defaults)
                if isinstance(d, dict)]
    out = ["# Config reference", "",
           "<!-- generated by `make docs` (python -m lorafa_repro.config_docs) from src/lorafa_repro/schema.py and "
           "conf/; do not edit by hand: tests/test_config_docs.py fails when this page is stale -->", "",
           "Every run is `conf/train.yaml` composed with one option per group and command-line overrides "
           "(`python -m lorafa_repro.train model=tiny_roberta method=lora_fa method.rank=4`). The typed schema "
           "(`src/lorafa_repro/schema.py`) rejects unknown keys and wrong types; `schema.validate` rejects bad "
           "values before any model loads, with one line naming the fix.", "",
           "Default choices (`conf/train.yaml`): " + "; ".join(f"`{d}`" for d in defaults) + ".", "",
           "## Keys", ""]
    sections = [(f.name, _inner(f)) for f in dataclasses.fields(schema.TrainConfig) if _inner(f) is not None]
    for name, cls in sections:
        out += [f"### `{name}`", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out += [" ".join(cls.__doc__.split()), ""]
        out += section_table(cls, f"{name}.") + [""]
        for f in dataclasses.fields(cls):  # nested sections (logger.tensorboard, ...)
            inner = _inner(f)
            if dataclasses.is_dataclass(inner):
                out += [f"#### `{name}.{f.name}`", "", *section_table(inner, f"{name}.{f.name}."), ""]
    out += ["### top level", "", *section_table(schema.TrainConfig, ""), "", "## Config groups", ""]
    for name in config_groups():
        out += [f"### `{name}`", "", *group_table(name), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write docs/config.md from schema.py and conf/")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(args.out)


if __name__ == "__main__":
    main()
