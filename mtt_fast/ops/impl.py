"""The implementation switch of every op family: ``impl="auto" | "fused" | "reference"``.

``"fused"`` is the compiled op (``torch.ops.mtt_fast``; an error where it cannot run),
``"reference"`` the pure-PyTorch spec (:mod:`mtt_fast.ops.reference`, or the augmentation's
own functions for DSA), ``"auto"`` the fused op where it can run, else the reference. The
same words are the CLI's ``--dsa-impl`` / ``--block-impl`` values and the configs' fields.

``"compiled"`` (trajectory_loss's word before the families shared one) is accepted as an
alias of ``"fused"``, so a value from an old config file or call still works.

:func:`fused_selected` is the one place ``"auto"`` is decided for every family: the compiled
op where it can run AND it passed its parity check on that device and dtype
(:mod:`mtt_fast.ops.verify`, once per process, cached on disk).
"""

from __future__ import annotations

from mtt_fast.ops import verify

__all__ = ["ALIASES", "IMPLS", "fused_selected", "resolve_impl"]

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


def fused_selected(impl: str, family: str, device, dtype, available: bool) -> bool:
    """Whether a call with the resolved ``impl`` runs the compiled op of ``family``.

    Args:
        impl: one of :data:`IMPLS` (already through :func:`resolve_impl`).
        family: ``"traj_loss"``, ``"block"`` or ``"dsa"`` (:data:`mtt_fast.ops.verify.FAMILIES`).
        device, dtype: of the inputs.
        available: the family's ``fused_available(device, dtype)``.

    ``"reference"``: False. ``"fused"``: ``available`` (the caller raises its own error when
    False), with the verification warning when a failing verdict is known. ``"auto"``:
    available and verified (:func:`mtt_fast.ops.verify.verified`: the parity check runs on
    first use; on a failure one warning and the reference path).
    """
    if impl == "reference" or not available:
        return False
    if impl == "fused":
        verify.warn_if_failed(family, device, dtype)
        return True
    return verify.verified(family, device, dtype)
