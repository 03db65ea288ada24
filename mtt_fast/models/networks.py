"""The networks of the MTT / GLaD evaluation protocol, for any resolution and channel count.

ConvNet is the distillation backbone (Gidaris & Komodakis; as in the MTT reference): ``depth``
blocks of 3x3 conv (``width`` filters) -> instance norm -> ReLU -> 2x2 average pool, then a
linear head. Instance norm is ``GroupNorm(C, C)`` with affine parameters, so no network here
keeps running statistics: every forward is a pure function of (parameters, input), which is
what calling a network with a flat parameter vector needs.

AlexNet, VGG11 and ResNet18 are the unseen architectures of the paper's Tables 2-3, shaped as
in the MTT/DC reference (``networks.py``): the same layers, with the linear head sized from the
actual feature map, so they run at 28 px (MNIST-like) as well as 224 px (pathology patches).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtt_fast.errors import UserError
from mtt_fast.ops import block as fused_block
from mtt_fast.ops import conv as conv_op
from mtt_fast.ops.impl import fused_selected


def instance_norm(channels: int) -> nn.GroupNorm:
    """Instance normalization with a learnable affine, as the MTT reference builds it."""
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    """Depth-n ConvNet: n x [conv3x3(width) -> instance norm -> ReLU -> avgpool 2x2] -> linear.

    Args:
        channels: input channels (1 for Fashion-MNIST, 3 for RGB patches).
        num_classes: number of output logits.
        res: input height = width.
        width: filters per conv layer (paper: 128).
        depth: number of blocks (paper: 3; ConvNetD4, D5 for larger images).
        block_impl: how each norm -> ReLU -> pool runs: ``"auto"`` (the fused, twice
            differentiable op of :mod:`mtt_fast.ops.block` when the compiled core has a
            kernel for the input's device and dtype that passed its parity check there
            (:mod:`mtt_fast.ops.verify`), decided per forward call; else the
            native nn modules), ``"fused"`` (always; RuntimeError where unavailable) or
            ``"reference"`` (always the native nn modules). The parameters (names, order,
            shapes) are the same for all three, so flat vectors and stored trajectories are
            interchangeable; the attribute may be changed after construction.
        conv_impl: how the convolutions run: ``"second-order"`` (:func:`mtt_fast.ops.conv.conv2d`:
            the same values and derivatives as ``F.conv2d``, its double backward on the
            convolution's backward kernels, 5-18% faster matching iterations on the CPU,
            ``benchmarks/results/profile_cpu.md``) or ``"native"`` (``nn.Conv2d``). Like
            ``block_impl``, it changes no parameter and may be changed after construction.

    Shapes: input ``[B, channels, res, res]`` -> logits ``[B, num_classes]``.
    """

    BLOCK_IMPLS = ("auto", "fused", "reference")
    CONV_IMPLS = ("second-order", "native")

    def __init__(self, channels: int, num_classes: int, res: int, width: int = 128, depth: int = 3,
                 block_impl: str = "auto", conv_impl: str = "second-order"):
        super().__init__()
        if block_impl not in self.BLOCK_IMPLS:
            raise UserError(f"block_impl must be one of {', '.join(self.BLOCK_IMPLS)}, got {block_impl!r}")
        if conv_impl not in self.CONV_IMPLS:
            raise UserError(f"conv_impl must be one of {', '.join(self.CONV_IMPLS)}, got {conv_impl!r}")
        self.block_impl = block_impl
        self.conv_impl = conv_impl
        self.depth = depth
        layers: list[nn.Module] = []
        in_ch, size = channels, res
        for d in range(depth):
            # The reference pads the first layer by 3 for 1-channel 28x28 input (-> 32x32).
            pad = 3 if channels == 1 and d == 0 and res == 28 else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), instance_norm(width), nn.ReLU()]
            size = size + 2 * pad - 2
            if size < 2:
                raise UserError(f"--res {res} is too small for a ConvNet of depth {depth}")
            layers.append(nn.AvgPool2d(2, 2))
            size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def use_fused(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` runs the fused blocks (see ``block_impl``)."""
        if self.block_impl == "reference":
            return False
        ok = fused_block.fused_available(x.device, x.dtype)
        if self.block_impl == "fused" and not ok:
            raise RuntimeError(
                f"ConvNet(block_impl='fused'): {fused_block.unavailable_reason(x.device, x.dtype)}"
            )
        # "auto": only once the block passed its parity check here (mtt_fast.ops.verify)
        return fused_selected(self.block_impl, "block", x.device, x.dtype, ok)

    def _conv(self, conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        if self.conv_impl == "native":
            return conv(h)
        return conv_op.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # features = depth x [conv, norm, relu, pool]; parameters are read from the modules,
        # so torch.func.functional_call's substituted (flat-vector) parameters are used.
        # "auto" re-decides per block (autocast may hand the norm another dtype than x's)
        fused = self.use_fused(x)
        impl = "fused" if self.block_impl == "fused" else "auto"
        h = x
        for d in range(self.depth):
            conv, norm, relu, pool = (self.features[4 * d + i] for i in range(4))
            c = self._conv(conv, h)
            h = fused_block.convblock(c, norm.weight, norm.bias, norm.eps, impl=impl) if fused else pool(relu(norm(c)))
        return self.classifier(h.flatten(1))


class AlexNet(nn.Module):
    """AlexNet as in the MTT/DC reference: 5 convs (128-192-256-192-192), 3 max pools, linear."""

    def __init__(self, channels: int, num_classes: int, res: int):
        super().__init__()
        pad = 4 if channels == 1 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        size = res + 2 * pad - 4
        for _ in range(3):
            size //= 2
        if size < 1:
            raise UserError(f"--res {res} is too small for AlexNet")
        self.fc = nn.Linear(192 * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG11(nn.Module):
    """VGG-11 with instance norm (the reference's default ``VGG11``), linear head."""

    def __init__(self, channels: int, num_classes: int, res: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, size = channels, res
        for i, v in enumerate(_VGG11):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
                continue
            pad = 3 if channels == 1 and i == 0 and res == 28 else 1
            layers += [nn.Conv2d(in_ch, v, 3, padding=pad), instance_norm(v), nn.ReLU()]
            size = size + 2 * pad - 2
            in_ch = v
        if size < 1:
            raise UserError(f"--res {res} is too small for VGG11 (needs at least 32, or 28 for 1 channel)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block with instance norm."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = instance_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = instance_norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), instance_norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with instance norm, as in the MTT reference (``ResNet18``).

    Up to 64 px the stem is the reference's 3x3 stride-1 conv; above 64 px it is the
    ImageNet stem (7x7 stride 2 + 3x3 max pool) so a 224 px patch does not cost 49x the
    compute of a 32 px one. The head averages the last feature map to 1x1 (the reference's
    ``avg_pool2d(out, 4)`` at 32 px).
    """

    def __init__(self, channels: int, num_classes: int, res: int):
        super().__init__()
        if res > 64:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), instance_norm(64),
                nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False), instance_norm(64),
                nn.ReLU(),
            )
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            for s in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


ARCHS = ("convnet", "convnetd1", "convnetd2", "convnetd3", "convnetd4", "convnetd5",
         "alexnet", "vgg11", "resnet18")


def get_network(
    arch: str, channels: int, num_classes: int, res: int, *, width: int = 128, depth: int = 3,
    block_impl: str = "auto",
) -> nn.Module:
    """Build a network by name.

    Args:
        arch: ``convnet`` (depth from ``depth``), ``convnetdN`` (depth N), ``alexnet``,
            ``vgg11`` or ``resnet18`` (case-insensitive).
        channels, num_classes, res: the data's shape.
        width, depth: ConvNet width and depth (ignored by the other architectures).
        block_impl: the ConvNet's norm/ReLU/pool implementation (``auto``, ``fused``,
            ``reference``; see :class:`ConvNet`); ignored by the other architectures.
    """
    name = arch.lower().replace("-", "").replace("_", "")
    if name == "convnet":
        return ConvNet(channels, num_classes, res, width=width, depth=depth, block_impl=block_impl)
    if name.startswith("convnetd") and name[8:].isdigit():
        return ConvNet(channels, num_classes, res, width=width, depth=int(name[8:]), block_impl=block_impl)
    if name == "alexnet":
        return AlexNet(channels, num_classes, res)
    if name == "vgg11":
        return VGG11(channels, num_classes, res)
    if name == "resnet18":
        return ResNet18(channels, num_classes, res)
    raise UserError(f"unknown architecture {arch!r} (--arch/--archs); choose from {', '.join(ARCHS)}")


def seeded_network(arch: str, channels: int, num_classes: int, res: int, *, width: int, depth: int, seed: int) -> nn.Module:
    """A network whose initialization depends only on ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_network(arch, channels, num_classes, res, width=width, depth=depth)
