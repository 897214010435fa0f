import pytest
import torch

from compressor.calibration.clipping import ACIQ_GAUSS, ACIQ_LAPLACE, _expected_mse, aciq_alpha, compute_range
from compressor.calibration.stats import Histogram, TensorStats


def stats_and_hist(x):
    s = TensorStats()
    for chunk in x.split(len(x) // 4):
        s.update(chunk.view(-1, 10))
    rec = s.record()
    h = Histogram()
    for chunk in x.split(len(x) // 4):
        h.update(chunk)
    return rec, h


def quant_mse(x, lo, hi, bits):
    scale = (hi - lo) / (2**bits - 1)
    q = torch.round((x.clamp(lo, hi) - lo) / scale) * scale + lo
    return float(((q - x) ** 2).mean())


@pytest.fixture(scope="module")
def laplace():
    torch.manual_seed(0)
    return torch.distributions.Laplace(0.0, 1.0).sample((200_000,))


@pytest.fixture(scope="module")
def gauss():
    torch.manual_seed(1)
    return torch.randn(200_000)


@pytest.mark.parametrize("bits", range(2, 9))
def test_numeric_aciq_alphas_reproduce_distillers_tables(bits):
    for laplace, table in ((True, ACIQ_LAPLACE), (False, ACIQ_GAUSS)):
        grid = [a / 1000 for a in range(500, 15000)]
        best = min(grid, key=lambda a: _expected_mse(a, bits, laplace))
        assert best == pytest.approx(table[bits], abs=0.03)


def test_aciq_alpha_beyond_the_table_grows():
    assert aciq_alpha(9, True) > ACIQ_LAPLACE[8] and aciq_alpha(9, False) > ACIQ_GAUSS[8]


def test_none_avg_nstd(gauss):
    rec, _ = stats_and_hist(gauss)
    assert compute_range("NONE", rec, 8) == (rec["min"], rec["max"])
    lo, hi = compute_range("AVG", rec, 8)
    assert rec["min"] < lo < hi < rec["max"]
    lo, hi = compute_range("N_STD", rec, 8, n_stds=2)
    assert lo == pytest.approx(rec["mean"] - 2 * rec["std"]) and hi == pytest.approx(rec["mean"] + 2 * rec["std"])
    with pytest.raises(ValueError, match="clip_n_stds"):
        compute_range("N_STD", rec, 8)


def test_aciq_laplace_and_gauss_on_their_distributions(laplace, gauss):
    rec, _ = stats_and_hist(laplace)
    lo, hi = compute_range("LAPLACE", rec, 4, symmetric=True)
    assert hi == pytest.approx(-lo) and hi == pytest.approx(5.03 * rec["b"], rel=0.02)
    assert quant_mse(laplace, lo, hi, 4) < quant_mse(laplace, rec["min"], rec["max"], 4) / 3
    rec, _ = stats_and_hist(gauss)
    lo, hi = compute_range("GAUSS", rec, 4)
    assert hi == pytest.approx(2.55 * rec["std"], rel=0.02)


def test_half_range_for_nonnegative_tensors(laplace):
    relu = laplace.clamp(min=0)
    rec, _ = stats_and_hist(relu)
    lo, hi = compute_range("LAPLACE", rec, 4, half_range=True)
    assert lo == 0.0 and hi == pytest.approx(rec["mean"] + aciq_alpha(5, True) * rec["b"])


def test_percentile(gauss):
    rec, hist = stats_and_hist(gauss)
    lo, hi = compute_range("PERCENTILE", rec, 8, symmetric=True, percentile=99.0, histogram=hist)
    assert hi == pytest.approx(float(torch.quantile(gauss.abs()[:100_000], 0.99)), rel=0.02)


@pytest.mark.parametrize("method", ["KL", "MSE"])
def test_histogram_methods_clip_outliers_and_reduce_error(laplace, method):
    rec, hist = stats_and_hist(laplace)
    lo, hi = compute_range(method, rec, 4, symmetric=True, histogram=hist)
    assert 2.0 < hi < 0.8 * rec["max"]
    assert quant_mse(laplace, lo, hi, 4) < quant_mse(laplace, rec["min"], rec["max"], 4)


def test_mse_is_at_least_as_good_as_aciq_on_its_histogram(laplace):
    rec, hist = stats_and_hist(laplace)
    mse = compute_range("MSE", rec, 4, symmetric=True, histogram=hist)
    aciq = compute_range("LAPLACE", rec, 4, symmetric=True)
    assert quant_mse(laplace, *mse, 4) <= quant_mse(laplace, *aciq, 4) * 1.05


def test_histogram_methods_need_a_histogram(gauss):
    rec, _ = stats_and_hist(gauss)
    with pytest.raises(ValueError, match="needs a histogram"):
        compute_range("KL", rec, 8)
    with pytest.raises(ValueError, match="expected one of"):
        compute_range("FOO", rec, 8)


def test_mse_uses_the_asymmetric_grid_of_a_skewed_tensor():
    # mostly positive values with a small negative tail: the asymmetric grid is [min, t], not [-t, t]
    torch.manual_seed(3)
    x = torch.cat([torch.distributions.Exponential(0.5).sample((100_000,)), -torch.rand(20_000)])
    rec, hist = stats_and_hist(x)
    lo, hi = compute_range("MSE", rec, 4, symmetric=False, histogram=hist)
    assert lo == rec["min"]
    best = min(quant_mse(x, lo, t, 4) for t in torch.linspace(1.0, rec["max"], 60).tolist())
    assert quant_mse(x, lo, hi, 4) <= best * 1.1
    assert quant_mse(x, lo, hi, 4) < quant_mse(x, rec["min"], rec["max"], 4)
