"""The integer simulation computes, integer for integer, what onnxruntime's fused kernels compute.

Every quantized activation of the exported QDQ model (QLinearConv and QLinearAdd after fusion) is read
back from onnxruntime and compared with the simulation's integers: conv requantization uses a float32
multiplier and float32-rounded int32 biases, as onnxruntime (MLAS) does; a conv reading a max pool of a
quantized activation runs in integer arithmetic too (resnet's layer1.0.conv1); a residual add follows
MLAS's QLinearAdd formula.
"""

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from compressor.deploy.convert import to_torch_int8
from compressor.deploy.onnx_export import export_onnx
from compressor.deploy.target import format_here
from compressor.quantization.fake_quant import ActivationFakeQuant
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


class ConvPoolResidual(nn.Module):
    """conv-bn-relu, max pool, then a residual block: conv-bn-relu, conv-bn, add the block's input, relu."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))  # the block's input: a max pool, as resnet's layer1.0
        y = self.relu2(self.bn2(self.conv2(x)))
        y = self.relu3(self.bn3(self.conv3(y)) + x)
        return self.fc(torch.flatten(self.gap(y), 1))


def simulated(seed=0):
    torch.manual_seed(seed)
    model = ConvPoolResidual()
    with torch.no_grad():  # trained-looking batch-norm statistics, so the ranges are not trivial
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(-1.5, 1.5)  # negative scales too: folding negates those channels
    model.eval()
    quantizer = PostTrainLinearQuantizer(
        model, bits_activations=8, bits_parameters=8, per_channel_wts=True,
        mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"}, integer_arithmetic=True,
    )
    sim = quantizer.prepare_model().eval()
    quantizer.calibrate([(torch.randn(32, 3, 32, 32), None) for _ in range(2)])
    return quantizer, sim


def simulated_integers(sim, x):
    """{site: uint8-range integers} of every activation quantizer of ``sim`` on ``x``."""
    out, hooks = {}, []
    for name, module in sim.named_modules():
        if isinstance(module, ActivationFakeQuant):
            def keep(mod, inputs, output, name=name):
                q = torch.round(output.double() / mod.scale.double()) + mod.zero_point.double() - mod.qmin
                out[name.removeprefix("activation_quantizers.")] = q.numpy()
            hooks.append(module.register_forward_hook(keep))
    with torch.no_grad():
        sim(x)
    for h in hooks:
        h.remove()
    return out


def onnxruntime_integers(path, x):
    """{site: integers} read from the QuantizeLinear outputs of the exported model (fused by onnxruntime)."""
    model = onnx.load(path)
    sources = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].startswith("activation_quantizers_"):
            sources[node.output[0].removeprefix("activation_quantizers_")] = node.input[0]
    for tensor in sources.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.UINT8, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))
    return {site.replace("_", "."): values[t].astype(np.float64) for site, t in sources.items()}


def test_conv_after_max_pool_and_the_residual_add_run_in_integer_arithmetic():
    quantizer, _ = simulated()
    assert quantizer.integer_layers == ["conv1", "conv2", "conv3"]
    assert quantizer.integer_adds == ["relu3"]  # add(conv3-bn3, max pool) -> relu3, quantized once


def test_every_quantized_activation_equals_onnxruntime_integers(tmp_path):
    _, sim = simulated()
    path = str(tmp_path / "m.onnx")
    x = torch.randn(64, 3, 32, 32) * 1.3
    export_onnx(sim, x[:1], path, weights=format_here().weights)  # int8 on VNNI/AMX/Arm, uint8 on AVX2 alone
    ours = simulated_integers(sim, x)
    theirs = onnxruntime_integers(path, x)
    assert set(theirs) == {"input", "relu1", "relu2", "conv3", "relu3", "fc"}
    # the logits come from a float Gemm (its input, an average of quantized values, is not quantized in
    # the simulation either): float sums in another order, so one step is allowed there
    assert np.abs(ours["fc"] - theirs.pop("fc")).max() <= 1
    values = 0
    for site, q in theirs.items():
        mine = ours[site]
        assert mine.shape == q.shape
        # before: conv2 (reading the max pool) ran in float and 62 of its 524,288 outputs differed by a step
        assert int((mine != q).sum()) == 0, f"{site}: {int((mine != q).sum())} of {q.size} integers differ"
        values += q.size
    assert values > 1_500_000


def test_pytorch_int8_convolutions_compute_the_simulation_integers():
    """The PyTorch int8 model (x86 engine) takes the simulation's integer weights (rounded from the simulated
    values, as torch's fake-quant kernel made them) and its biases on the accumulator grid (oneDNN adds a float
    bias after scaling): before both, 0.8 % of resnet18's conv1 outputs were a step off."""
    _, sim = simulated()
    x = torch.randn(64, 3, 32, 32) * 1.3
    ours = simulated_integers(sim, x)
    int8, converted = to_torch_int8(sim, format_here().engine)  # x86 where u8 x s8 is exact here, else qnnpack
    assert converted == ["conv1", "conv2", "conv3", "fc"]
    outputs = {}
    for name, module in int8.named_modules():
        if name.startswith(("conv1", "conv2")):
            module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name[:5], o.int_repr()))
    with torch.no_grad():
        int8(x)
    for layer, site in (("conv1", "relu1"), ("conv2", "relu2")):
        differ = int((outputs[layer].double().numpy() != ours[site]).sum())
        assert differ <= ours[site].size * 1e-5, f"{layer}: {differ} of {ours[site].size} integers differ"
