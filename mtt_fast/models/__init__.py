"""Networks (ConvNet backbone; AlexNet, VGG11, ResNet18 for cross-architecture) and flat calling."""

from mtt_fast.models.flat import FlatParams, forward_flat
from mtt_fast.models.networks import (
           ARCHS,
           VGG11,
           AlexNet,
           ConvNet,
           ResNet18,
           get_network,
           seeded_network,
)

__all__ = ["ARCHS", "VGG11", "AlexNet", "ConvNet", "FlatParams", "ResNet18", "forward_flat", "get_network",
           "seeded_network"]
