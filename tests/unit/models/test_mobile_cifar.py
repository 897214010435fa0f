"""The 32x32 versions of torchvision's hard families: zoo names, torchvision's classes, a 4x4 last map."""

import pytest
import torch
import torchvision

from compressor.models import arch_family, create_model, mobile_cifar

EXPECTED_CLASS = {
    "mobilenet_v2_cifar": torchvision.models.MobileNetV2,
    "mobilenet_v3_small_cifar": torchvision.models.MobileNetV3,
    "efficientnet_b0_cifar": torchvision.models.EfficientNet,
    "convnext_cifar": torchvision.models.ConvNeXt,
    "vit_cifar": torchvision.models.VisionTransformer,
}


@pytest.mark.parametrize("arch", mobile_cifar.__all__)
def test_each_is_torchvisions_class_for_3x32x32(arch):
    assert set(EXPECTED_CLASS) == set(mobile_cifar.__all__)
    assert arch_family(arch) == ("cifar10", (3, 32, 32))
    model = create_model(arch, "fashion_mnist").eval()
    assert type(model) is EXPECTED_CLASS[arch]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["mobilenet_v2_cifar", "mobilenet_v3_small_cifar", "efficientnet_b0_cifar"])
def test_mobile_nets_end_on_a_4x4_map(arch):
    """Stem and first downsampling block at stride 1: total stride 8, as CIFAR versions of these nets do."""
    model = create_model(arch, "cifar10").eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
