"""The ``auto`` engine: exact, as fast as ``full`` where memory allows, ``adjoint`` where not.

One unroll is split at a step ``k``: steps ``0 .. k-1`` run without a graph (their starting
parameters go to the history, as in ``adjoint``), steps ``k .. N-1`` keep their autograd
graphs (as in ``full``). The loss is then backpropagated through the kept tail in one
autograd call, which gives the tail's share of d loss / d (images, syn_lr, soft labels) and
``lambda_k = dL/dtheta_k``; the adjoint recurrence (:func:`reverse_steps`) carries
``lambda`` through steps ``k-1 .. 0``, recomputing each. Every term of the chain rule is
computed once either way, so the result equals ``full``'s up to rounding at every split.

Choosing k. Step 0 always runs with its graph, inside a ``saved_tensors_hooks`` context that
sums the bytes of the distinct storages autograd saves (the step's activations, its
gradient's double-backward graph and ``theta_1``; the synthetic images themselves are not
counted: they exist anyway). On CUDA the allocator's growth over the step is measured too
and the larger reading is used; ``bytes_0`` is that reading times ``STEP_BYTES_MARGIN``
(1.1: the full unroll's measured peak-RSS growth on the fmnist setting was 3-5% above the
saved-tensor sum). Step i is estimated at ``bytes_0 * b_i / b_0`` (``b_i`` its
batch size; the reference's batch chunks make the first step the smallest one). The engine's
memory at split k is estimated as

    sum_{i >= k} bytes_i        the kept graphs
    + k * P * itemsize          the history (0 with ``offload``: it lives on the host)
    + max_i bytes_i             working memory: one step's graph, recomputed in the reverse pass

and auto keeps the longest tail whose estimate fits ``memory_budget``. If even ``k = N``
(pure adjoint) does not fit, it runs as the adjoint and warns once per call. The budget
counts only this engine's own memory (not the model, the images or the expert trajectories).

``memory_budget=None`` (the default rule, :func:`default_memory_budget`): on CUDA, 80% of the
device memory free now (``torch.cuda.mem_get_info`` plus the caching allocator's unused
reserve) less 512 MiB; on CPU, 80% of ``MemAvailable`` in ``/proc/meminfo`` (else the
OS's free pages) plus the freed memory this process's heap keeps for reuse, less 512 MiB.
The 20% and 512 MiB leave room for everything else the process and the machine allocate
while the unroll runs.

``MatchResult.info`` says what was chosen: ``kept_steps`` (N - k), ``split`` (k),
``memory_budget`` (bytes), ``budget_rule`` ("given" or the default rule), ``measured_step_bytes``
(step 0's reading), ``step_graph_bytes`` (with the margin), ``estimate_bytes`` (the estimate above at the chosen split) and
``over_budget``.
"""

from __future__ import annotations

import os
import re
import warnings

import torch
from torch.profiler import record_function

from mtt_fast.match.adjoint import _Grads, _History, graph_free_step, reverse_steps
from mtt_fast.match.loss import MatchResult, check_loss_mask, masked_trajectory_loss, soft_labels
from mtt_fast.match.plan import StepPlan
from mtt_fast.match.student import Student
from mtt_fast.runtime import retained_free_bytes

#: A step's graph is estimated at this multiple of the saved-tensor bytes measured on step 0:
#: on the fmnist setting (ConvNet-D3 w128, batch 100, CPU) the full unroll's peak-RSS growth
#: was 3-5% above the saved-tensor sum (allocator overhead, the backward's transients).
STEP_BYTES_MARGIN = 1.1
#: Part of the free memory the default budget may use, and what it leaves aside on top.
DEFAULT_BUDGET_FRACTION = 0.8
DEFAULT_BUDGET_RESERVE = 512 * 2**20

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory_size(text: str | int) -> int:
    """Bytes from ``"1GiB"``, ``"512MiB"``, ``"2.5GB"``, ``"1e9"`` or an int (for ``--memory-budget``).

    Raises:
        ValueError: not a non-negative size with a known unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB).
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"memory size {text} is negative")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size {text!r}: expected a number with an optional unit "
                         "(B, kB, MB, GB, KiB, MiB, GiB, TiB), e.g. 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _cpu_available_bytes() -> int:
    """The OS's available memory (``MemAvailable``, else its free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_memory_budget(device: torch.device | str) -> tuple[int, str]:
    """The default budget for ``device`` and a one-line description of the rule that gave it."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        what = "CUDA free memory"
    else:
        # plus what this process's heap keeps free for reuse (runtime.retain_freed_memory): without
        # it the budget would shrink by the previous iteration's memory on every later one
        retained = retained_free_bytes()
        free = _cpu_available_bytes() + retained
        what = "MemAvailable + retained heap" if retained else "MemAvailable"
    budget = max(0, int(DEFAULT_BUDGET_FRACTION * free) - DEFAULT_BUDGET_RESERVE)
    return budget, f"default: {DEFAULT_BUDGET_FRACTION:.0%} of {what} ({free / 2**30:.2f} GiB) less 512 MiB"


class SavedBytes:
    """Sums the bytes of the distinct storages autograd saves while the context is active.

    Storages listed in ``exclude`` (tensors that exist anyway, e.g. the synthetic images) are
    not counted. Views of one storage count once, by the storage's full size.
    """

    def __init__(self, exclude: tuple[torch.Tensor, ...] = ()):
        self.exclude = {_storage_key(t)[0] for t in exclude}
        self.seen: dict[tuple[int, str], int] = {}
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key(t)
        if key not in self.exclude:
            self.seen[key] = nbytes
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def __enter__(self) -> SavedBytes:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def _storage_key(t: torch.Tensor) -> tuple[tuple[int, str], int]:
    try:
        st = t.untyped_storage()
        return (st.data_ptr(), str(t.device)), st.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return (id(t), str(t.device)), t.numel() * t.element_size()


def choose_split(step_bytes: list[int], history_bytes: int, budget: int) -> tuple[int, int, bool]:
    """The smallest split k (longest kept tail) whose memory estimate fits ``budget``.

    Args:
        step_bytes: the estimated graph bytes of each of the N steps.
        history_bytes: bytes one history entry costs (``P * itemsize``; 0 when offloaded).
        budget: the memory budget in bytes.

    Returns:
        ``(k, estimate at k, over_budget)``; ``over_budget`` when even ``k = N`` does not fit
        (then ``k = N``).
    """
    n = len(step_bytes)
    work = max(step_bytes, default=0)
    tail = 0
    best = None
    for k in range(n, -1, -1):  # k = N keeps nothing; each step down keeps one more step
        if k < n:
            tail += step_bytes[k]
        est = tail + k * history_bytes + work
        if est <= budget:
            best = (k, est)
        else:
            break  # the estimate grows as k falls when a step's graph outweighs its history entry
    if best is None:
        return n, n * history_bytes + work, True
    return best[0], best[1], False


def match_auto(student: Student, theta_start: torch.Tensor, theta_target: torch.Tensor, images: torch.Tensor,
               labels: torch.Tensor, syn_lr: torch.Tensor, plan: list[StepPlan], *,
               loss_mask: torch.Tensor | None = None, memory_budget: int | str | None = None,
               offload: bool = False) -> MatchResult:
    """Exact gradients of the unrolled matching loss, keeping as many step graphs as the budget allows.

    Same arguments and result as :func:`mtt_fast.match.match_full`; ``result.info`` says
    which split was chosen and why (see the module docstring).

    Args:
        memory_budget: bytes (or a size such as ``"1GiB"``) this engine may use for graphs,
            history and working memory; None for the default rule.
        offload: keep the graph-free steps' parameter history in host memory (CUDA).
    """
    if not plan:
        raise ValueError("auto engine: the plan has no steps")
    loss_mask = check_loss_mask(loss_mask, theta_start)
    soft = soft_labels(labels)
    x0, y0, lr = images.detach(), labels.detach(), syn_lr.detach()
    device = theta_start.device
    n = len(plan)
    if memory_budget is None:
        budget, rule = default_memory_budget(device)
    else:
        budget, rule = parse_memory_size(memory_budget), "given"
    x = x0.detach().requires_grad_(True)
    y = y0.detach().requires_grad_(True) if soft else y0
    lrg = lr.detach().requires_grad_(True)

    # step 0 with its graph, measured
    theta0 = theta_start.detach().clone().requires_grad_(True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    with torch.enable_grad(), SavedBytes(exclude=(x0, y0, theta_start)) as saved:
        g = student.step_grad(theta0, x, y, plan[0], create_graph=True, label="match.kept")
        theta = theta0 - lrg * g
    measured = saved.total
    if cuda:
        torch.cuda.synchronize(device)
        measured = max(measured, torch.cuda.memory_allocated(device) - before)
    # under torchrun every rank must split the unroll at the same step: the largest measurement
    # and the smallest budget of all ranks decide
    bytes0 = int(STEP_BYTES_MARGIN * student.agree_max(measured))
    budget = -int(student.agree_max(-budget))
    b0 = max(len(plan[0].indices), 1)
    step_bytes = [int(bytes0 * len(s.indices) / b0) for s in plan]
    hist_bytes = 0 if (offload and cuda) else theta_start.numel() * theta_start.element_size()
    k, estimate, over = choose_split(step_bytes, hist_bytes, budget)
    info = {"engine": "auto", "kept_steps": n - k, "split": k, "steps": n, "memory_budget": budget,
            "budget_rule": rule, "step_graph_bytes": bytes0, "measured_step_bytes": measured,
            "history_bytes_per_step": hist_bytes, "estimate_bytes": estimate, "over_budget": over}
    if over:
        warnings.warn(f"auto engine: memory budget {budget / 2**20:.0f} MiB is below the adjoint engine's "
                      f"estimated {estimate / 2**20:.0f} MiB; running as the adjoint anyway", stacklevel=2)

    history = _History(theta_start, k, offload)
    if k > 0:  # drop step 0's graph; steps 1 .. k-1 without one
        history.put(0, theta_start)
        theta = theta.detach()
        del g
        for i in range(1, k):
            history.put(i, theta)
            theta = graph_free_step(student, theta, x0, y0, lr, plan[i])
        seg_start = theta.detach().requires_grad_(True)
        theta = seg_start
    else:
        seg_start = theta0
    with torch.enable_grad():
        for i in range(max(k, 1), n):  # the kept tail
            g = student.step_grad(theta, x, y, plan[i], create_graph=True, label="match.kept")
            theta = theta - lrg * g
        theta_end = theta.detach()
        loss = masked_trajectory_loss(theta, theta_target.detach(), theta_start.detach(), loss_mask)
        wrt = [seg_start] if k > 0 else []
        if k < n:
            wrt += [x, lrg] + ([y] if soft else [])
        with record_function("match.kept.double_backward"):
            out = torch.autograd.grad(loss, wrt)
    grads = _Grads(x0, y0, lr, soft)
    if k < n:
        tail = out[1:] if k > 0 else out
        grads.x += tail[0]
        grads.lr = grads.lr + tail[1]
        if soft:
            grads.y += tail[2]
    if k > 0:
        reverse_steps(student, history, out[0], x0, y0, lr, plan, k, grads, exact=True)
    return MatchResult(loss.detach(), grads.x, grads.lr, theta_end, grads.y, info)
