"""Pre-activation ResNet for CIFAR-10 (He et al. 2016), with Distiller's module names."""

from torch import nn

from compressor.models.resnet_cifar import conv3x3

__all__ = [f"preact_resnet{d}_cifar" for d in (20, 32, 44, 56, 110)]


class PreactBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes)
        self.pre_relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x):
        preact = self.pre_relu(self.pre_bn(x))
        out = self.relu(self.bn(self.conv1(preact)))
        out = self.conv2(out)
        residual = x if self.downsample is None else self.downsample(preact)
        return out + residual


class PreactResNetCifar(nn.Module):
    def __init__(self, layers, num_classes=10, in_channels=3):
        super().__init__()
        self.inplanes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.final_bn = nn.BatchNorm2d(64)
        self.final_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False))
        layers = [PreactBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [PreactBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(self.avgpool(x).flatten(1))


def _depth(depth):
    n = (depth - 2) // 6
    return lambda **kw: PreactResNetCifar([n, n, n], **kw)


preact_resnet20_cifar = _depth(20)
preact_resnet32_cifar = _depth(32)
preact_resnet44_cifar = _depth(44)
preact_resnet56_cifar = _depth(56)
preact_resnet110_cifar = _depth(110)
