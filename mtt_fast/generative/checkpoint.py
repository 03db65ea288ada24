"""The files of a ``gan train`` run: the resumable checkpoint and the trained generator.

``checkpoint.safetensors`` holds every tensor needed to resume exactly: the weights of
``G``, ``G_ema`` and ``D`` (``G.<key>``, ``G_ema.<key>``, ``D.<key>``), both Adam states
through the package's one optimizer-state serializer (:mod:`mtt_fast.optim_state`, names
``exp_avg_opt_G.<i>``, ``exp_avg_sq_opt_D.<i>``, ``step_opt_G.<i>``, ...) and the state of the
training ``torch.Generator`` (``rng``). Its safetensors metadata ``mtt_fast`` is the truth
about the rest (``format``, ``version``, ``step``, ``cur_nimg``, ``config``);
``checkpoint.json`` repeats it for people.

Version 1 (written before the serializer was shared; no ``version`` key) stored the
optimizer states as ``opt_G.<idx>.<key>`` with the param groups in the metadata; it is read
by renaming those tensors (:func:`upgrade_v1_optimizer_keys`): the hyper-parameters come from
the run's config, which the caller has checked against the run directory's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.generative.load import GENERATOR_FORMAT, sha256_file
from mtt_fast.generative.networks import Generator
from mtt_fast.io import load_tensors, save_tensors, write_json
from mtt_fast.optim_state import load_optimizer_state, optimizer_state, state_key

CHECKPOINT_FORMAT = "mtt-fast/gan-checkpoint"
CHECKPOINT_VERSION = 2
GENERATOR_VERSION = 1


def save_generator(out: str | Path, G: Generator, bundle, *, step: int, extra: dict | None = None,
                   name: str = "generator", w_avg: torch.Tensor | None = None) -> dict:
    """Write ``<name>.safetensors`` (the weights) and ``<name>.json``, atomically.

    ``name`` is ``generator`` (the latest) or ``generator_best`` (the best by quality); either
    JSON is a ``--generator`` spec. With ``w_avg`` (the average style of every class, ``[K,
    w_dim]``, for the truncation trick) also ``<name>.w_avg.safetensors``, named in the JSON.

    ``generator.json``::

        {"format": "mtt-fast/generator", "version": 1,
         "config": G.to_config(),            # Generator.from_config rebuilds the module
         "dataset": bundle.meta(), "normalization": {"mean": [...], "std": [...]},
         "classes": [...], "step": step, "weights": "generator.safetensors",
         "weights_sha256": "...", ...extra}
    """
    out = Path(out)
    weights = f"{name}.safetensors"
    save_tensors(out / weights, dict(G.state_dict()))
    doc = {"format": GENERATOR_FORMAT, "version": GENERATOR_VERSION, "config": G.to_config(),
           "dataset": bundle.meta(), "normalization": {"mean": list(bundle.mean), "std": list(bundle.std)},
           "classes": list(bundle.classes), "step": int(step), "weights": weights,
           "weights_sha256": sha256_file(out / weights), **(extra or {})}
    if w_avg is not None:
        save_tensors(out / f"{name}.w_avg.safetensors", {"w_avg": w_avg.detach().cpu().contiguous()})
        doc["w_avg"] = f"{name}.w_avg.safetensors"
    write_json(out / f"{name}.json", doc)
    return doc


def load_w_avg(json_path: str | Path) -> torch.Tensor | None:
    """The per-class average style saved beside a ``gan train`` generator (None for generators
    written before it was tracked, or from elsewhere)."""
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    name = doc.get("w_avg") if isinstance(doc, dict) else None
    if not name or not (json_path.parent / name).is_file():
        return None
    return load_tensors(json_path.parent / name, what="average style")["w_avg"]


def save_checkpoint(path: str | Path, cfg, *, step: int, cur_nimg: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], gen: torch.Generator,
                    logging: dict | None = None, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint (see the module docstring) atomically, and its ``.json`` twin.

    ``extra_tensors`` (e.g. the average style) are stored as ``extra.<name>``."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
    for name, opt in optimizers.items():
        tensors.update(optimizer_state(name, opt))
    tensors["rng"] = gen.get_state()
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step), "cur_nimg": int(cur_nimg),
            "config": asdict(cfg), **({"logging": logging} if logging is not None else {})}
    save_tensors(path, tensors, metadata={"mtt_fast": json.dumps(meta)})
    write_json(path.with_suffix(".json"), meta)


def upgrade_v1_optimizer_keys(tensors: dict[str, torch.Tensor],
                              optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
    """Rename a version-1 checkpoint's ``<opt>.<idx>.<key>`` tensors to the serializer's names.

    ``idx`` was the parameter's index in ``optimizer.state_dict()``: its position over all
    param groups in order, which is the serializer's ``i``.
    """
    out = {}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head in optimizers and rest.count(".") >= 1 and rest.split(".", 1)[0].isdigit():
            idx, key = rest.split(".", 1)
            count = sum(len(g["params"]) for g in optimizers[head].param_groups)
            out[state_key(key, head, int(idx), count)] = v
        else:
            out[k] = v
    return out


def load_checkpoint(path: str | Path, *, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    gen: torch.Generator, extra_tensors: dict[str, torch.Tensor] | None = None
                    ) -> tuple[int, int, dict | None]:
    """Restore ``modules``, ``optimizers`` and ``gen`` in place from a checkpoint of version 1 or 2.

    ``extra_tensors`` are filled in place where the checkpoint has them (checkpoints written
    before a tensor was saved leave it as it is).

    Returns:
        ``(step, cur_nimg, logging)``: ``logging`` holds the running sums of the next metrics
        record (None in checkpoints written before they were saved).

    Raises:
        UserError: one line naming the run directory, when the file is not a checkpoint this
        version can resume or does not fit the networks.
    """
    path = Path(path)
    tensors = load_tensors(path, what="GAN checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mtt_fast", "{}"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an mtt-fast GAN checkpoint")
        version = int(meta.get("version", 1))
        if version == 1:
            tensors = upgrade_v1_optimizer_keys(tensors, optimizers)
        elif version != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {version}; this mtt-fast reads versions 1 and {CHECKPOINT_VERSION}")
        for name, m in modules.items():
            n = len(name) + 1
            m.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        step = int(meta["step"])
        for name, opt in optimizers.items():
            if load_optimizer_state(name, opt, tensors) == 0 and step > 0:
                raise KeyError(f"no state of optimizer {name}")
        gen.set_state(tensors["rng"])
        for k, v in (extra_tensors or {}).items():
            if f"extra.{k}" in tensors:
                v.copy_(tensors[f"extra.{k}"])
        return step, int(meta["cur_nimg"]), meta.get("logging")
    except (ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--out {path.parent}: the checkpoint {path.name} cannot be resumed ({msg}); "
                        "pass --overwrite to start again") from None
