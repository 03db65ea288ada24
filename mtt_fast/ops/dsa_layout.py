"""The DSA op's packed parameter layout and flags: Python names of csrc/dsa/dsa.h's constants.

The layout is defined once, in the "packed parameter layout" block of csrc/dsa/dsa.h; this
module gives each constant there its Python name (``kBoxRow0`` -> ``IDX_BOX_ROW0``, index
constants with an ``IDX_`` prefix; ``kNumParams`` -> ``NUM_PARAMS``; flag constants
``kFlagCutout`` -> ``FLAG_CUTOUT``), and tests/ops/test_dsa_layout.py parses the header and
checks that both hold the same names and values. Plain Python with no torch import, so the
spec (:mod:`mtt_fast.ops.reference`) and the packer (:mod:`mtt_fast.augment.fused`) can use
it whether or not the extension is built. The table of what each slot means is in
:mod:`mtt_fast.ops.dsa`.
"""

from __future__ import annotations

__all__ = [
    "COLOR_AFTER",
    "COLOR_BEFORE",
    "COLOR_MASK",
    "COLOR_NONE",
    "COLOR_SHIFT",
    "FLAGS_ALL",
    "FLAG_CUTOUT",
    "FLAG_NOISE",
    "GEOM_BILINEAR",
    "GEOM_IDENTITY",
    "GEOM_INTEGER",
    "GEOM_MASK",
    "IDX_A",
    "IDX_BOX_COL0",
    "IDX_BOX_COL1",
    "IDX_BOX_ROW0",
    "IDX_BOX_ROW1",
    "IDX_BRIGHT",
    "IDX_CONTRAST",
    "IDX_NOISE",
    "IDX_Q",
    "IDX_SAT",
    "NUM_PARAMS",
    "color_of",
    "geom_of",
    "make_flags",
]

# ---- the packed layout ([B, NUM_PARAMS], one row per sample) ------------------------
IDX_A = 0  # 6 values
IDX_BRIGHT = 6
IDX_SAT = 7
IDX_CONTRAST = 8
IDX_Q = 9  # 6 values
IDX_BOX_ROW0 = 15
IDX_BOX_ROW1 = 16
IDX_BOX_COL0 = 17
IDX_BOX_COL1 = 18
IDX_NOISE = 19
NUM_PARAMS = 20

# ---- flags -----------------------------------------------------------------------------
GEOM_MASK = 3
GEOM_IDENTITY = 0
GEOM_INTEGER = 1
GEOM_BILINEAR = 2
COLOR_SHIFT = 2
COLOR_MASK = 3
COLOR_NONE = 0
COLOR_AFTER = 1
COLOR_BEFORE = 2
FLAG_CUTOUT = 16
FLAG_NOISE = 32
FLAGS_ALL = 63


def make_flags(geom: int, color: int, cutout: bool, noise: bool) -> int:
    """The ``flags`` int of the op from its four switches."""
    return (
        int(geom)
        | (int(color) << COLOR_SHIFT)
        | (FLAG_CUTOUT if cutout else 0)
        | (FLAG_NOISE if noise else 0)
    )


def geom_of(flags: int) -> int:
    """The geometry of ``flags`` (``GEOM_*``)."""
    return int(flags) & GEOM_MASK


def color_of(flags: int) -> int:
    """The color placement of ``flags`` (``COLOR_*``)."""
    return (int(flags) >> COLOR_SHIFT) & COLOR_MASK
