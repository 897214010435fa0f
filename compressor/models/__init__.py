"""Model zoo: CIFAR/MNIST/digits models by Distiller's names, plus torchvision classifiers by name."""

import os

import torch
import torchvision

from compressor.core.errors import ModelError
from compressor.models import mobile_cifar, preact_resnet_cifar, resnet_cifar, simplenet, vgg_cifar

_LOCAL = {}
for _module in (resnet_cifar, preact_resnet_cifar, simplenet, vgg_cifar, mobile_cifar):
    for _name in _module.__all__:
        if _name.endswith(("_cifar", "_mnist", "_digits")):
            _LOCAL[_name] = getattr(_module, _name)

# family -> (dataset it was designed for, input shape it expects)
_FAMILIES = {
    "_cifar": ("cifar10", (3, 32, 32)),
    "_mnist": ("mnist", (1, 28, 28)),
    "_digits": ("digits", (1, 8, 8)),
}
IMAGENET = ("imagenet", (3, 224, 224))
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10, "cifar10": 10, "imagenet": 1000}
# digits, MNIST and Fashion-MNIST are served at the arch's shape (compressor.data.idx)
DATASET_CHANNELS = {"cifar10": 3, "imagenet": 3}



def torchvision_names():
    return sorted(torchvision.models.list_models(module=torchvision.models))


def arch_names():
    return sorted(_LOCAL) + torchvision_names()


def arch_family(arch):
    """(default dataset, input shape) of ``arch`` (Distiller inferred the dataset from the name)."""
    for suffix, info in _FAMILIES.items():
        if arch.endswith(suffix):
            return info
    return IMAGENET


def create_model(arch, dataset, pretrained=False):
    """Build ``arch`` for ``dataset`` (its number of classes and, for ImageNet archs, its image size)."""
    if dataset not in NUM_CLASSES:
        raise ModelError(f"unknown dataset '{dataset}'; known: {', '.join(NUM_CLASSES)}")
    num_classes = NUM_CLASSES[dataset]
    in_shape = arch_family(arch)[1]
    channels = DATASET_CHANNELS.get(dataset)
    if channels is not None and channels != in_shape[0]:
        raise ModelError(f"{arch} expects {in_shape[0]}-channel images, {dataset} has {channels}; "
                         f"pick an arch made for {dataset}")
    if arch in _LOCAL:
        if pretrained:
            raise ModelError(f"--pretrained: no pretrained weights exist for {arch}; train it, then use --resume-from")
        return _LOCAL[arch](num_classes=num_classes, in_channels=in_shape[0])
    if arch not in torchvision_names():
        raise ModelError(f"unknown architecture '{arch}'. Known: {', '.join(arch_names())}")
    if not pretrained:
        extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    return _pretrained_torchvision(arch, num_classes)


def _pretrained_torchvision(arch, num_classes):
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise ModelError(
            f"--pretrained: weights for {arch} are not on this machine (looked for {path}) and are never "
            f"downloaded at run time. Download {weights.url} on a connected machine and copy it to that path "
            "(or set TORCH_HOME to the folder holding checkpoints/)."
        )
    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if num_classes != 1000:
        raise ModelError(f"--pretrained {arch} has 1000 ImageNet classes; the dataset has {num_classes}")
    return model
