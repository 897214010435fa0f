"""VGG-16 for CIFAR-10 (Distiller's vgg16_cifar: VGG features, one linear classifier)."""

from torch import nn

__all__ = ["vgg16_cifar", "vgg16_bn_cifar"]

_CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    def __init__(self, batch_norm=False, num_classes=10, in_channels=3):
        super().__init__()
        layers, c = [], in_channels
        for v in _CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16_cifar(**kw):
    return VGGCifar(batch_norm=False, **kw)


def vgg16_bn_cifar(**kw):
    return VGGCifar(batch_norm=True, **kw)
