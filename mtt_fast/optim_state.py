"""The one optimizer-state serializer of the package: optimizer state <-> flat named tensors.

Checkpoints (the distill loop's, a parameterization's, the GAN trainer's) store an
optimizer's per-parameter state as plain named tensors in a safetensors file, beside the
other tensors of the checkpoint; nothing is pickled. Hyper-parameters (lr, betas, momentum,
...) are NOT saved: a resumed run rebuilds its optimizers from its own (checked) config.

Names, for the optimizer ``name`` over ``count`` parameters, parameter ``i`` in the order of
its param groups: SGD's momentum is ``momentum_<name>``, Adam's state ``exp_avg_<name>``,
``exp_avg_sq_<name>``, ``step_<name>`` (``max_exp_avg_sq_<name>`` with amsgrad); with more
than one parameter each name ends in ``.<i>``.
"""

from __future__ import annotations

import torch

#: per-parameter state keys restored, by optimizer kind (any other optimizer: Adam's).
SGD_KEYS = ("momentum_buffer",)
ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step", "max_exp_avg_sq")


def state_key(key: str, name: str, i: int, count: int) -> str:
    """The tensor name of state ``key`` of parameter ``i`` (of ``count``) of optimizer ``name``."""
    prefix = "momentum" if key == "momentum_buffer" else key
    return f"{prefix}_{name}" if count == 1 else f"{prefix}_{name}.{i}"


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def optimizer_state(name: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter tensors as flat named tensors (see the module docstring)."""
    params = _params(opt)
    out = {}
    for i, p in enumerate(params):
        for key, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                out[state_key(key, name, i, len(params))] = v.detach()
            elif isinstance(v, (int, float)):
                out[state_key(key, name, i, len(params))] = torch.tensor(float(v))
    return out


def load_optimizer_state(name: str, opt: torch.optim.Optimizer, t: dict[str, torch.Tensor]) -> int:
    """Inverse of :func:`optimizer_state` for an optimizer of the same kind over the same parameters.

    Returns:
        How many tensors were restored (0: ``t`` holds no state of ``name``, as for an
        optimizer that had not stepped yet).
    """
    params = _params(opt)
    keys = SGD_KEYS if isinstance(opt, torch.optim.SGD) else ADAM_KEYS
    n = 0
    for i, p in enumerate(params):
        for key in keys:
            k = state_key(key, name, i, len(params))
            if k in t:
                v = t[k]
                # Adam keeps ``step`` on the CPU unless it runs capturable/fused.
                opt.state[p][key] = v.clone() if key == "step" else v.to(p.device, p.dtype).clone()
                n += 1
    return n
