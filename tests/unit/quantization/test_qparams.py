import pytest
import torch

from compressor.quantization.modes import LinearQuantMode as M
from compressor.quantization.modes import parse_mode
from compressor.quantization.qparams import qparams_from_range, quant_range, to_distiller


def distiller(lo, hi, bits, mode):
    s, z = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, mode)
    ds, dz = to_distiller(s, z)
    return ds.item(), dz.item()


def test_distiller_reference_numbers():
    assert distiller(-4.0, 4.0, 8, M.SYMMETRIC) == pytest.approx((31.875, 0.0))
    assert distiller(-4.0, 4.0, 8, M.SYMMETRIC_RESTRICTED) == pytest.approx((31.75, 0.0))
    assert distiller(-2.0, 10.0, 8, M.ASYMMETRIC_UNSIGNED) == pytest.approx((21.25, -42.0))
    assert distiller(-2.0, 10.0, 8, M.ASYMMETRIC_SIGNED) == pytest.approx((21.25, 86.0))


def test_quant_ranges():
    assert quant_range(8, M.SYMMETRIC) == (-128, 127)
    assert quant_range(8, M.SYMMETRIC_RESTRICTED) == (-127, 127)
    assert quant_range(4, M.ASYMMETRIC_UNSIGNED) == (0, 15)
    assert quant_range(4, M.ASYMMETRIC_SIGNED) == (-8, 7)


def test_asymmetric_range_always_contains_zero():
    s, z = qparams_from_range(torch.tensor(1.0), torch.tensor(5.0), 8, M.ASYMMETRIC_UNSIGNED)
    assert z.item() == 0 and s.item() == pytest.approx(5.0 / 255)


def test_per_channel_ranges_give_per_channel_params():
    s, z = qparams_from_range(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 4.0]), 8, M.SYMMETRIC)
    assert s.tolist() == pytest.approx([1 / 127.5, 4 / 127.5]) and z.tolist() == [0, 0]


def test_degenerate_range_has_finite_scale():
    s, _ = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), 8, M.ASYMMETRIC_UNSIGNED)
    assert torch.isfinite(s).all() and s.item() > 0


def test_parse_mode_forms():
    assert parse_mode("asymmetric_unsigned") == (M.ASYMMETRIC_UNSIGNED, M.ASYMMETRIC_UNSIGNED)
    assert parse_mode({"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"}) == (
        M.ASYMMETRIC_UNSIGNED, M.SYMMETRIC)
    with pytest.raises(ValueError, match="expected one of"):
        parse_mode("FOO")
    with pytest.raises(ValueError, match="only 'activations' and 'weights'"):
        parse_mode({"acts": "SYMMETRIC"})
