"""The generator contract: the interface every generator (deep generative prior) follows, and its checker.

It lives with the synthetic-set parameterizations that use it (:mod:`mtt_fast.synth.latent`);
:mod:`mtt_fast.generative` (the generator family, its training and loading) builds on it and
re-exports it as :mod:`mtt_fast.generative.interface`.

A generator is a ``torch.nn.Module`` (plain Python or TorchScript) with these integer
attributes:

* ``z_dim``: length of the Gaussian latent ``z``;
* ``w_dim``: length of one style vector ``w``;
* ``num_ws``: number of synthesis blocks; block ``i`` reads ``ws[:, i]`` (this is W+);
* ``num_classes``: number of classes of the conditioning label (0: unconditional);
* ``img_channels``, ``img_resolution``: the images it renders, ``[n, C, R, R]``;

and these methods (all pure functions of their inputs; no randomness, no noise inputs):

* ``mapping(z [n, z_dim], labels [n] int64) -> w [n, w_dim]``;
* ``features(ws [n, num_ws, w_dim], layer: int) -> f``: the feature map after block
  ``layer`` (``0 <= layer < num_ws``), computed from the constant input with
  ``ws[:, :layer + 1]``;
* ``render(f: Optional[Tensor], ws [n, num_ws, w_dim], layer: int) -> images``: with
  ``layer = -1`` (and ``f = None``) the whole synthesis; otherwise continue from ``f`` (the
  output of block ``layer``) through blocks ``layer + 1 ..``, reading only
  ``ws[:, layer + 1:]`` and, for the output (toRGB) layer, ``ws[:, -1]`` (so with
  ``layer = num_ws - 1`` only the last style vector still matters). Images are ``[n, img_channels, img_resolution, img_resolution]``
  with pixels nominally in ``[-1, 1]`` (-1 black, 1 white).

So ``G(ws) = render(features(ws, k), ws, k)`` for every ``k``: GLaD's ``G = G_after_k o
G_upto_k``. The distiller maps rendered images into the model's normalized input space
with :func:`to_model_space`.
"""

from __future__ import annotations

import torch

from mtt_fast.errors import UserError

INT_ATTRS = ("z_dim", "w_dim", "num_ws", "num_classes", "img_channels", "img_resolution")
METHODS = ("mapping", "features", "render")

__all__ = ["INT_ATTRS", "METHODS", "check_generator", "describe", "from_model_space", "to_model_space"]


def describe(g: torch.nn.Module, source: str) -> dict:
    """Read the interface attributes of ``g``; one clear error naming ``source`` if any is missing."""
    info = {}
    for name in INT_ATTRS:
        v = getattr(g, name, None)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"--generator {source}: not an mtt-fast generator (attribute {name} missing or not "
                            f"a non-negative int; see mtt_fast/synth/generator.py)")
        info[name] = v
    for name in METHODS:
        if not callable(getattr(g, name, None)):
            raise UserError(f"--generator {source}: not an mtt-fast generator (method {name}() missing; "
                            f"see mtt_fast/synth/generator.py)")
    if info["num_ws"] < 1 or info["z_dim"] < 1 or info["w_dim"] < 1 or info["img_resolution"] < 1:
        raise UserError(f"--generator {source}: z_dim, w_dim, num_ws and img_resolution must be positive")
    return info


def check_generator(g: torch.nn.Module, source: str, *, device: torch.device | str = "cpu") -> dict:
    """Validate ``g`` against the interface with a two-sample dry run.

    Returns:
        The attribute dict of :func:`describe` plus ``feature_shapes``: the shape of
        ``features(ws, k)[0]`` for every block ``k``.

    Raises:
        UserError: one line naming ``source`` and what is wrong.
    """
    info = describe(g, source)
    n, k = 2, info["num_ws"]
    try:
        with torch.no_grad():
            p = next(iter(g.parameters()), None)
            z = torch.randn(n, info["z_dim"], device=device, dtype=p.dtype if p is not None else torch.float32)
            labels = torch.zeros(n, dtype=torch.long, device=device)
            w = g.mapping(z, labels)
            if tuple(w.shape) != (n, info["w_dim"]):
                raise UserError(f"--generator {source}: mapping() returned shape {tuple(w.shape)}, "
                                f"expected ({n}, {info['w_dim']})")
            ws = w.unsqueeze(1).repeat(1, k, 1)
            img = g.render(None, ws, -1)
            want = (n, info["img_channels"], info["img_resolution"], info["img_resolution"])
            if tuple(img.shape) != want:
                raise UserError(f"--generator {source}: render() returned shape {tuple(img.shape)}, expected {want}")
            shapes = []
            for layer in range(k):
                f = g.features(ws, layer)
                shapes.append(list(f.shape[1:]))
            f = g.features(ws, k // 2)
            img2 = g.render(f, ws, k // 2)
            if not torch.allclose(img, img2, rtol=1e-4, atol=1e-4):
                raise UserError(f"--generator {source}: render(features(ws, k), ws, k) differs from render(None, ws, -1); "
                                "the split at a block must not change the image")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is one clear line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--generator {source}: the dry run failed: {msg}") from None
    return {**info, "feature_shapes": shapes}


def to_model_space(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Generator pixels in ``[-1, 1]`` -> the model's normalized input space: ``((x + 1) / 2 - mean) / std``."""
    c = images.shape[1]
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return ((images + 1) * 0.5 - m) / s


def from_model_space(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`to_model_space`: normalized model input -> ``[-1, 1]`` pixels."""
    c = images.shape[1]
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return (images * s + m) * 2 - 1
