"""torchvision's hard-to-quantize families, sized for 32x32 images (CIFAR-10, Fashion-MNIST served at 3x32x32).

Each is torchvision's own class (the same modules, op for op, that the zoo quantizes and exports at 224x224), with
the changes CIFAR versions of these networks make (as ``resnet20_cifar`` is ResNet sized for CIFAR): the stem and
the first downsampling block keep stride 1, so a 32x32 image ends on a 4x4 map instead of 1x1, and the widths or
depths are cut where the ImageNet network would cost more than a 2-core CPU can train in minutes per epoch.
MACs per 32x32 image (torch's FlopCounterMode, as ``--summary compute``) are in each docstring.

- ``mobilenet_v2_cifar``: MobileNet-V2, width 0.5 (inverted residuals, depthwise convs, ReLU6).
- ``mobilenet_v3_small_cifar``: MobileNet-V3 small (hardswish, squeeze-excitation with hardsigmoid).
- ``efficientnet_b0_cifar``: EfficientNet-B0 at width 0.5, depth 0.5 (SiLU, squeeze-excitation with sigmoid,
  stochastic depth).
- ``convnext_cifar``: ConvNeXt with ConvNeXt-Atto's widths (40-320) and depths (2-2-6-2), a 2x2 stem
  (7x7 depthwise convs, LayerNorm, GELU, layer scale).
- ``vit_cifar``: a Vision Transformer on 4x4 patches, 6 layers of width 128, 4 heads, MLP 256 (LayerNorm,
  multi-head attention, softmax, GELU).
"""

from functools import partial

import torchvision
from torch import nn
from torchvision.models import convnext, efficientnet

__all__ = ["mobilenet_v2_cifar", "mobilenet_v3_small_cifar", "efficientnet_b0_cifar", "convnext_cifar",
           "vit_cifar"]


def _stride_one(module):
    """Set the first strided conv inside ``module`` to stride 1 (its padding already keeps the size)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
            return
    raise ValueError(f"no strided conv in {type(module).__name__}")


def _first_strided_blocks(features, count):
    """The first ``count`` entries of ``features`` that downsample."""
    found = []
    for block in features:
        if any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in block.modules()):
            found.append(block)
        if len(found) == count:
            break
    return found


def _cifar_strides(features):
    """Stem and first downsampling block at stride 1: a total stride of 8 (32x32 -> 4x4)."""
    for block in _first_strided_blocks(features, 2):
        _stride_one(block)


def _check_input(in_channels):
    if in_channels != 3:
        raise ValueError(f"expects 3-channel images (one-channel datasets are served as 3 channels), got {in_channels}")


def mobilenet_v2_cifar(num_classes=10, in_channels=3):
    """MobileNet-V2 at width 0.5, total stride 8: 28.0 M MACs per 32x32 image, 0.70 M parameters."""
    _check_input(in_channels)
    model = torchvision.models.MobileNetV2(num_classes=num_classes, width_mult=0.5)
    _cifar_strides(model.features)
    return model


def mobilenet_v3_small_cifar(num_classes=10, in_channels=3):
    """MobileNet-V3 small, total stride 8: 17.5 M MACs per 32x32 image, 1.53 M parameters."""
    _check_input(in_channels)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    _cifar_strides(model.features)
    return model


def efficientnet_b0_cifar(num_classes=10, in_channels=3):
    """EfficientNet-B0's blocks at width 0.5 and depth 0.5, total stride 8: 20.7 M MACs per 32x32 image,
    0.66 M parameters."""
    _check_input(in_channels)
    conf = partial(efficientnet.MBConvConfig, width_mult=0.5, depth_mult=0.5)
    setting = [
        conf(1, 3, 1, 32, 16, 1),
        conf(6, 3, 2, 16, 24, 2),
        conf(6, 5, 2, 24, 40, 2),
        conf(6, 3, 2, 40, 80, 3),
        conf(6, 5, 1, 80, 112, 3),
        conf(6, 5, 2, 112, 192, 4),
        conf(6, 3, 1, 192, 320, 1),
    ]
    model = efficientnet.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.1, num_classes=num_classes,
                                      last_channel=640)
    _cifar_strides(model.features)
    return model


def convnext_cifar(num_classes=10, in_channels=3):
    """ConvNeXt-Atto's stages (widths 40/80/160/320, depths 2/2/6/2) behind a 2x2 stride-2 stem instead of 4x4
    stride 4: 16x16 -> 2x2 maps, 44.3 M MACs per 32x32 image, 3.38 M parameters."""
    _check_input(in_channels)
    setting = [convnext.CNBlockConfig(40, 80, 2), convnext.CNBlockConfig(80, 160, 2),
               convnext.CNBlockConfig(160, 320, 6), convnext.CNBlockConfig(320, None, 2)]
    model = convnext.ConvNeXt(setting, stochastic_depth_prob=0.05, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(3, stem.out_channels, kernel_size=2, stride=2)
    return model


def vit_cifar(num_classes=10, in_channels=3):
    """ViT on 32x32 images in 4x4 patches (64 tokens and a class token), 6 layers, width 128, 4 heads, MLP 256:
    51.5 M MACs per 32x32 image, 0.81 M parameters."""
    _check_input(in_channels)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=6, num_heads=4,
                                                hidden_dim=128, mlp_dim=256, num_classes=num_classes)
