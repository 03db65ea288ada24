"""mtt_fast.ops: the Python face of the compiled core.

* :func:`trajectory_loss`: MTT's normalized trajectory-matching loss, compiled (CPU and
  CUDA twins in ``csrc/traj_loss``) or pure PyTorch (``impl=``).
* :mod:`mtt_fast.ops.dsa`: the fused differentiable Siamese augmentation (CPU and CUDA
  twins in ``csrc/dsa``); use it through ``mtt_fast.augment.apply(..., impl="fused")``.
* :mod:`mtt_fast.ops.block` / :func:`convblock`: the fused ConvNet block (instance norm +
  ReLU + 2x2 average pool) with compiled backward and double backward (``csrc/block``);
  :class:`mtt_fast.models.ConvNet` uses it (``block_impl=``).
* :func:`extension_loaded` / :func:`extension_info`: whether ``mtt_fast._C`` is live,
  and what it holds (``mtt-fast info`` prints this).
* :mod:`mtt_fast.ops.verify`: the parity check of each compiled family against its spec,
  run on first use by ``impl="auto"`` (:func:`mtt_fast.ops.impl.fused_selected`) and cached
  per build, torch, device and dtype; ``mtt-fast selftest`` reruns them.
* :mod:`mtt_fast.ops.reference`: the pure-PyTorch reference of every op (the spec of each
  op family); :mod:`mtt_fast.ops.dsa_layout`: the Python names of the DSA op's packed
  parameter layout, defined in csrc/dsa/dsa.h.

The ops themselves live in ``torch.ops.mtt_fast`` once ``mtt_fast._C`` is loaded:
``traj_loss(student, target, start) -> Tensor``,
``traj_loss_backward(grad, student, target, start) -> (Tensor, Tensor, Tensor)``,
``dsa_forward(x, params, noise, flags) -> Tensor``,
``dsa_backward(grad_y, params, flags) -> Tensor``,
``convblock_forward(x, weight, bias, eps) -> (Tensor, Tensor)``,
``convblock_backward(grad_y, x, weight, bias, stats) -> (Tensor, Tensor, Tensor)``,
``convblock_double_backward(grad_y, x, weight, bias, stats, r_x, r_weight, r_bias) ->
(Tensor, Tensor, Tensor)`` and ``built_with_cuda() -> bool``.
"""

from __future__ import annotations

from typing import Any

import torch

from mtt_fast.ops import _load, block, dsa, reference
from mtt_fast.ops.block import convblock
from mtt_fast.ops.traj_loss import trajectory_loss

__all__ = ["block", "convblock", "dsa", "extension_info", "extension_loaded", "reference", "trajectory_loss"]


def extension_loaded() -> bool:
    """True when the compiled core ``mtt_fast._C`` is loaded (ops in ``torch.ops.mtt_fast``)."""
    return _load.loaded()


def extension_info() -> dict[str, Any]:
    """What the compiled core is and holds, for ``mtt-fast info`` and bug reports.

    Returns:
        A dict with ``loaded`` (bool), ``error`` (why it did not load, else None), ``path``
        (the loaded .so, else None), ``built_with_cuda`` (bool), ``ops`` (the library's
        op names, ``"mtt_fast::..."``), ``kernels`` (op name -> device types with a
        compiled kernel, for ops that take tensors), ``torch_version``, ``torch_cuda``
        (torch.version.cuda) and ``cuda_available``.
    """
    loaded = _load.loaded()
    ops = _load.op_names()
    kernels = {}
    for name in ops:
        devices = [d for d in ("cpu", "cuda") if _load.has_kernel(name.split("::", 1)[1], d)]
        if devices:  # ops with no tensor arguments (built_with_cuda) have no device kernel
            kernels[name] = devices
    return {
        "loaded": loaded,
        "error": None if loaded else _load.LOAD_ERROR,
        "path": getattr(_load._C, "__file__", None) if loaded else None,
        "built_with_cuda": _load.built_with_cuda(),
        "ops": ops,
        "kernels": kernels,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
