"""A small class-conditional StyleGAN2-like generator and a projection discriminator.

Sized for 16-256 px images and CPU-friendly widths. The generator follows the interface of
:mod:`mtt_fast.synth.generator` exactly (``mapping``, ``features``, ``render``; integer
attributes ``z_dim``, ``w_dim``, ``num_ws``, ``num_classes``, ``img_channels``,
``img_resolution``), is deterministic (no noise inputs) and TorchScript-scriptable::

    G = Generator(num_classes=10, img_channels=1, img_resolution=16)
    w = G.mapping(z, labels)                      # [n, w_dim]
    ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)    # W+: one w per synthesis block
    img = G.render(None, ws, -1)                  # [n, 1, 16, 16], nominally in [-1, 1]
    f = G.features(ws, 1)                         # after block 1
    assert torch.equal(G.render(f, ws, 1), img)   # G = G_after_k o G_upto_k

Synthesis: a learned constant ``[C0, r0, r0]`` with ``r0 = R / 2**u`` (``u`` the largest
integer leaving an integer ``r0 >= 4``: 16 -> 4, 28 -> 7, 224 -> 7), then ``num_ws = u + 1``
blocks. Block 0 works at ``r0``; every later block upsamples 2x (bilinear) first. Each block
is two 3x3 modulated convolutions with weight demodulation (StyleGAN2), both modulated by
the block's own ``w``, each followed by bias + leaky ReLU (gain sqrt 2). The image is one
modulated 1x1 toRGB convolution (no demodulation) of the LAST block's features with
``ws[:, -1]``, plus a bias: there is no skip sum, so the features after block ``k`` and the
later ``ws`` fully determine the image. (toRGB shares the last block's ``w``, so
``render(f, ws, num_ws - 1)`` still reads ``ws[:, -1]``; for every other ``k`` it reads
only ``ws[:, k + 1:]``.) All weights use the equalized learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtt_fast.errors import UserError


def start_resolution(img_resolution: int) -> tuple[int, int]:
    """``(r0, u)``: ``img_resolution = r0 * 2**u`` with ``u`` largest such that ``r0 >= 4``.

    Raises:
        UserError: a resolution below 4.
    """
    r, u = int(img_resolution), 0
    if r < 4:
        raise UserError(f"generator resolution {img_resolution} is too small (at least 4 px)")
    while r % 2 == 0 and r // 2 >= 4:
        r, u = r // 2, u + 1
    return r, u


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    return max(1, min(channel_base // res, channel_max))


class EqLinear(nn.Module):
    """Fully connected layer with the equalized learning rate (weights scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mult))
        self.weight_gain = float(lr_mult / math.sqrt(in_features))
        self.bias_gain = float(lr_mult)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)


class EqConv2d(nn.Module):
    """Plain convolution with the equalized learning rate ('same' padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = float(1.0 / math.sqrt(in_channels * kernel * kernel))
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class ModConv(nn.Module):
    """Modulated convolution (StyleGAN2): per-sample input scaling by an affine map of ``w``,
    optional weight demodulation, bias, optional leaky ReLU (gain sqrt 2).

    Computed in the "non-fused" form (scale inputs, shared convolution, scale outputs),
    which equals the grouped per-sample-weight convolution and batches well on a CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int,
                 demodulate: bool = True, activate: bool = True) -> None:
        super().__init__()
        self.affine = EqLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = float(1.0 / math.sqrt(in_channels * kernel * kernel))
        self.padding = kernel // 2
        self.demodulate = demodulate
        self.activate = activate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w)                                   # [n, in]
        weight = self.weight * self.weight_gain                   # [out, in, k, k]
        x = x * styles.unsqueeze(-1).unsqueeze(-1)
        x = F.conv2d(x, weight, None, padding=self.padding)
        if self.demodulate:
            wsq = weight.square().sum(dim=[2, 3])                 # [out, in]
            d = torch.rsqrt(styles.square() @ wsq.t() + 1e-8)     # [n, out]
            x = x * d.unsqueeze(-1).unsqueeze(-1)
        x = x + self.bias.view(1, -1, 1, 1)
        if self.activate:
            x = F.leaky_relu(x, 0.2) * 1.4142135623730951
        return x


class SynthesisBlock(nn.Module):
    """(2x bilinear upsampling unless first) + two modulated 3x3 convolutions, one ``w``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv0 = ModConv(in_channels, out_channels, w_dim, 3)
        self.conv1 = ModConv(out_channels, out_channels, w_dim, 3)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.conv0(x, w)
        return self.conv1(x, w)


class Generator(nn.Module):
    """Class-conditional StyleGAN2-like generator following the mtt-fast generator interface.

    Args:
        num_classes: classes of the conditioning label (0: unconditional).
        img_channels: image channels (1 grey, 3 RGB).
        img_resolution: image side; any ``r0 * 2**u`` with ``r0 >= 4``.
        z_dim: length of the Gaussian latent.
        w_dim: length of a style vector.
        channel_base: a block at resolution ``r`` has ``min(channel_base // r, channel_max)``
            channels.
        channel_max: the most channels of any block.
        mapping_layers: depth of the mapping MLP.
        mapping_lr_mult: learning-rate multiplier of the mapping MLP (StyleGAN: 0.01).
    """

    def __init__(self, num_classes: int, img_channels: int, img_resolution: int, z_dim: int = 64, w_dim: int = 128,
                 channel_base: int = 2048, channel_max: int = 256, mapping_layers: int = 2,
                 mapping_lr_mult: float = 0.01) -> None:
        super().__init__()
        r0, u = start_resolution(img_resolution)
        if min(num_classes, img_channels, z_dim, w_dim, channel_base, channel_max, mapping_layers) < 0 or \
                min(img_channels, z_dim, w_dim, channel_base, channel_max, mapping_layers) < 1:
            raise UserError("generator sizes (channels, z_dim, w_dim, channel_base, channel_max, mapping_layers) must be positive")
        self.num_classes = int(num_classes)
        self.img_channels = int(img_channels)
        self.img_resolution = int(img_resolution)
        self.z_dim = int(z_dim)
        self.w_dim = int(w_dim)
        self.num_ws = int(u + 1)
        self.start_res = int(r0)
        self.channel_base = int(channel_base)
        self.channel_max = int(channel_max)
        self.mapping_layers = int(mapping_layers)
        self.mapping_lr_mult = float(mapping_lr_mult)

        # mapping: [normalized z, normalized class embedding] -> MLP -> w
        self.embed = nn.Embedding(max(self.num_classes, 1), z_dim)
        layers = []
        in_f = 2 * z_dim
        for _ in range(mapping_layers):
            layers.append(EqLinear(in_f, w_dim, lr_mult=mapping_lr_mult))
            in_f = w_dim
        self.mapping_net = nn.ModuleList(layers)

        # synthesis
        res = [r0 * 2**i for i in range(self.num_ws)]
        chans = [_channels(r, channel_base, channel_max) for r in res]
        self.const = nn.Parameter(torch.randn(chans[0], r0, r0))
        blocks = []
        for i in range(self.num_ws):
            blocks.append(SynthesisBlock(chans[i - 1] if i > 0 else chans[0], chans[i], w_dim, up=i > 0))
        self.blocks = nn.ModuleList(blocks)
        self.torgb = ModConv(chans[-1], img_channels, w_dim, 1, demodulate=False, activate=False)

    # -------------------------------------------------------------------- interface
    @torch.jit.export
    def mapping(self, z: Tensor, labels: Tensor) -> Tensor:
        """``z [n, z_dim]``, ``labels [n]`` int64 -> ``w [n, w_dim]``."""
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        if self.num_classes == 0:
            labels = torch.zeros_like(labels)
        y = self.embed(labels).to(x.dtype)
        y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + 1e-8)
        x = torch.cat([x, y], dim=1)
        for layer in self.mapping_net:
            x = F.leaky_relu(layer(x), 0.2) * 1.4142135623730951
        return x

    @torch.jit.export
    def features(self, ws: Tensor, layer: int) -> Tensor:
        """The feature map after block ``layer`` (``0 <= layer < num_ws``), from ``ws[:, :layer + 1]``."""
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        for i, block in enumerate(self.blocks):
            if i <= layer:
                x = block(x, ws[:, i])
        return x

    @torch.jit.export
    def render(self, f: Tensor | None, ws: Tensor, layer: int) -> Tensor:
        """Images ``[n, C, R, R]`` from the features ``f`` after block ``layer`` (``None``, ``-1``:
        the whole synthesis), reading only ``ws[:, layer + 1:]``."""
        if f is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
            start = 0
        else:
            x = f
            start = layer + 1
        for i, block in enumerate(self.blocks):
            if i >= start:
                x = block(x, ws[:, i])
        return self.torgb(x, ws[:, self.num_ws - 1])

    def forward(self, ws: Tensor) -> Tensor:
        """``ws [n, num_ws, w_dim]`` (or one ``w [n, w_dim]`` for every block) -> images."""
        if ws.dim() == 2:
            ws = ws.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.render(None, ws, -1)

    # -------------------------------------------------------------------- config
    def to_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict (``Generator.from_config`` rebuilds it)."""
        return {
            "num_classes": self.num_classes,
            "img_channels": self.img_channels,
            "img_resolution": self.img_resolution,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "channel_base": self.channel_base,
            "channel_max": self.channel_max,
            "mapping_layers": self.mapping_layers,
            "mapping_lr_mult": self.mapping_lr_mult,
        }

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> Generator:
        """Rebuild from :meth:`to_config`'s dict (unknown keys are a UserError)."""
        import inspect

        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        bad = sorted(set(d) - known)
        if bad:
            raise UserError(f"generator config has unknown keys {bad}")
        return cls(**d)


class MinibatchStd(nn.Module):
    """Append the mean (over channels and pixels) std over groups of samples as one channel."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g != 0:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[1, 2, 3])                 # [n / g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqConv2d(in_channels, in_channels, 3)
        self.conv1 = EqConv2d(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv0(x), 0.2) * 1.4142135623730951
        x = F.leaky_relu(self.conv1(x), 0.2) * 1.4142135623730951
        return F.avg_pool2d(x, 2)


class Discriminator(nn.Module):
    """Projection discriminator: conv blocks down to the generator's start resolution,
    minibatch std, then ``out = linear(h) + sum(embed(label) * h)``.

    Args:
        num_classes: classes (0: unconditional, no projection term).
        img_channels, img_resolution: the images it judges.
        channel_base, channel_max: as for :class:`Generator`.
        mbstd_group: minibatch-std group size (0 disables it).
    """

    def __init__(self, num_classes: int, img_channels: int, img_resolution: int, channel_base: int = 2048,
                 channel_max: int = 256, mbstd_group: int = 4) -> None:
        super().__init__()
        r0, u = start_resolution(img_resolution)
        self.num_classes = int(num_classes)
        res = [img_resolution // 2**i for i in range(u + 1)]      # R, R/2, ..., r0
        chans = [_channels(r, channel_base, channel_max) for r in res]
        self.from_rgb = EqConv2d(img_channels, chans[0], 1)
        self.blocks = nn.ModuleList([DiscriminatorBlock(chans[i], chans[i + 1]) for i in range(u)])
        self.mbstd = MinibatchStd(mbstd_group) if mbstd_group > 0 else None
        c = chans[-1]
        self.conv = EqConv2d(c + (1 if mbstd_group > 0 else 0), c, 3)
        self.fc = EqLinear(c * r0 * r0, c)
        self.out = EqLinear(c, 1)
        self.embed = EqLinear(max(num_classes, 1), c) if num_classes > 0 else None

    def forward(self, img: Tensor, labels: Tensor) -> Tensor:
        """``img [n, C, R, R]`` in [-1, 1], ``labels [n]`` -> logits ``[n]``."""
        x = F.leaky_relu(self.from_rgb(img), 0.2) * 1.4142135623730951
        for block in self.blocks:
            x = block(x)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = F.leaky_relu(self.conv(x), 0.2) * 1.4142135623730951
        h = F.leaky_relu(self.fc(x.flatten(1)), 0.2) * 1.4142135623730951
        out = self.out(h).squeeze(1)
        if self.embed is not None:
            onehot = F.one_hot(labels, self.num_classes).to(h.dtype)
            out = out + (self.embed(onehot) * h).sum(dim=1) / math.sqrt(h.shape[1])
        return out
