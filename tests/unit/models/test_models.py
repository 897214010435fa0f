import pytest
import torch

from compressor.core.errors import ModelError
from compressor.models import _LOCAL as LOCAL_ARCHS
from compressor.models import arch_family, create_model
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer


@pytest.mark.parametrize("arch", sorted(LOCAL_ARCHS))
def test_zoo_model_runs_and_quantizes_without_rewrite(arch):
    torch.manual_seed(0)
    dataset, shape = arch_family(arch)
    model = create_model(arch, dataset).eval()
    x = torch.randn(2, *shape)
    ref = model(x)
    assert ref.shape == (2, 10)
    gated = any(isinstance(m, (torch.nn.SiLU, torch.nn.Hardswish)) for m in model.modules())
    q = QuantAwareTrainRangeLinearQuantizer(model, None, bits_weights=8, bits_activations=8,
                                            mode="ASYMMETRIC_UNSIGNED")
    gm = q.prepare_model().eval()
    if gated:  # SiLU/hardswish split into x * sigmoid(x) / x * hardsigmoid(x) (graph/capture.py): same function
        torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))  # logits of any scale
    else:
        assert torch.equal(gm(x), ref)  # prepared but not yet enabled: FP32
    n_layers = sum(1 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert len(q.weight_quantizers) == n_layers


def test_arch_families_and_input_shapes():
    assert arch_family("resnet20_cifar") == ("cifar10", (3, 32, 32))
    assert arch_family("simplenet_mnist") == ("mnist", (1, 28, 28))
    assert arch_family("simplenet_digits") == ("digits", (1, 8, 8))
    assert arch_family("resnet18") == ("imagenet", (3, 224, 224))


def test_torchvision_model_by_name_with_dataset_classes():
    model = create_model("resnet18", "digits")
    assert model.fc.out_features == 10


def test_unknown_arch_is_clear():
    with pytest.raises(ModelError, match="unknown architecture 'resnet21_cifar'"):
        create_model("resnet21_cifar", "cifar10")
