"""Imports run down the layers: the generator contract and the classifier loop sit below their users."""

from __future__ import annotations

import ast
from pathlib import Path

import mtt_fast

PKG = Path(mtt_fast.__file__).parent


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_top_level)`` of every ``import`` / ``from ... import`` in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
    return out


def files(*parts: str) -> list[Path]:
    out = []
    for p in parts:
        q = PKG / p
        out.extend(sorted(q.rglob("*.py")) if q.is_dir() else [q])
    return out


def test_lower_layers_do_not_import_generative_or_experts():
    bad = [(f.relative_to(PKG).as_posix(), m)
           for f in files("synth", "models", "evaluate", "fit.py", "optim_state.py")
           for m, _ in imports(f) if m.startswith(("mtt_fast.generative", "mtt_fast.experts"))]
    assert bad == []


def test_generative_imports_synth_at_the_top():
    lazy = [(f.name, m) for f in files("generative") for m, top in imports(f)
            if m.startswith("mtt_fast.synth") and not top]
    assert lazy == []


def test_the_checker_sees_a_lazy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from mtt_fast.synth import save_grid\n")
    assert imports(f) == [("os", True), ("mtt_fast.synth", False)]
