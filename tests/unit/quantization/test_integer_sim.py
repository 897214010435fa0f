import warnings

import pytest
import torch
from torch import nn

from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.linear.integer_sim import IntegerArithmetic, approx_multiplier
from compressor.quantization.modes import LinearQuantMode as M

warnings.filterwarnings("ignore", category=UserWarning)


def quantizers(layer, x, per_channel, out_range):
    # 7-bit inputs, as torch.ao's x86 qconfig (reduce_range): fbgemm's u8*s8 pair sums saturate at int16 otherwise
    in_q = ActivationFakeQuant(7, M.ASYMMETRIC_UNSIGNED)
    in_q.set_state(True, False)
    in_q.set_range(x.min(), x.max())
    w_q = WeightFakeQuant(8, M.SYMMETRIC_RESTRICTED, per_channel, layer.weight.shape[0])
    w_q.set_state(True, True)
    w_q(layer.weight)
    w_q.set_state(True, False)
    out_q = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    out_q.set_state(True, False)
    out_q.set_range(*out_range)
    return in_q, w_q, out_q


def torch_kernel(layer, x, in_q, w_q, out_q):
    import torch.ao.nn.quantized as nnq

    torch.backends.quantized.engine = "fbgemm"
    w = layer.weight.detach()
    if w_q.per_channel:
        qw = torch.quantize_per_channel(w, w_q.scale.double(), torch.zeros_like(w_q.zero_point, dtype=torch.int64),
                                        0, torch.qint8)
    else:
        qw = torch.quantize_per_tensor(w, w_q.scale.item(), 0, torch.qint8)
    if isinstance(layer, nn.Conv2d):
        q = nnq.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                       padding=layer.padding)
    else:
        q = nnq.Linear(layer.in_features, layer.out_features)
    q.set_weight_bias(qw, layer.bias.detach())
    q.scale, q.zero_point = out_q.scale.item(), int(out_q.zero_point.item())
    qx = torch.quantize_per_tensor(x, in_q.scale.item(), int(in_q.zero_point.item()), torch.quint8)
    return q(qx).int_repr().to(torch.int64)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_integer_arithmetic_matches_torch_quantized_kernels(kind, per_channel):
    torch.manual_seed(0)
    if kind == "conv":
        layer = nn.Conv2d(8, 16, 3, padding=1)
        x = torch.rand(4, 8, 10, 10) * 3 - 0.5
    else:
        layer = nn.Linear(64, 32)
        x = torch.rand(16, 64) * 2 - 0.3
    with torch.no_grad():
        ref = layer(x)
    in_q, w_q, out_q = quantizers(layer, x, per_channel, (ref.min(), ref.max()))
    xq = in_q(x)
    # the hook reads the layer's weight through its fake-quantizer
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", w_q, unsafe=True)
    ours = IntegerArithmetic(w_q, in_q, out_q).compute(layer, xq)
    q_ours = torch.round(ours / out_q.scale.double()).to(torch.int64) + int(out_q.zero_point.item())
    torch.nn.utils.parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    q_torch = torch_kernel(layer, x, in_q, w_q, out_q)
    diff = (q_ours - q_torch).abs()
    assert diff.max().item() <= 1  # equal or within 1 LSB
    assert (diff == 0).float().mean().item() > 0.95


def test_fixed_point_multiplier():
    mult, shift = approx_multiplier(torch.tensor(0.0123), 8)
    assert mult.item() < 256 and abs(mult.item() / 2 ** shift.item() - 0.0123) / 0.0123 < 1 / 128
    assert mult.item() >= 128  # the multiplier uses its bits fully


def test_accumulator_saturates():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.full((1, 4), 100.0)
    in_q = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    in_q.set_state(True, False)
    in_q.set_range(0.0, 255.0)  # scale 1: q_x = x
    w_q = WeightFakeQuant(8, M.SYMMETRIC_RESTRICTED)
    w_q.set_state(True, True)
    w_q(layer.weight)  # scale 1/127: q_w = 127
    out_q = ActivationFakeQuant(16, M.ASYMMETRIC_UNSIGNED)
    out_q.set_state(True, False)
    out_q.set_range(0.0, 1e6)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", w_q, unsafe=True)
    wide = IntegerArithmetic(w_q, in_q, out_q, bits_accum=32).compute(layer, x)
    narrow = IntegerArithmetic(w_q, in_q, out_q, bits_accum=16).compute(layer, x)
    # 4 * 100 * 127 = 50800 > 2**15 - 1: a 16-bit accumulator saturates at 32767
    assert wide.item() == pytest.approx(400.0, rel=0.02)
    assert narrow.item() == pytest.approx(32767 / 127, rel=0.02)


@pytest.mark.parametrize("sx, zx, sy, zy", [(0.05, 128, 1 / 255, 0), (0.11, 40, 0.0039, 0), (0.023, 200, 0.0041, 3)])
def test_sigmoid_table_is_onnxruntimes_qlinearsigmoid(sx, zx, sy, zy):
    """Every one of the 256 levels as onnxruntime computes DequantizeLinear -> Sigmoid -> QuantizeLinear (fused to
    QLinearSigmoid, MLAS's logistic): torch's exact sigmoid missed one level of the first pair."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compressor.quantization.linear.integer_sim import IntegerSigmoid

    def const(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["f"]), helper.make_node("Sigmoid", ["f"], ["s"]),
         helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])],
        [const("sx", sx, np.float32), const("zx", zx, np.uint8), const("sy", sy, np.float32),
         const("zy", zy, np.uint8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.arange(256, dtype=np.uint8)})[0]

    hook = IntegerSigmoid(torch.nn.Identity(), _fixed_quantizer(sx, zx), _fixed_quantizer(sy, zy))
    assert hook.table().numpy().astype(np.uint8).tolist() == theirs.tolist()


@pytest.mark.parametrize("features", [64, 4096])
def test_accumulator_is_exact_in_float32_where_bounded_and_float64_beyond(features):
    """Float32 convolutions sum integers exactly below 2**24; 4096 inputs of 255 x 127 (2.6e8) are past that, so
    the layer falls back to float64: both give the exact integer accumulator (float32 alone would round it)."""
    torch.manual_seed(0)
    layer = nn.Linear(features, 3, bias=False)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.0)  # all positive: no cancellation, the sums reach the bound
    x = torch.rand(5, features) * 255
    in_q = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    in_q.set_state(True, False)
    in_q.set_range(0.0, 255.0)
    w_q = WeightFakeQuant(8, M.SYMMETRIC_RESTRICTED)
    w_q.set_state(True, True)
    w_q(layer.weight)
    w_q.set_state(True, False)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", w_q, unsafe=True)
    q_x = torch.round(in_q(x).double() / in_q.scale.double())
    q_w = torch.round(layer.weight.double() / w_q.scale.double())
    exact = q_x @ q_w.T  # float64: exact below 2**53
    a, w, bound = IntegerArithmetic._exact_operands(q_x.float(), q_w.float())
    assert a.dtype == (torch.float32 if features == 64 else torch.float64) and (bound is None) == (features == 4096)
    assert torch.equal(nn.functional.linear(a, w).double(), exact)
    if features == 4096:
        assert exact.abs().max() > 2**24 and not torch.equal((q_x.float() @ q_w.float().T).double(), exact)


def test_integer_arithmetic_is_the_same_under_autocast():
    """--amp: autocast would run the float32 convolution of the integer operands in bf16 and round the accumulator;
    the integer simulation turns autocast off, so the layer's output is the one computed without autocast."""
    torch.manual_seed(0)
    layer = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.rand(2, 16, 6, 6) * 4
    with torch.no_grad():
        ref = layer(x)
    in_q, w_q, out_q = quantizers(layer, x, True, (ref.min(), ref.max()))
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", w_q, unsafe=True)
    hook = IntegerArithmetic(w_q, in_q, out_q)
    hook.attach(layer)
    xq = in_q(x)
    plain = layer(xq)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(xq)
    assert mixed.dtype == torch.bfloat16
    assert torch.equal(mixed, plain.to(torch.bfloat16))
    assert torch.equal(plain, hook.compute(layer, xq).float())


class _ConvAddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        return self.relu2(self.conv2(a) + a)


def _ptq(**settings):
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

    torch.manual_seed(0)
    q = PostTrainLinearQuantizer(_ConvAddNet().eval(), bits_activations=8, bits_parameters=8, **settings)
    gm = q.prepare_model().eval()
    q.calibrate([(torch.randn(16, 3, 8, 8), None)])
    return q, gm


@pytest.mark.parametrize("settings, integer", [
    ({}, False),  # the default: float fake quantization (about a third of the integer simulation's cost)
    ({"integer_arithmetic": True}, True),
    ({"bits_accum": 16}, True),  # a narrow accumulator saturates in integer arithmetic only
    ({"scale_approx_mult_bits": 16}, True),
    ({"power_of_two_scales": True}, True),
    ({"overrides": {"conv2": {"bits_accum": 12}}}, True),
])
def test_evaluation_arithmetic_is_float_unless_asked_or_needed(settings, integer):
    from compressor.quantization.linear.integer_sim import integer_evaluation, integer_hooks

    q, gm = _ptq(**settings)
    hooks = integer_hooks(gm)
    # installed in either mode: both convs and the add
    assert q.integer_layers == ["conv1", "conv2"] and q.integer_adds == ["relu2"] and len(hooks) == 3
    assert q.integer_evaluation is integer and all(h.enabled is integer for h in hooks)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        evaluated = gm(x)
        with integer_evaluation(gm, True) as switched:  # what the export's agreement check computes with
            exact = gm(x)
        assert switched == 3 and all(h.enabled is integer for h in hooks)  # the previous state is back
        with integer_evaluation(gm, False):
            fake = gm(x)
    assert torch.equal(evaluated, exact if integer else fake)
    if not settings:  # the two arithmetics round some requantizations differently, by an output step or two
        step = q.activation_quantizers["relu2"].scale
        assert 0 < (exact - fake).abs().max() <= 2 * step * (1 + 1e-6)


def test_integer_only_settings_refuse_integer_arithmetic_false():
    from compressor.core.errors import RecipeError
    from compressor.recipe.build import read_recipe

    text = ("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n    integer_arithmetic: false\n"
            "    scale_approx_mult_bits: 16\n")
    with pytest.raises(RecipeError) as err:
        read_recipe(text, file="r.yaml")
    assert [str(i) for i in err.value.issues] == [
        "r.yaml:5: quantizers.q.scale_approx_mult_bits: acts in integer arithmetic only: set integer_arithmetic: "
        "true or leave it null (then it is on)"]


def _fixed_quantizer(scale, zero_point):
    """An enabled 8-bit activation quantizer that has seen a range: this scale and zero point."""
    q = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    q.scale.fill_(scale)
    q.zero_point.fill_(zero_point)
    q.observed = q.enabled = True
    return q


def _ort_qdq(nodes, inputs, rank, scales):
    """A runner of a QDQ graph of ``nodes`` on uint8 ``inputs`` of ``rank`` dims to the uint8 output ``y``;
    ``scales``: {name: (scale, zero point)} constants ``s<name>``/``z<name>``. onnxruntime fuses such graphs into its
    integer kernels (QLinearSoftmax, QLinearMatMul, QLinearAveragePool), as it fuses the exported model's."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, dtype), f"{prefix}{name}") for name, (scale, zero) in scales.items()
              for prefix, v, dtype in (("s", scale, np.float32), ("z", zero, np.uint8))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.UINT8, [None] * rank) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None] * rank)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda *xs: torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(inputs, xs)})[0]).double()


def _ort_softmax(sx, zx, sy, zy, length):
    """A DequantizeLinear -> Softmax -> QuantizeLinear graph (onnxruntime fuses it to QLinearSoftmax)."""
    from onnx import helper

    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["f"]),
             helper.make_node("Softmax", ["f"], ["s"], axis=-1),
             helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])]
    return _ort_qdq(nodes, ["x"], 2, {"x": (sx, zx), "y": (sy, zy)})


@pytest.mark.parametrize("sx, zx, sy, zy, length", [(0.05, 128, 1 / 255, 0, 17), (0.023, 200, 0.0011176, 0, 64),
                                                    (0.2, 10, 0.0036, 2, 5), (0.07, 100, 1 / 256, 0, 197),
                                                    (0.0017047, 100, 9.7475e-05, 0, 49)])
def test_softmax_is_onnxruntimes_qlinearsoftmax(sx, zx, sy, zy, length):
    """Random stored inputs through onnxruntime's QLinearSoftmax: the emulation gives its integers (3 of 2.8 million
    differed in a wider sweep, float32 quotients that sit on a half), where the float softmax quantized again
    misses 1-6 % of them: the kernel requantizes with floor(1 / s_y), not 1 / s_y. The last case (a random Swin's
    first window softmax) has floor(1 / s_y) = 10259, where t * floor(1 / s_y) overflows float32: the kernel
    computes t * (floor(1 / s_y) / sum)."""
    from compressor.quantization.linear.integer_sim import IntegerSoftmax

    torch.manual_seed(0)
    x = torch.randint(0, 256, (40000 // length, length), dtype=torch.uint8)
    theirs = _ort_softmax(sx, zx, sy, zy, length)(x)
    values = ((x.double() - zx) * torch.tensor(sx, dtype=torch.float32).double()).float()  # the dequantized inputs
    ours = IntegerSoftmax(nn.Identity(), _fixed_quantizer(sx, zx), _fixed_quantizer(sy, zy), -1).stored(values)
    assert (ours != theirs).double().mean() <= 1e-4
    requantized = (torch.round(torch.softmax(values, -1) / sy) + zy).clamp(0, 255).double()
    if torch.floor(1 / torch.tensor(sy, dtype=torch.float32)) * sy < 0.999:  # a scale that is not 1 / n
        assert (requantized != theirs).double().mean() > 0.005


def _ort_matmul(sa, za, sb, zb, sy, zy):
    """DequantizeLinear x2 -> MatMul -> QuantizeLinear, which onnxruntime fuses to QLinearMatMul (as exported)."""
    from onnx import helper

    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
             helper.make_node("MatMul", ["fa", "fb"], ["f"]),
             helper.make_node("QuantizeLinear", ["f", "sy", "zy"], ["y"])]
    return _ort_qdq(nodes, ["a", "b"], 3, {"a": (sa, za), "b": (sb, zb), "y": (sy, zy)})


@pytest.mark.parametrize("sa, za, sb, zb, sy, zy, depth", [(0.05, 128, 0.031, 100, 0.9, 120, 32),
                                                          (0.0123, 3, 0.2, 250, 17.3, 255, 96),
                                                          (0.0039, 0, 0.0625, 128, 0.17, 131, 8)])
def test_matmul_is_onnxruntimes_qlinearmatmul(sa, za, sb, zb, sy, zy, depth):
    """Random stored operands through onnxruntime's fused QLinearMatMul (an attention score or its product with v):
    ``IntegerMatMul`` gives its integers, all of them (the exact integer sum, the float32 multiplier
    s_a * s_b / s_y, rounding half to even); a float32 matmul of the dequantized operands quantized again misses
    1-3 of these 102,400."""
    from compressor.quantization.graph.capture import MatMul
    from compressor.quantization.linear.integer_sim import IntegerMatMul

    torch.manual_seed(0)
    a = torch.randint(0, 256, (64, 40, depth), dtype=torch.uint8)
    b = torch.randint(0, 256, (64, depth, 40), dtype=torch.uint8)
    theirs = _ort_matmul(sa, za, sb, zb, sy, zy)(a, b)
    qa, qb, qy = _fixed_quantizer(sa, za), _fixed_quantizer(sb, zb), _fixed_quantizer(sy, zy)
    matmul = MatMul("attention_scores")
    hook = IntegerMatMul(matmul, qa, qb, qy)
    dequantized = [((x.double() - z) * torch.tensor(s, dtype=torch.float32).double()).float()
                   for x, s, z in ((a, sa, za), (b, sb, zb))]
    out = matmul(*dequantized)
    ours = torch.round(hook(qy, (out,), out).double() / qy.scale.double()) + zy
    saturated = ((theirs == 0) | (theirs == 255)).double().mean()
    assert saturated < 0.2  # the output grid covers most products: the rounding is what is compared
    assert torch.equal(ours, theirs)


def _ort_avg_pool(sx, zx, sy, zy, kernel, stride, padding, count_include_pad):
    """DequantizeLinear -> AveragePool -> QuantizeLinear, which onnxruntime fuses to QLinearAveragePool."""
    from onnx import helper

    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["f"]),
             helper.make_node("AveragePool", ["f"], ["p"], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                              pads=[padding] * 4, count_include_pad=count_include_pad),
             helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["y"])]
    return _ort_qdq(nodes, ["x"], 4, {"x": (sx, zx), "y": (sy, zy)})


@pytest.mark.parametrize("sx, zx, sy, zy, kernel, stride, padding, count_include_pad",
                         [(0.05, 128, 0.04, 120, 3, 1, 1, 1), (0.0123, 3, 0.011, 7, 3, 1, 1, 0),
                          (0.2, 10, 0.13, 20, 2, 2, 0, 1), (0.07, 100, 0.021, 90, 3, 2, 1, 1)])
def test_average_pooling_is_onnxruntimes_qlinearaveragepool(sx, zx, sy, zy, kernel, stride, padding,
                                                             count_include_pad):
    """Inception's in-block 3x3 pooling (padding counted, or not) and strided ones: ``IntegerAvgPool`` gives
    onnxruntime's stored integers, all of them."""
    from compressor.quantization.linear.integer_sim import IntegerAvgPool

    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 16, 17, 17), dtype=torch.uint8)
    theirs = _ort_avg_pool(sx, zx, sy, zy, kernel, stride, padding, count_include_pad)(x)
    values = ((x.double() - zx) * torch.tensor(sx, dtype=torch.float32).double()).float()
    pool = IntegerAvgPool(nn.Identity(), _fixed_quantizer(sx, zx), _fixed_quantizer(sy, zy), (kernel,) * 2,
                          (stride,) * 2, (padding,) * 2, bool(count_include_pad))
    assert torch.equal(pool.stored(values), theirs)


@pytest.mark.parametrize("sx, zx, sy, zy", [(0.05, 128, 0.03, 20), (0.11, 200, 0.021, 12), (0.02, 60, 0.01, 30)])
def test_a_whole_silu_is_onnxruntimes_float_silu_between_dequantize_and_quantize(sx, zx, sy, zy):
    """``split_gated_activations: false`` exports SiLU as x * Sigmoid(x) in float32: ``IntegerSiLU``'s table gives
    onnxruntime's stored integers for every input level (its Sigmoid is MLAS's logistic, not torch's)."""
    from onnx import helper

    from compressor.quantization.linear.integer_sim import IntegerSiLU

    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["f"]),
             helper.make_node("Sigmoid", ["f"], ["g"]), helper.make_node("Mul", ["f", "g"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])]
    levels = torch.arange(256, dtype=torch.uint8).view(1, 256)
    theirs = _ort_qdq(nodes, ["x"], 2, {"x": (sx, zx), "y": (sy, zy)})(levels)
    silu = IntegerSiLU(nn.Identity(), _fixed_quantizer(sx, zx), _fixed_quantizer(sy, zy))
    assert torch.equal(silu.table(), theirs[0])


def test_reciprocal_grid_is_the_scale_qlinearsoftmax_computes_on():
    from compressor.quantization.qparams import reciprocal_grid

    scales = torch.cat([1.0 / torch.arange(1, 5000, dtype=torch.float64), torch.rand(5000, dtype=torch.float64)])
    scales = scales.float().clamp(min=1e-4)
    grid = reciprocal_grid(scales)
    n = torch.floor(torch.ones((), dtype=torch.float32) / grid)  # what the kernel multiplies by, in float32
    assert torch.all(grid >= scales * (1 - 1e-6))  # the range only grows...
    assert torch.all(n * scales.double() <= 1 + 1e-6)  # ...by under one step
    assert torch.allclose(n.double() * grid.double(), torch.ones_like(n).double(), rtol=1e-6)
    q = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    q.reciprocal_scale = True
    q.set_range(0.0, 0.2851)  # a clipped attention probability range
    assert float(torch.floor(1 / q.scale)) == 894 and int(q.zero_point) == 0
    restored = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    restored.load_state_dict(q.state_dict())
    assert restored.reciprocal_scale  # a checkpoint keeps the rule for later ranges
