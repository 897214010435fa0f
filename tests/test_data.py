import pytest
import torch

from compressor.data import DataError, load_data
from compressor.data.loaders import EpochShuffleSampler


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
    with pytest.raises(DataError, match=f"looked for {tmp_path}/MNIST/raw"):
        load_data("mnist", str(tmp_path), None, 8)
    with pytest.raises(DataError, match="imagenet not found"):
        load_data("imagenet", str(tmp_path), None, 8)
