import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from compressor.core.errors import DataError
from compressor.data import load_data
from compressor.data.idx import DEBIAN_FASHION_MNIST, FILES, idx_datasets, load_idx_arrays
from compressor.data.loaders import EpochShuffleSampler, load_calibration_data


def test_digits_split_is_fixed_and_disjoint():
    train, val, test = load_data("digits", None, (1, 8, 8), 512, validation_split=0.1)
    assert (len(train.sampler), len(val.dataset), len(test.dataset)) == (1293, 144, 360)
    x_test = torch.cat([x for x, _ in test]).flatten(1)
    x_train = torch.cat([x for x, _ in train]).flatten(1)
    # no test image appears in the training split
    assert torch.cdist(x_test, x_train).min() > 0
    _, _, test2 = load_data("digits", None, (1, 8, 8), 512, seed=99)
    assert torch.equal(torch.cat([y for _, y in test]), torch.cat([y for _, y in test2]))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 224, 224), (1, 8, 8)])
def test_digits_served_at_arch_shape(shape):
    _, _, test = load_data("digits", None, shape, 4)
    x, y = next(iter(test))
    assert x.shape == (4, *shape) and y.dtype == torch.int64


def test_zero_validation_split_validates_on_test_set():
    train, val, test = load_data("digits", None, (1, 8, 8), 64, validation_split=0.0)
    assert val.dataset is test.dataset and len(train.sampler) == 1437


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(100, seed=3), EpochShuffleSampler(100, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    b.set_epoch(6)
    assert list(a) != list(b)
    assert len(EpochShuffleSampler(100, fraction=0.25)) == 25


def test_missing_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=f"mnist not found: looked for .* in {tmp_path}/MNIST/raw"):
        load_data("mnist", str(tmp_path), None, 8)
    with pytest.raises(DataError, match="--dataset mnist needs DATASET_DIR"):
        load_data("mnist", None, None, 8)
    with pytest.raises(DataError, match="imagenet not found"):
        load_data("imagenet", str(tmp_path), None, 8)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """A DATASET_DIR in torchvision's layout holding a small Fashion-MNIST-shaped set: 1,000 training and 200
    test images of random pixels, 10 balanced classes (the loader's logic needs no real clothes)."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 1000), ("test", 200)):
        images, labels = FILES[split]
        _write_idx(raw / (images + ".gz"), rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / (labels + ".gz"), np.repeat(np.arange(10), count // 10))
    return str(root)


# the files, not the folder: an emptied folder (a package removed by hand, a mount over it) is not the data
@pytest.mark.skipif(not os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz")), reason=(
    f"the real Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST}): `apt-get install dataset-fashion-mnist` "
    "(Debian/Ubuntu; .ci/run installs it); the loader's own tests below run on generated idx files"))
def test_fashion_mnist_from_the_debian_package_has_the_official_splits():
    (x_train, y_train), (x_test, y_test) = load_idx_arrays("fashion_mnist", None)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28) and x_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10


def test_fashion_mnist_loaders_split_sizes_and_shapes(fashion_dir):
    train, val, test = load_data("fashion_mnist", fashion_dir, (3, 32, 32), 64, validation_split=0.1)
    assert (len(train.sampler), len(val.dataset), len(test.dataset)) == (900, 100, 200)
    x, y = next(iter(test))
    assert x.shape == (64, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey channel repeated
    # the 2-pixel border added around the 28x28 image is background (pixel value 0)
    background = x[0, 0, 0, 0].item()
    assert torch.all(x[:, :, :2, :] == background) and torch.all(x[:, :, :, -2:] == background)
    labels = torch.cat([y for _, y in test])
    assert torch.bincount(labels).tolist() == [20] * 10
    # MNIST-shaped archs get the images as they are
    _, _, test28 = load_data("fashion_mnist", fashion_dir, (1, 28, 28), 8)
    assert next(iter(test28))[0].shape == (8, 1, 28, 28)


def test_fashion_mnist_training_augmentation_shifts_and_flips_only_training_images(fashion_dir):
    train_set, test_set, eval_set = idx_datasets("fashion_mnist", fashion_dir, (1, 32, 32))
    torch.manual_seed(0)
    views = torch.stack([train_set[7][0] for _ in range(16)])
    assert views.shape == (16, 1, 32, 32) and len({v.sum().item() for v in views}) > 1  # random shifts
    assert torch.equal(eval_set[7][0], eval_set[7][0]) and not torch.equal(eval_set[7][0], test_set[7][0])
    # shifted views hold the same pixels as the centred image, up to the 2-pixel margin
    assert torch.allclose(views.sum(dim=(1, 2, 3)).mean(), eval_set[7][0].sum(), rtol=0.05)


def test_calibration_images_come_from_the_training_split_only(fashion_dir):
    loader = load_calibration_data("fashion_mnist", fashion_dir, (1, 28, 28), 64, 128)
    x = torch.cat([b for b, _ in loader]).flatten(1)
    _, _, test = load_data("fashion_mnist", fashion_dir, (1, 28, 28), 1000)
    x_test = next(iter(test))[0].flatten(1)
    assert len(x) == 128 and torch.cdist(x, x_test).min() > 0


def test_dataset_dir_in_torchvision_layout_takes_gzip_or_raw_and_is_never_ignored(tmp_path, fashion_dir):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for names in FILES.values():
        for name in names:
            src = os.path.join(fashion_dir, "FashionMNIST", "raw", name + ".gz")
            if "images" in name:  # unpacked, as torchvision leaves them
                with gzip.open(src) as f, open(raw / name, "wb") as out:
                    shutil.copyfileobj(f, out)
            else:
                shutil.copy(src, raw / (name + ".gz"))
    (x_train, _), (x_test, _) = load_idx_arrays("fashion_mnist", str(tmp_path))
    assert x_train.shape == (1000, 28, 28) and x_test.shape == (200, 28, 28)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="is not an idx file"):
        load_idx_arrays("fashion_mnist", str(tmp_path))
    # a DATASET_DIR that does not hold the dataset is an error, never a silent fall-back to Debian's copy
    with pytest.raises(DataError, match=f"fashion_mnist not found: .* in {tmp_path}/typo/FashionMNIST/raw\\. "):
        load_idx_arrays("fashion_mnist", str(tmp_path / "typo"))


@pytest.mark.parametrize("flag, key", [("--etrs", "effective_train_size"), ("--evs", "effective_valid_size"),
                                       ("--etes", "effective_test_size")])
def test_an_effective_size_that_leaves_no_image_is_an_error(flag, key):
    # --etrs 0 (or 1e-9) used to train on one image and exit 0
    for fraction in (0.0, 1e-9):
        with pytest.raises(DataError, match=f"{flag} {fraction:g} leaves no image of the"):
            load_data("digits", None, (1, 8, 8), 64, **{key: fraction})
    train, val, test = load_data("digits", None, (1, 8, 8), 64, **{key: 0.01})
    assert min(len(train.sampler), len(val.dataset), len(test.dataset)) >= 1
