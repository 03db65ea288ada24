"""Every distillation method by name (``--method``)."""

from __future__ import annotations

from mtt_fast.distill.coreset import Herding, KCenter
from mtt_fast.distill.glad import GLaD
from mtt_fast.distill.methods import DD, MTT, Method, RandomReal
from mtt_fast.errors import UserError

#: name -> method class, in the order the CLI lists them
METHODS: dict[str, type[Method]] = {m.name: m for m in (MTT, GLaD, DD, RandomReal, Herding, KCenter)}


def method_class(name: str) -> type[Method]:
    """The method called ``name``; a :class:`UserError` names the choices otherwise."""
    if name not in METHODS:
        raise UserError(f"--method {name}: choose one of {', '.join(METHODS)}")
    return METHODS[name]
