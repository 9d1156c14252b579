"""No import circles inside the package: every import (module level and function level) is an edge."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import lorafa_repro

PACKAGE = "lorafa_repro"
ROOT = Path(lorafa_repro.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body (a package's ``__init__`` for names
    it defines, the submodule for ``from pkg import submodule``)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return {m for m in out if m in modules and m != name}


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    files = sorted(root.rglob("*.py"))
    names = {f: _module_name(f, root) for f in files}
    modules = set(names.values())
    graph = nx.DiGraph()
    for f, name in names.items():
        graph.add_node(name)
        graph.add_edges_from((name, m) for m in _imports(f, name, modules))
    return graph


def test_package_has_no_import_cycles() -> None:
    cycles = sorted(" -> ".join(c + [c[0]]) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_walker_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The walker must find a cycle closed only by a function-level import, a relative import, or a
    ``from package import submodule`` — the three ways the package's real circles were written."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import g\n")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("def h():\n    from pkg.sub import g\n")
    graph = import_graph(pkg)
    cycles = {tuple(sorted(c)) for c in nx.simple_cycles(graph)}
    assert ("pkg.a", "pkg.b") in cycles
    assert ("pkg.sub", "pkg.sub.c", "pkg.sub.d") in cycles
    graph.remove_edge("pkg.b", "pkg.a")
    assert ("pkg.a", "pkg.b") not in {tuple(sorted(c)) for c in nx.simple_cycles(graph)}


def test_4bit_lora_fa_layer_registered_without_back_import() -> None:
    """lora_fa no longer imports qlora_fa to register the 4-bit layer; importing any methods module must still
    leave it registered (the package's ``__init__`` imports qlora_fa)."""
    code = ("from lorafa_repro.methods.lora_fa import LORA_FA_CLASSES\n"
            "from peft.tuners.lora.bnb import Linear4bit\n"
            "import sys\n"
            "qlora_fa = sys.modules['lorafa_repro.methods.qlora_fa']\n"
            "assert LORA_FA_CLASSES[Linear4bit] is qlora_fa.QLoraFALinear4bit, LORA_FA_CLASSES\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
