"""The implementation switch of every op family: ``impl="auto" | "fused" | "reference"``.

``"fused"`` is the compiled op (``torch.ops.mtt_fast``; an error where it cannot run),
``"reference"`` the pure-PyTorch spec (:mod:`mtt_fast.ops.reference`, or the augmentation's
own functions for DSA), ``"auto"`` the fused op where it can run, else the reference. The
same words are the CLI's ``--dsa-impl`` / ``--block-impl`` values and the configs' fields.

``"compiled"`` (trajectory_loss's word before the families shared one) is accepted as an
alias of ``"fused"``, so a value from an old config file or call still works.
"""

from __future__ import annotations

__all__ = ["ALIASES", "IMPLS", "resolve_impl"]

#: The values of every ``impl`` switch.
IMPLS = ("auto", "fused", "reference")

#: Old spellings, mapped to the current word.
ALIASES = {"compiled": "fused"}


def resolve_impl(impl: str, what: str, error: type[Exception] = ValueError) -> str:
    """``impl`` as one of :data:`IMPLS` (aliases mapped); ``error`` naming ``what`` otherwise."""
    resolved = ALIASES.get(impl, impl) if isinstance(impl, str) else impl
    if resolved not in IMPLS:
        raise error(f"{what}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return resolved
