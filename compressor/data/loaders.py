"""Train / validation / test loaders for every supported dataset.

Shuffling uses a sampler re-seeded from (seed, epoch) at each epoch, as
DistributedSampler does, so a resumed run sees the same batches as an
uninterrupted one without saving loader state.
"""

import os

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from compressor.data.digits import digits_datasets
from compressor.data.idx import idx_datasets
from compressor.data.sharding import GlobalBatchShard
from compressor.core.errors import DataError

DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "imagenet")
# served at the shape of the arch (padded/resized, grey channel repeated), so any arch trains on them
SHAPE_ADAPTIVE = ("digits", "fashion_mnist", "mnist")
SPLIT_SEED = 1234  # fixed: the validation split must not change with --seed



class EpochShuffleSampler(Sampler):
    """A random permutation (or a random ``fraction`` of it) that depends only on seed and epoch."""

    def __init__(self, size, seed=0, fraction=1.0):
        self.size, self.seed, self.fraction = size, seed, fraction
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return max(1, int(round(self.size * self.fraction)))

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g)[: len(self)].tolist())


def _fraction_subset(dataset, fraction, seed):
    if fraction >= 1.0:
        return dataset
    n = max(1, int(round(len(dataset) * fraction)))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, idx.tolist())


def _torchvision_datasets(dataset, data_dir):
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if not data_dir:
        raise DataError(f"--dataset {dataset} needs DATASET_DIR (positional argument): the folder holding it")
    if dataset == "cifar10":
        norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        expected = os.path.join(data_dir, "cifar-10-batches-py")
        how = "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it in DATASET_DIR"
        make = lambda train, tf: tvd.CIFAR10(data_dir, train=train, download=False, transform=tf)  # noqa: E731
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test_tf = T.Compose([T.ToTensor(), norm])
    else:
        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        expected = os.path.join(data_dir, "train") + " and " + os.path.join(data_dir, "val")
        how = "lay out ILSVRC2012 as DATASET_DIR/{train,val}/<class>/<image> (one folder per class)"

        def make(train, tf):
            return tvd.ImageFolder(os.path.join(data_dir, "train" if train else "val"), transform=tf)

        train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    try:
        return make(True, train_tf), make(False, test_tf), make(True, test_tf)
    except (RuntimeError, FileNotFoundError) as exc:
        raise DataError(
            f"{dataset} not found: looked for {expected} ({exc}). Datasets are never downloaded at run time: {how}."
        ) from None


def load_data(dataset, data_dir, input_shape, batch_size, workers=0, validation_split=0.1,
              effective_train_size=1.0, effective_valid_size=1.0, effective_test_size=1.0, seed=0, rank=0, world=1):
    """(train_loader, val_loader, test_loader); with ``validation_split`` 0 the test set validates (as Distiller).

    ``batch_size`` is the global batch: with ``world`` > 1 processes each loader yields this ``rank``'s
    slice of every global batch (``GlobalBatchShard``)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}', expected one of {', '.join(DATASETS)}")
    if dataset == "digits":
        train_set, test_set = digits_datasets(input_shape)
        train_eval_set = train_set
    elif dataset in ("mnist", "fashion_mnist"):
        train_set, test_set, train_eval_set = idx_datasets(dataset, data_dir, input_shape)
    else:
        train_set, test_set, train_eval_set = _torchvision_datasets(dataset, data_dir)

    if not 0.0 <= validation_split < 1.0:
        raise DataError(f"--vs/--validation-split must be in [0, 1), got {validation_split}")
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_val = int(round(len(train_set) * validation_split))
    if n_val:
        val_set = Subset(train_eval_set, perm[:n_val])
        train_set = Subset(train_set, perm[n_val:])
    else:
        val_set = test_set
    for flag, fraction, size in (("--etrs", effective_train_size, len(train_set)),
                                 ("--evs", effective_valid_size, len(val_set)),
                                 ("--etes", effective_test_size, len(test_set))):
        if int(round(size * fraction)) < 1:  # once: a whole "run" on one image (or none), exit 0
            raise DataError(f"{flag} {fraction:g} leaves no image of the {size} (needs at least {1 / size:.2g})")
    val_set = _fraction_subset(val_set, effective_valid_size, SPLIT_SEED + 1)
    test_set = _fraction_subset(test_set, effective_test_size, SPLIT_SEED + 2)

    common = dict(batch_size=batch_size // world, num_workers=workers, pin_memory=torch.cuda.is_available())
    sampler = EpochShuffleSampler(len(train_set), seed, effective_train_size)
    if world > 1:
        sampler = GlobalBatchShard(sampler, batch_size, rank, world, drop_tiny_last=True)
    train_loader = DataLoader(train_set, sampler=sampler, **common)
    val_loader = DataLoader(val_set, sampler=_in_order(val_set, batch_size, rank, world), **common)
    test_loader = DataLoader(test_set, sampler=_in_order(test_set, batch_size, rank, world), **common)
    return train_loader, val_loader, test_loader


def _in_order(dataset, batch_size, rank, world):
    """Sequential order; with several processes, this rank's slice of each global batch (no sample twice)."""
    order = range(len(dataset))
    return GlobalBatchShard(order, batch_size, rank, world) if world > 1 else None


def load_calibration_data(dataset, data_dir, input_shape, batch_size, size, workers=0, validation_split=0.1,
                          rank=0, world=1):
    """A loader over ``size`` training-split images (a count, or a fraction when <= 1), with test-time
    transforms, never the test set and never the validation images (this rank's share of each global batch)."""
    if dataset == "digits":
        train_set, _ = digits_datasets(input_shape)
    elif dataset in ("mnist", "fashion_mnist"):
        _, _, train_set = idx_datasets(dataset, data_dir, input_shape)
    else:
        _, _, train_set = _torchvision_datasets(dataset, data_dir)
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    train_idx = perm[int(round(len(train_set) * validation_split)):]
    count = int(round(len(train_idx) * size)) if size <= 1 else int(size)
    if count < 1:
        raise DataError(f"--calibration-size {size} selects no image")
    subset = Subset(train_set, train_idx[: min(count, len(train_idx))])
    return DataLoader(subset, batch_size=batch_size // world, sampler=_in_order(subset, batch_size, rank, world),
                      num_workers=workers)


class ChannelsLast:
    """A loader whose 4-D image batches come in channels-last memory format (--channels-last); everything else
    (``sampler``, ``dataset``, ``len``) is the wrapped loader's. ``.to(device)`` keeps the format."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            x, *rest = batch
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield (x, *rest)

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)
