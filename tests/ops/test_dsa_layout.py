"""The DSA op's packed parameter layout is defined once, in csrc/dsa/dsa.h: the Python names
in mtt_fast.ops.dsa_layout must be the header's constants, every one, with the same values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtt_fast.ops import dsa_layout

HEADER = Path(__file__).resolve().parents[2] / "csrc" / "dsa" / "dsa.h"


def _python_name(k_name: str) -> str:
    """``kBoxRow0`` -> ``IDX_BOX_ROW0`` (index), ``kFlagCutout`` -> ``FLAG_CUTOUT`` (flag)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", k_name[1:]).upper()
    return snake


def header_constants() -> dict[str, int]:
    """``{python name: value}`` of every constant in dsa.h's layout block."""
    if not HEADER.is_file():
        pytest.skip(f"{HEADER} not found (not a source checkout)")
    text = HEADER.read_text()
    start = text.index("// ---- the packed parameter layout")
    end = text.index("// ---- end of the layout")
    out = {}
    for kind, name, value in re.findall(r"constexpr (int|int64_t) (k\w+) = (\d+);", text[start:end]):
        py = _python_name(name)
        if kind == "int" and py != "NUM_PARAMS":
            py = "IDX_" + py
        out[py] = int(value)
    return out


def test_header_block_is_found_and_complete():
    consts = header_constants()
    # the slots and flags the kernels read; a renamed or lost block would show here
    for name in ("IDX_A", "IDX_Q", "IDX_BOX_ROW0", "IDX_NOISE", "NUM_PARAMS", "GEOM_BILINEAR", "FLAG_NOISE"):
        assert name in consts


def test_python_layout_is_the_header_layout():
    consts = header_constants()
    python = {n: getattr(dsa_layout, n) for n in dsa_layout.__all__ if n.isupper()}
    assert python == consts


def test_layout_has_no_gaps_or_overlaps():
    consts = header_constants()
    width = {"IDX_A": 6, "IDX_Q": 6}
    slots = []
    for name, idx in consts.items():
        if name.startswith("IDX_"):
            slots += range(idx, idx + width.get(name, 1))
    assert sorted(slots) == list(range(consts["NUM_PARAMS"]))


def test_flags_helpers():
    f = dsa_layout.make_flags(dsa_layout.GEOM_BILINEAR, dsa_layout.COLOR_BEFORE, True, True)
    assert dsa_layout.geom_of(f) == dsa_layout.GEOM_BILINEAR
    assert dsa_layout.color_of(f) == dsa_layout.COLOR_BEFORE
    assert f & dsa_layout.FLAG_CUTOUT and f & dsa_layout.FLAG_NOISE
    assert f & ~dsa_layout.FLAGS_ALL == 0  # no bit outside the flags
