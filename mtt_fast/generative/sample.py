"""``mtt-fast gan sample``: a grid of a generator's images, optionally with the truncation trick."""

from __future__ import annotations

from pathlib import Path

import torch

from mtt_fast.errors import UserError
from mtt_fast.generative.checkpoint import load_w_avg
from mtt_fast.generative.load import load_generator
from mtt_fast.generative.quality import truncate
from mtt_fast.synth import save_grid
from mtt_fast.synth.generator import to_model_space


def generator_json(spec: str) -> Path | None:
    """The ``generator*.json`` a ``--generator`` spec names (None for TorchScript / factories)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p / "generator.json"
    if p.suffix == ".json":
        return p
    if p.name.endswith(".safetensors") and p.with_suffix(".json").is_file():
        return p.with_suffix(".json")
    return None


@torch.no_grad()
def sample_grid(spec: str, out: str | Path, *, per_class: int = 10, truncation: float = 1.0, seed: int = 0,
                device: torch.device | str = "cpu") -> dict:
    """Write ``out`` (PNG): ``per_class`` images of every class of the generator ``spec``.

    Args:
        spec: a ``--generator`` spec (a ``gan train`` directory, ``generator.json`` or
            ``generator_best.json``, TorchScript, ``pkg.mod:factory``).
        out: the PNG to write.
        per_class: images per class (one row per class).
        truncation: psi of the truncation trick toward the class's average style (1: off;
            needs the ``w_avg`` that ``gan train`` saves beside its generators).
        seed: seed of the latents.
        device: where to render.

    Returns:
        ``{"path", "truncation", "per_class", "generator": the loader's reference}``.

    Raises:
        UserError: a bad spec, ``per_class < 1``, ``truncation`` outside [0, 1] or without ``w_avg``.
    """
    if per_class < 1:
        raise UserError(f"--per-class must be at least 1 (got {per_class})")
    if not 0 <= truncation <= 1:
        raise UserError(f"--truncation must be in [0, 1] (got {truncation})")
    G, ref = load_generator(spec, device=device)
    jp = generator_json(spec)
    w_avg = load_w_avg(jp) if jp is not None else None
    if truncation != 1.0 and w_avg is None:
        raise UserError(f"--truncation {truncation}: {spec} has no average style (w_avg); only generators "
                        "trained by this version of `mtt-fast gan train` have one")
    K = max(int(G.num_classes), 1)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(K * per_class, int(G.z_dim), generator=gen).to(device)
    labels = torch.arange(K).repeat_interleave(per_class).to(device)
    w = truncate(G.mapping(z, labels), labels, w_avg, truncation)
    imgs = G.render(None, w.unsqueeze(1).repeat(1, int(G.num_ws), 1), -1).cpu()
    norm = ref.get("normalization") or {"mean": [0.5] * int(G.img_channels), "std": [0.5] * int(G.img_channels)}
    classes = ref.get("classes")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(to_model_space(imgs, norm["mean"], norm["std"]), labels.cpu(), norm, out, num_classes=K,
              max_per_class=per_class, classes=classes if classes and len(classes) == K else None)
    return {"path": str(out), "truncation": truncation, "per_class": per_class, "generator": ref}
