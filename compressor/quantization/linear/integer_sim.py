"""Integer-only arithmetic for quantized conv/linear layers, as an integer kernel computes it.

The layer sees integer inputs ``q_x - z_x`` and integer weights ``q_w - z_w``; products are summed,
with an int32 bias ``round(b / (s_x * s_w))``, in an accumulator of ``bits_accum`` bits that
saturates; the sum is requantized to the output grid with the multiplier
``M = s_x * s_w / s_y``: as a float, as a fixed-point multiplier plus shift (gemmlowp style,
``scale_approx_mult_bits``), or as a power of two (shift only, Courbariaux et al.). Values are
held in float32 where every partial sum is provably below 2**24, else in float64, which represents every
integer an accumulator of up to 53 bits can hold, so the arithmetic is exact. ``IntegerArithmetic.attach``
computes the layer's output this way in place of its float forward (a forward hook alone would run the float
convolution first only to replace its output), so the graph, the module names and the checkpoints stay as they
are.
"""

import contextlib
import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.quantization.fake_quant import WeightFakeQuant
from compressor.quantization.graph import capture
from compressor.quantization.graph.sites import call_args, softmax_dim


def approx_multiplier(m, mult_bits):
    """(mult, shift) with mult / 2**shift ~= m and mult < 2**mult_bits (Distiller's formula)."""
    m = torch.as_tensor(m, dtype=torch.float64)
    shift = torch.floor(torch.log2((2**mult_bits - 1) / m))
    mult = torch.floor(m * 2**shift)
    return mult, shift


def power_of_two(m):
    """The power of two nearest (in log scale) to ``m``: requantization by a shift alone."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return torch.pow(2.0, torch.round(torch.log2(m)))


class IntegerArithmetic:
    """Forward hook of a conv/linear whose input, weights and output are all quantized."""

    def __init__(self, weight_quant, in_quant, out_quant, bits_accum=32, mult_bits=None, pow2=False, norm=None):
        self.weight_quant, self.in_quant, self.out_quant = weight_quant, in_quant, out_quant
        self.norm = norm  # a batch-norm after the layer (a QAT model's), folded as the exporter folds it
        self.bits_accum, self.mult_bits, self.pow2 = bits_accum, mult_bits, pow2
        self.enabled = True  # off: the layer keeps its fake-quantized float32 output (fast calibration passes)
        self.replaces_forward = False  # attach(): computed in place of the layer's forward, not in the hook

    @staticmethod
    def _conv(layer, x, w):
        if isinstance(layer, nn.Linear):
            return F.linear(x, w)
        dims = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
        fn = next(f for t, f in dims.items() if isinstance(layer, t))
        if layer.padding_mode != "zeros":
            raise NotImplementedError("integer simulation supports zero padding only")
        return fn(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def _exact_operands(q_x, q_w):
        """(q_x, q_w, bound): the integer operands in float32 where every partial sum stays below 2**24 in
        magnitude (then float32 sums integers exactly, in any order, and the fast float32 kernels compute the int32
        accumulator), else in float64 (bound None). The bound is per output channel: sum |q_w| times max |q_x|.
        Typical 8-bit layers pass it (a float64 convolution has no oneDNN kernel: it made the integer simulation
        ~16x the FP32 evaluation). CPU only: cuDNN may take TF32 or Winograd/FFT algorithms for float32, which do
        not sum integers exactly."""
        if q_x.device.type == "cpu":
            bound = float(q_w.abs().flatten(1).sum(1).max() * q_x.abs().max())
            if bound < 2.0**24:
                return q_x, q_w, bound
        return q_x.double(), q_w.double(), None

    def multiplier(self, weight_scale=None):
        """``s_x * s_w / s_y``: in float32 as onnxruntime (MLAS) and fbgemm requantize (float(acc) times a float32
        multiplier), or in float64 rounded to a fixed-point multiplier or a power of two."""
        w_scale = self.weight_quant.scale if weight_scale is None else weight_scale
        if not (self.pow2 or self.mult_bits):
            return self.in_quant.scale.float() * w_scale.float() / self.out_quant.scale.float()
        s_x, s_w, s_y = (q.double() for q in (self.in_quant.scale, w_scale, self.out_quant.scale))
        m = s_x * s_w / s_y
        if self.pow2:
            return power_of_two(m)
        mult, shift = approx_multiplier(m, self.mult_bits)
        return mult / torch.pow(2.0, shift)

    def active(self):
        quants = (self.in_quant, self.out_quant, self.weight_quant)
        # a dynamic output range is only known after the layer ran: keep the float path then
        return (
            self.enabled
            and all(q.enabled and q.observed for q in quants)
            and not self.out_quant.dynamic
            and not self.in_quant.dynamic
        )

    def attach(self, layer):
        """Compute ``layer``'s output in integer arithmetic, instead of its float forward, whenever active. The
        object stays registered as the layer's forward hook, where the code that switches it finds it. A folded
        batch-norm passes its input through while active."""
        self.replaces_forward = True
        self.handle = layer.register_forward_hook(self)
        layer.forward = functools.partial(_integer_forward, layer, self)
        if self.norm is not None:
            self.norm.forward = functools.partial(_folded_norm_forward, self.norm, self)

    def detach(self, layer):
        """Undo ``attach``: the layer (and batch-norm) compute in float again, and the hook is gone."""
        self.handle.remove()
        for module in (layer, self.norm):
            if module is not None:
                module.__dict__.pop("forward", None)

    def operands(self, layer):
        """(integer weights ``q_w - z_w``, their scale per output channel or one, the float bias or None) of the
        integer layer. With a batch-norm after it, folded as the exporter folds it (``reference._fold_norm``, the
        same float32 operations): integers negated where gamma / sigma is negative and zeroed where it is 0, the
        scale times |gamma / sigma|, the bias (b - mean) * gamma / sigma + beta."""
        w = layer.weight  # fake-quantized by the parametrization
        shape = (-1,) + (1,) * (w.dim() - 1)
        scale = self.weight_quant.scale.float()
        # w lies on its grid: dividing by the scale is an integer up to float32 rounding, which round() undoes
        q_w = torch.round(w.detach().float() / scale.view(shape))
        bias = None if layer.bias is None else layer.bias.detach().float()
        norm = self.norm
        if norm is None:
            return q_w, scale, bias
        factor, beta = norm_fold(norm)
        bias = ((torch.zeros_like(factor) if bias is None else bias) - norm.running_mean.float()) * factor + beta
        dead = factor == 0
        sign = torch.where(factor < 0, -1.0, 1.0)
        q_w = torch.where(dead.view(shape), 0.0, q_w * sign.view(shape))
        scale = torch.where(dead, torch.ones_like(factor), scale.expand_as(factor) * factor.abs())
        return q_w, scale, bias

    @torch.no_grad()
    def __call__(self, layer, inputs, output):
        if self.replaces_forward or not self.active():
            return None
        return _exact_compute(self, layer, inputs[0]).to(output.dtype)

    def compute(self, layer, x):
        """The dequantized output of the integer computation; x and the weight are on their grids."""
        q_w, w_scale, float_bias = self.operands(layer)  # q_w - z_w
        q_x = torch.round(x.float() / self.in_quant.scale.float())  # q_x - z_x: on its grid, as the weight
        q_x, q_w, bound = self._exact_operands(q_x, q_w)
        acc = self._conv(layer, q_x, q_w)
        # output channels: dim 1 of a conv's output, the last dim of a linear's (tokens keep their dims before it)
        channel = (1,) * (acc.dim() - 1) + (-1,) if isinstance(layer, nn.Linear) else (1, -1) + (1,) * (acc.dim() - 2)
        bias = None
        if float_bias is not None:
            bias = integer_bias(float_bias, self.in_quant.scale, w_scale).view(channel)
        m = self.multiplier(w_scale)
        # float32 holds every value below exactly while the accumulator plus bias stays under 2**24 and the
        # multiplier is float32 (onnxruntime's own), and (q_y - z_y) * s_y rounds once to float32 either way:
        # then float32 computes float64's numbers in half the memory traffic; else float64
        if bound is None or m.dtype != torch.float32 or (bias is not None and bound + float(bias.abs().max()) >= 2**24):
            acc = acc.double()
        if bias is not None:
            acc.add_(bias.to(acc.dtype))
        lim = 2 ** (self.bits_accum - 1)
        acc.clamp_(-lim, lim - 1)
        out = self.out_quant
        zero_point, scale = out.zero_point.to(acc.dtype), out.scale.to(acc.dtype)
        q_y = acc.to(m.dtype).mul_(m.view(channel)).round_().to(acc.dtype)
        return q_y.add_(zero_point).clamp_(out.qmin, out.qmax).sub_(zero_point).mul_(scale)


def _integer_forward(layer, hook, x):
    """The forward of a layer with integer arithmetic attached: the integer result when active, else its own."""
    if not hook.active():
        return type(layer).forward(layer, x)
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    return _exact_compute(hook, layer, x).to(dtype)


def norm_fold(norm):
    """(gamma / sigma, beta) of a batch-norm's evaluation statistics in float32: what folding it into the layer
    before multiplies by and adds (the exporter and the integer simulation both fold with these)."""
    factor = norm.weight.detach().float() if norm.affine else torch.ones_like(norm.running_var)
    factor = factor / torch.sqrt(norm.running_var.float() + norm.eps)
    return factor, norm.bias.detach().float() if norm.affine else torch.zeros_like(factor)


def _folded_norm_forward(norm, hook, x):
    """A batch-norm folded into the integer layer before it: the input passes through while that is active."""
    return x if hook.active() else type(norm).forward(norm, x)


@torch.no_grad()
def _exact_compute(hook, layer, x):
    """``hook.compute`` with autocast off (--amp): autocast would run the float32 convolution in bf16/fp16 and
    round the integer accumulator."""
    with torch.autocast(x.device.type, enabled=False):
        return hook.compute(layer, x)


def fixed_8bit_grids(*quants):
    """Whether every quantizer quantizes on a fixed (observed, not dynamic) 8-bit per-tensor grid: what
    onnxruntime's integer kernels for adds, products, pooling, sigmoid, softmax and matmul take."""
    return all(q.enabled and q.observed and not q.dynamic and q.qmax - q.qmin == 255 and q.scale.numel() == 1
               for q in quants)


class IntegerAdd:
    """Forward hook of the quantizer after ``add(a, b)`` (and an optional ReLU) of two quantized tensors:
    the output as onnxruntime's QLinearAdd computes it on x86 (MLAS's AVX2 kernel, used on AVX2, VNNI and
    AMX CPUs), not as a float sum quantized again.

    MLAS works on the stored 8-bit integers: ``c = round(a * r_ac + (b * r_bc + fixed))`` in float32 with
    two fused multiply-adds, ``r_ac = s_a / s_c``, ``r_bc = s_b / s_c`` and
    ``fixed = z_c - fma(r_ac, z_a, r_bc * z_b)``, rounded to nearest even and saturated to [0, 255]. The
    float sum ``(q_a - z_a) s_a + (q_b - z_b) s_b`` quantized with ``s_c`` rounds a different value: on a
    random-init resnet18 at 224x224, 4 of 1.6M outputs of an add landed one step apart, and deep networks
    amplify such steps. Each fused multiply-add is one rounding of an exact value: computed in float64
    (exact here, the products have at most 32 significant bits) and rounded once to float32.

    The inputs are the latest outputs of the modules that produce them (kept by hooks; each is called once
    per forward, so they are this forward's values).
    """

    def __init__(self, a, a_quant, b, b_quant, out_quant, relu):
        """``a``, ``b``: the modules producing the add's inputs (a quantizer, or a max pool of one), each
        called once per forward; ``a_quant``, ``b_quant``: the quantizers whose grids those values are on."""
        self.a_quant, self.b_quant, self.out_quant, self.relu = a_quant, b_quant, out_quant, relu
        self.enabled = True
        self.inputs = {}
        self.keepers = [(a, a.register_forward_hook(self._keep("a"))), (b, b.register_forward_hook(self._keep("b")))]

    def _keep(self, key):
        def hook(module, inputs, output):
            self.inputs[key] = output
        return hook

    def active(self):
        return (self.enabled and set(self.inputs) == {"a", "b"} and fixed_8bit_grids(self.a_quant, self.b_quant,
                                                                                      self.out_quant)
                and (not self.relu or int(self.out_quant.zero_point) == self.out_quant.qmin))

    @staticmethod
    def _stored(x, quant):
        """The 8-bit integers onnxruntime holds: q - qmin (zero point shifted the same way)."""
        q = torch.clamp(torch.round(x.double() / quant.scale.double()) + quant.zero_point.double(), quant.qmin,
                        quant.qmax)
        return q - quant.qmin, float(int(quant.zero_point) - quant.qmin)

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if not self.active():
            return None
        a, z_a = self._stored(self.inputs["a"], self.a_quant)
        b, z_b = self._stored(self.inputs["b"], self.b_quant)
        out = self.out_quant
        z_c = float(int(out.zero_point) - out.qmin)
        c = self.combine(a, z_a, b, z_b, z_c)
        return ((c - z_c) * out.scale.double()).to(output.dtype)

    def combine(self, a, z_a, b, z_b, z_c):
        """The stored output integers from the stored input integers and the three zero points."""
        out = self.out_quant
        f32 = torch.float32
        r_ac = (self.a_quant.scale.to(f32) / out.scale.to(f32)).double()
        r_bc = (self.b_quant.scale.to(f32) / out.scale.to(f32)).double()
        # the compiler contracts the scalar r_ac * z_a + r_bc * z_b into fma(r_ac, z_a, r_bc * z_b): measured against
        # onnxruntime on all 65,536 input pairs of 30 random scale sets, separate roundings missed 5 pairs, this 0
        zero = torch.tensor(z_c, dtype=f32) - (r_ac * z_a + (r_bc.to(f32) * z_b).double()).to(f32)
        inner = (b * r_bc + zero.double()).to(f32).double()  # fma(b, r_bc, fixed)
        return torch.round((a * r_ac + inner).to(f32)).double().clamp(0, 255)  # fma(a, r_ac, .), cvtps: nearest even


class IntegerMul(IntegerAdd):
    """Forward hook of the quantizer after ``mul(a, b)`` of two quantized tensors (squeeze-excitation's scale times
    its input, hardswish's and SiLU's gate times their input): the output as onnxruntime's QLinearMul computes it
    on x86 (MLAS's SSE2 kernel), not as a float product quantized again.

    MLAS multiplies the zero-point-free 8-bit integers exactly (``(q_a - z_a) * (q_b - z_b)``, at most 255^2, exact
    in float32), then ``c = round(float32(p * r) + z_c)`` with ``r = float32(float32(s_a * s_b) / s_c)``, a
    multiply and an add each rounded to float32 (no fused multiply-add), rounding to nearest even, saturated.
    """

    def combine(self, a, z_a, b, z_b, z_c):
        f32 = torch.float32
        ratio = (self.a_quant.scale.to(f32) * self.b_quant.scale.to(f32)) / self.out_quant.scale.to(f32)
        product = ((a - z_a) * (b - z_b)).to(f32)  # exact: |product| <= 255 * 255
        return torch.round((product * ratio) + torch.tensor(z_c, dtype=f32)).double().clamp(0, 255)


class _IntegerUnary:
    """Forward hook of the quantizer after a one-input op of a quantized tensor: keeps the op's input (the output
    of ``source``, called once per forward) and says when both grids are fixed 8-bit per-tensor ones."""

    def __init__(self, source, in_quant, out_quant):
        self.in_quant, self.out_quant = in_quant, out_quant
        self.enabled = True
        self.input = None
        self.keepers = [(source, source.register_forward_hook(self._keep))]  # (module, handle)

    def _keep(self, module, inputs, output):
        self.input = output

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        """The kernel's output for this forward's input, from ``stored`` (its stored 8-bit integers)."""
        if not self.active():
            return None
        z_out = float(int(self.out_quant.zero_point) - self.out_quant.qmin)
        return ((self.stored(self.input) - z_out) * self.out_quant.scale.double()).to(output.dtype)

    def active(self):
        return self.enabled and self.input is not None and fixed_8bit_grids(self.in_quant, self.out_quant)


class IntegerGlobalAvgPool(_IntegerUnary):
    """Forward hook of the quantizer after a global average pooling (to 1x1) of a quantized tensor: the output as
    onnxruntime's QLinearGlobalAveragePool computes it (MLAS), not as a float mean quantized again.

    MLAS sums the stored 8-bit integers minus the input zero point per channel, ``acc = sum(q) - z_in * n``, and
    requantizes with the float32 ``m = s_in / (s_out * n)`` taken apart into a 24-bit integer mantissa ``M`` and a
    shift (``m = M / 2^shift`` exactly): ``round(acc * M / 2^shift)``, halves away from zero, plus ``z_out``,
    saturated. The float mean rounded once put 0.03 % of EfficientNet-B0's squeeze-excitation pools a step off.
    """

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if not self.active():
            return None
        x = self.input
        n = x[0, 0].numel()
        stored, z_in = IntegerAdd._stored(x, self.in_quant)
        acc = (stored.flatten(2).sum(-1) - z_in * n).long()
        f32 = torch.float32
        m = self.in_quant.scale.to(f32) / (self.out_quant.scale.to(f32) * torch.tensor(float(n), dtype=f32))
        mantissa, exponent = torch.frexp(m.double())  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
        multiplier = int(mantissa.item() * 2**24)  # the float32's 24 significant bits, exactly
        shift = 24 - int(exponent.item())
        product = acc * multiplier - (acc < 0).long()
        q = (product + (1 << (shift - 1))) >> shift
        z_out = int(self.out_quant.zero_point) - self.out_quant.qmin
        c = (q + z_out).clamp(0, 255).double()
        return ((c - z_out) * self.out_quant.scale.double()).view(output.shape).to(output.dtype)


class IntegerAvgPool(_IntegerUnary):
    """Forward hook of the quantizer after a 2-D average pooling (Inception's in-block ``avg_pool2d``) of a quantized
    tensor: the output of onnxruntime's QLinearAveragePool, which dequantizes each input to float32
    (``s_x * (q - z_x)``), sums a window in float32 row by row, divides by the count (the kernel's size with
    ``count_include_pad``, else the values inside) and stores ``round(y / s_y + z_y)``, half to even, saturated.
    Matched bit for bit on 92,544 random outputs of four pooling shapes (tested)."""

    def __init__(self, source, in_quant, out_quant, kernel, stride, padding, count_include_pad):
        super().__init__(source, in_quant, out_quant)
        self.kernel, self.stride, self.padding, self.count_include_pad = kernel, stride, padding, count_include_pad

    def stored(self, x):
        """The pooled output's stored integers (0..255) for ``x`` on the input grid, as onnxruntime computes them."""
        f32, q = torch.float32, self.in_quant
        values = q.scale.to(f32) * torch.round(x.float() / q.scale.float())  # s_x * (q - z_x), one float32 rounding
        n, channels, height, width = x.shape
        k, args = self.kernel, dict(kernel_size=self.kernel, padding=self.padding, stride=self.stride)
        cols = F.unfold(values, **args).view(n, channels, k[0] * k[1], -1)  # window positions in row-major order
        total = cols[:, :, 0].clone()
        for j in range(1, cols.shape[2]):  # a float32 sum in the kernel's order (padding adds nothing)
            total += cols[:, :, j]
        if self.count_include_pad:
            count = torch.tensor(float(k[0] * k[1]), dtype=f32)
        else:
            count = F.unfold(torch.ones(1, 1, height, width, dtype=f32), **args).sum(1)
        out = self.out_quant
        z_out = torch.tensor(float(int(out.zero_point) - out.qmin), dtype=f32)
        c = torch.round(total / count / out.scale.to(f32) + z_out).clamp(0, 255)
        rows = (height + 2 * self.padding[0] - k[0]) // self.stride[0] + 1
        return c.double().view(n, channels, rows, -1)


# MLAS's logistic: Eigen's rational approximation p(x) / q(x) + 1/2 on [-18, 18], in float32
_LOGISTIC_ALPHA = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
                   2.48287947061529e-01)
_LOGISTIC_BETA = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
                  1.16817656904453e-01, 9.93151921023180e-01)


def _f32(x):
    return x.to(torch.float32).to(torch.float64)


def mlas_logistic(x, fused=True):
    """MLAS's float32 logistic of ``x`` (float64 tensor of float32 values), operation by operation: each
    multiply-add rounded once to float32 (``fused``: the FMA3 kernel x86-64 CPUs with AVX2 run) or twice."""
    def madd(a, b, c):
        return _f32(a * b + c) if fused else _f32(_f32(a * b) + c)

    v = x.clamp(-18.0, 18.0)
    sq = _f32(v * v)
    alpha = [_f32(torch.tensor(a, dtype=torch.float64)) for a in _LOGISTIC_ALPHA]
    beta = [_f32(torch.tensor(b, dtype=torch.float64)) for b in _LOGISTIC_BETA]
    p = madd(sq, alpha[0], alpha[1])
    for a in alpha[2:]:
        p = madd(p, sq, a)
    p = _f32(p * v)
    q = madd(sq, beta[0], beta[1])
    for b in beta[2:]:
        q = madd(q, sq, b)
    return _f32(_f32(p / q) + 0.5).clamp(0.0, 1.0)


class IntegerSigmoid(_IntegerUnary):
    """Forward hook of the quantizer after a sigmoid of a quantized tensor: the output of onnxruntime's
    QLinearSigmoid, a 256-entry table of MLAS's logistic of each dequantized input, quantized (round half to even
    of ``y / s_out`` in float32). torch's exact sigmoid quantized again put EfficientNet-B7's squeeze-excitation
    and SiLU gates a step apart often enough to change 25 % of its random-weight decisions (docs/zoo.md)."""

    def __init__(self, source, in_quant, out_quant):
        super().__init__(source, in_quant, out_quant)
        self.fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        self._table = (None, None)  # (the grids it was built for, the table): built once per calibration

    def table(self):
        q, out = self.in_quant, self.out_quant
        key = tuple(float(v) for v in (q.scale, q.zero_point, out.scale, out.zero_point))
        if self._table[0] != key:
            self._table = (key, self._build_table())
        return self._table[1]

    def _build_table(self):
        q = self.in_quant
        levels = torch.arange(q.qmin, q.qmax + 1, dtype=torch.float64)
        x = _f32((levels - float(int(q.zero_point))) * _f32(q.scale.double()))
        y = self.function(x)
        out = self.out_quant
        z = float(int(out.zero_point))
        stored = torch.round(_f32(y / _f32(out.scale.double()))) + z  # round half to even, as cvtps2dq
        return stored.clamp(out.qmin, out.qmax)

    def function(self, x):
        """The float32 values onnxruntime computes for the dequantized inputs ``x`` (float64 of float32 values)."""
        return mlas_logistic(x, self.fused)

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if not self.active():
            return None
        q = self.in_quant
        index = (torch.round(self.input.double() / q.scale.double()) + float(int(q.zero_point))).clamp(
            q.qmin, q.qmax) - q.qmin
        c = self.table()[index.long()]
        return ((c - float(int(self.out_quant.zero_point))) * self.out_quant.scale.double()).to(output.dtype)


class IntegerSiLU(IntegerSigmoid):
    """Forward hook of the quantizer after a SiLU left whole (``split_gated_activations: false``) of a quantized
    tensor: onnxruntime computes the exported ``x * Sigmoid(x)`` in float32 between DequantizeLinear and
    QuantizeLinear, with MLAS's logistic, not torch's exact sigmoid. A 256-entry table of that, as for
    ``IntegerSigmoid`` (exact by construction; torch's SiLU quantized again happened to give the same integers on
    all 38,400 levels of 150 random scale sets: SiLU's output steps are wider than a sigmoid gate's 1/255)."""

    def function(self, x):
        return _f32(x * mlas_logistic(x, self.fused))  # one float32 rounding of the exact product


class IntegerSoftmax(_IntegerUnary):
    """Forward hook of the quantizer after a softmax of a quantized tensor: the output of onnxruntime's
    QLinearSoftmax (what DequantizeLinear -> Softmax -> QuantizeLinear fuses to), not a float softmax quantized again.

    The kernel reads the stored 8-bit inputs (their zero point cancels), looks up a float32 table of
    ``exp((i - 255 + shift) * s_x)`` at ``i = 255 - max + q`` (``shift`` keeps the sum of a row below float32's
    largest value), sums a row in float32 in order, and stores ``round(t * float32(floor(1 / s_y) / sum)) + z_y``,
    saturated at 255: it requantizes with ``floor(1 / s_y)``, not ``1 / s_y`` (a softmax quantizer keeps ``s_y`` at
    ``1 / n``, qparams.reciprocal_grid). On a trained ViT the float softmax quantized again put 1.1 % of the first
    block's attention probabilities up to 3 steps from onnxruntime's.
    """

    def __init__(self, source, in_quant, out_quant, dim, window=None):
        """``window``: (the module whose output is a Swin block's input, window size, shift) for ``window_softmax``,
        which is QLinearSoftmax only where no shift applies (a shifted window's mask is added in float first)."""
        super().__init__(source, in_quant, out_quant)
        self.dim = dim
        self.window, self.block_input = window, None
        if window is not None:
            self.keepers.append((window[0], window[0].register_forward_hook(self._keep_block_input)))

    def _keep_block_input(self, module, inputs, output):
        self.block_input = output

    def active(self):
        if not super().active():
            return False
        if self.window is None:
            return True
        if self.block_input is None:
            return False
        _, _, shift = capture.window_layout(self.block_input.shape[1], self.block_input.shape[2], *self.window[1:])
        return not (shift[0] or shift[1])

    @staticmethod
    def table(x_scale, length):
        """The 256 float32 values of exp((i - 255 + shift) * s_x), computed in float64 as onnxruntime does."""
        f32 = torch.float32
        largest = torch.tensor(torch.finfo(f32).max, dtype=f32) / torch.tensor(float(length), dtype=f32)
        s_x = float(torch.as_tensor(x_scale).to(f32))
        # log of the float32 quotient in float32 (the double log put 1 of 68,000 test outputs a step off), with 5 bits
        # kept free for the float32 sum of a row
        shift = max(0.0, float(torch.log(largest)) - 5.0) / s_x
        levels = torch.arange(256, dtype=torch.float64)
        return torch.exp((levels - 255.0 + shift) * s_x).to(f32)

    def stored(self, x):
        """The softmax output's stored integers (0..255) for a quantized input ``x``, as onnxruntime computes them."""
        q = IntegerAdd._stored(x, self.in_quant)[0].movedim(self.dim, -1)
        index = (255.0 - q.amax(-1, keepdim=True) + q).long()
        t = self.table(self.in_quant.scale, q.shape[-1])[index]
        total = t[..., 0].clone()
        for j in range(1, t.shape[-1]):  # a float32 sum in order, as the kernel's loop adds (torch's sums reorder)
            total += t[..., j]
        f32 = torch.float32
        y_scale = torch.floor(torch.ones((), dtype=f32) / self.out_quant.scale.to(f32))
        z_out = float(int(self.out_quant.zero_point) - self.out_quant.qmin)
        # t * (y / sum): the compiled kernel hoists y / sum out of its row loop. (t * y) / sum as written overflows
        # float32 where y = floor(1 / s_y) is large (s_y 9.7e-5 on a 49-token window: every output wrong), which the
        # kernel does not: measured on 2.8 million random outputs, this form misses 3 (half-way ties)
        c = torch.round(t * (y_scale / total.unsqueeze(-1))) + z_out
        return c.clamp(max=255).double().movedim(-1, self.dim)


class IntegerMatMul:
    """Forward hook of the quantizer after a matmul (``capture.MatMul``) of two values on 8-bit per-tensor grids
    (attention's q @ k^T and probabilities @ v): the output as onnxruntime's QLinearMatMul computes it, not as a
    float32 matmul quantized again. The integer products ``(q_a - z_a)(q_b - z_b)`` are summed exactly (float64
    holds every such sum) and requantized with the float32 multiplier ``s_a * s_b / s_y`` (MLAS's
    ``float(acc) * m``, rounded to nearest even, plus ``z_y``, saturated), as the integer convolutions are.

    The operands come from a forward pre-hook on the matmul module: they are the values after the reshapes,
    transposes and selections between their quantizers and the matmul (which the exporter runs on the stored
    integers, so that onnxruntime fuses the matmul)."""

    def __init__(self, matmul, a_quant, b_quant, out_quant):
        self.a_quant, self.b_quant, self.out_quant = a_quant, b_quant, out_quant
        self.enabled = True
        self.operands = None
        self.keepers = [(matmul, matmul.register_forward_pre_hook(self._keep))]

    def _keep(self, module, inputs):
        self.operands = inputs

    def active(self):
        return self.enabled and self.operands is not None and fixed_8bit_grids(self.a_quant, self.b_quant,
                                                                                self.out_quant)

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if not self.active():
            return None
        a, b = self.operands
        q_a = torch.round(a.double() / self.a_quant.scale.double())  # q - z: on the grid, exact
        q_b = torch.round(b.double() / self.b_quant.scale.double())
        acc = torch.matmul(q_a, q_b)  # exact: |sum| < 2**53
        f32, out = torch.float32, self.out_quant
        m = self.a_quant.scale.to(f32) * self.b_quant.scale.to(f32) / out.scale.to(f32)
        z_out = float(int(out.zero_point))
        q_y = torch.round(acc.to(f32) * m).double().add(z_out).clamp(out.qmin, out.qmax)
        return ((q_y - z_out) * out.scale.double()).to(output.dtype)


_ADDS = (operator.add, operator.iadd, torch.add)
_SIGMOIDS = (torch.sigmoid, F.sigmoid)
_MULS = (operator.mul, torch.mul)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d,)
_RELUS = (F.relu, torch.relu)


IDENTITY_IN_EVALUATION = (nn.Identity, nn.Dropout) + capture.leaf_types()
# (StochasticDepth: the identity in evaluation, as dropout; EfficientNet's residual adds read it)
GRID_PRESERVING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d) + IDENTITY_IN_EVALUATION


def _kept_value(gm, node, calls):
    """The module call whose output a hook can keep for ``node``'s value: ``node`` itself, or through modules that
    are the identity in evaluation (Swin's blocks call one ``stochastic_depth`` twice, so its output hook would keep
    the second call's value for both adds: neither add was simulated as QLinearAdd), the first one called once."""
    while node.op == "call_module" and calls[node.target] != 1 and \
            isinstance(gm.get_submodule(node.target), IDENTITY_IN_EVALUATION) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


# ops that move or select values without computing new ones (ShuffleNet's channel shuffle and chunk)
GRID_PRESERVING_METHODS = {"view", "reshape", "flatten", "contiguous", "transpose", "permute", "squeeze", "unsqueeze",
                           "chunk", "split"}
GRID_PRESERVING_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                             torch.squeeze, torch.unsqueeze, torch.chunk, torch.split}


def grid_source(gm, node):
    """The activation-quantizer node whose integer grid ``node`` is on, through ops that keep values on it (max
    pooling, identity, dropout in eval, reshapes, transposes, chunks): resnet's layer1.0.conv1 reads the max pool
    of a quantized ReLU, ShuffleNet's branches a chunk of a shuffled quantized concat. None when the value is
    not on a quantizer's grid."""
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            if node.target.startswith("activation_quantizers."):
                return node
            if not isinstance(gm.get_submodule(node.target), GRID_PRESERVING):
                return None
        elif not ((node.op == "call_method" and node.target in GRID_PRESERVING_METHODS)
                  or (node.op == "call_function" and node.target in GRID_PRESERVING_FUNCTIONS)):
            return None
        node = node.args[0]
    return None


def install_integer_adds(gm):
    """Hook ``IntegerAdd`` onto every quantizer that reads add(a, b) [-> ReLU], ``IntegerMul`` onto every one
    that reads mul(a, b), of two values on quantizer grids (a quantizer's output or a max pool of one), and the
    one-input kernels' hooks (global average pooling, sigmoid, softmax) where their input is a quantizer's output.
    Returns the names of the output quantizers."""
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def quantizer(node):
        ok = isinstance(node, fx.Node) and node.op == "call_module" and \
            node.target.startswith("activation_quantizers.")
        return modules[node.target] if ok else None

    installed = []
    for node in gm.graph.nodes:
        out = quantizer(node)
        if out is None or not node.args:
            continue
        prev, relu = node.args[0], False
        if _install_global_pool(gm, modules, calls, prev, out) or _install_sigmoid(gm, modules, calls, prev, out) \
                or _install_softmax(gm, modules, calls, prev, out) or _install_matmul(gm, modules, calls, prev, out) \
                or _install_avg_pool(gm, modules, calls, prev, out):
            installed.append(node.target.removeprefix("activation_quantizers."))
            continue
        if isinstance(prev, fx.Node) and len(prev.users) == 1 and (
                (prev.op == "call_module" and isinstance(modules[prev.target], nn.ReLU))
                or (prev.op == "call_function" and prev.target in _RELUS)):
            prev, relu = prev.args[0], True
        binary = isinstance(prev, fx.Node) and len(prev.users) == 1 and not prev.kwargs and len(prev.args) == 2
        is_add = binary and ((prev.op == "call_function" and prev.target in _ADDS)
                             or (prev.op == "call_method" and prev.target in ("add", "add_")))
        is_mul = binary and not relu and ((prev.op == "call_function" and prev.target in _MULS)
                                          or (prev.op == "call_method" and prev.target in ("mul", "mul_")))
        if not (is_add or is_mul):
            continue
        a, b = prev.args
        sources = [grid_source(gm, arg) for arg in (a, b)]
        if None in sources:
            continue
        a, b = (_kept_value(gm, arg, calls) for arg in (a, b))
        if a is b or any(arg.op != "call_module" for arg in (a, b)) or \
                calls[a.target] != 1 or calls[b.target] != 1:  # the hooks keep module outputs
            continue
        a_quant, b_quant = (modules[src.target] for src in sources)
        join = IntegerAdd if is_add else IntegerMul
        out.register_forward_hook(join(modules[a.target], a_quant, modules[b.target], b_quant, out, relu))
        installed.append(node.target.removeprefix("activation_quantizers."))
    _out_of_place_after_kept_values(gm, modules)
    return installed


def _out_of_place_after_kept_values(gm, modules):
    """Set modules computing in place (``inplace=True``) out of place where they read a module output the hooks keep:
    torchvision's SiLU(inplace=True) overwrote the quantizer output ``IntegerSiLU`` had kept as its input with its
    own output (EfficientNet-B0's integer simulation read 10.02 % top-1). The same values, computed out of place."""
    kept = {id(module) for h in integer_hooks(gm) for module, _ in getattr(h, "keepers", ())}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not getattr(modules[node.target], "inplace", False):
            continue
        read = node.args[0] if node.args else None
        if isinstance(read, fx.Node) and read.op == "call_module" and id(modules[read.target]) in kept:
            modules[node.target].inplace = False


def _install_global_pool(gm, modules, calls, node, out):
    """Hook ``IntegerGlobalAvgPool`` when ``node`` pools a quantizer's output (directly) to 1x1."""
    pool = isinstance(node, fx.Node) and node.op == "call_module" and \
        isinstance(modules[node.target], _GLOBAL_POOLS) and modules[node.target].output_size in (1, (1, 1))
    if not pool or len(node.users) != 1:
        return False
    src = _quantizer_called_once(node.args[0], calls)
    if src is None:
        return False
    out.register_forward_hook(IntegerGlobalAvgPool(modules[src.target], modules[src.target], out))
    return True


def _avg_pool_params(gm, node):
    """(kernel, stride, padding, count_include_pad) of a 2-D average pooling node (``nn.AvgPool2d``,
    ``F.avg_pool2d``) that QLinearAveragePool computes as ``IntegerAvgPool`` does (no ceil mode, no divisor
    override), else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.AvgPool2d):
        m = gm.get_submodule(node.target)
        k, s, p, ceil, include, divisor = (m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                           m.divisor_override)
    elif node.op == "call_function" and node.target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
        _, k, s, p, ceil, include, divisor = call_args(
            node, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
            {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True})
    else:
        return None
    if ceil or divisor is not None:
        return None
    pair = nn.modules.utils._pair
    return pair(k), pair(s if s not in (None, ()) else k), pair(p), bool(include)


def _install_avg_pool(gm, modules, calls, node, out):
    """Hook ``IntegerAvgPool`` when ``node`` pools (2-D, average) a value on a quantizer's grid whose module output a
    hook can keep (a quantizer's, or a max pool's of one: Inception's first block reads a max pool)."""
    params = _avg_pool_params(gm, node)
    if params is None or len(node.users) != 1 or not isinstance(node.args[0], fx.Node):
        return False
    src = grid_source(gm, node.args[0])
    kept = _kept_value(gm, node.args[0], calls)
    if src is None or kept.op != "call_module" or calls[kept.target] != 1:
        return False
    out.register_forward_hook(IntegerAvgPool(modules[kept.target], modules[src.target], out, *params))
    return True


def _quantizer_called_once(node, calls):
    """``node`` when it is an activation quantizer's call, the only call of that module (its output is this
    forward's value), else None."""
    ok = isinstance(node, fx.Node) and node.op == "call_module" and node.target.startswith("activation_quantizers.") \
        and calls[node.target] == 1
    return node if ok else None


def _install_sigmoid(gm, modules, calls, node, out):
    """Hook ``IntegerSigmoid`` when ``node`` is a sigmoid of a quantizer's output, ``IntegerSiLU`` when a SiLU."""
    one = isinstance(node, fx.Node) and len(node.users) == 1
    sigmoid = one and ((node.op == "call_function" and node.target in _SIGMOIDS)
                       or (node.op == "call_method" and node.target == "sigmoid")
                       or (node.op == "call_module" and isinstance(modules[node.target], nn.Sigmoid)))
    silu = one and ((node.op == "call_function" and node.target is F.silu and not node.kwargs.get("inplace")
                     and len(node.args) == 1)
                    or (node.op == "call_module" and isinstance(modules[node.target], nn.SiLU)))
    src = _quantizer_called_once(node.args[0], calls) if sigmoid or silu else None
    if src is None:
        return False
    kernel = IntegerSigmoid if sigmoid else IntegerSiLU
    out.register_forward_hook(kernel(modules[src.target], modules[src.target], out))
    return True


def _install_softmax(gm, modules, calls, node, out):
    """Hook ``IntegerSoftmax`` when ``node`` is a softmax of a quantizer's output (Swin's ``window_softmax``: of a
    block whose input is a quantizer's output)."""
    dim = softmax_dim(gm, node)
    src = _quantizer_called_once(node.args[0], calls) if dim is not None and len(node.users) == 1 else None
    if src is None:
        return False
    window = None
    if node.target is capture.window_softmax:  # (attn, x, window, shift): x must be a quantizer's own output
        block = _quantizer_called_once(node.args[1], calls)
        if block is None:
            return False
        window = (modules[block.target], list(node.args[2]), list(node.args[3]))
    out.register_forward_hook(IntegerSoftmax(modules[src.target], modules[src.target], out, dim, window))
    return True


def _install_matmul(gm, modules, calls, node, out):
    """Hook ``IntegerMatMul`` when ``node`` is a ``capture.MatMul`` (called once) of two values on quantizer grids."""
    ok = isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules[node.target], capture.MatMul) \
        and calls[node.target] == 1 and len(node.users) == 1
    sources = [grid_source(gm, arg) for arg in node.args] if ok else [None]
    if None in sources:
        return False
    a_quant, b_quant = (modules[src.target] for src in sources)
    out.register_forward_hook(IntegerMatMul(modules[node.target], a_quant, b_quant, out))
    return True


def integer_bias(bias, in_scale, weight_scale):
    """The int32 bias on the accumulator's grid (scale ``s_x * s_w``), rounded in float32 as a QDQ
    runtime quantizes it (onnxruntime's BiasQuantization); the ONNX writer stores these integers."""
    return torch.round(bias.detach().float() / (in_scale.float() * weight_scale.float())).double()


def accumulator_bits(w_bits, a_bits, fan_in):
    return w_bits + a_bits + math.ceil(math.log2(max(fan_in, 1)))


_HOOK_TYPES = (IntegerArithmetic, IntegerAdd, _IntegerUnary, IntegerMatMul)


def integer_hooks(model):
    """Every integer-arithmetic hook installed on ``model``'s modules (conv/linear, add, mul, pooling, sigmoid)."""
    return [h for m in model.modules() for h in m._forward_hooks.values() if isinstance(h, _HOOK_TYPES)]


def set_integer_evaluation(model, on):
    """Switch ``model``'s installed integer arithmetic on or off; returns the hooks' previous states."""
    hooks = integer_hooks(model)
    states = [h.enabled for h in hooks]
    for h in hooks:
        h.enabled = on
    return list(zip(hooks, states))


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _sole_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _enabled_weight_quantizer(layer):
    chain = getattr(getattr(layer, "parametrizations", None), "weight", None)
    if chain is None or len(chain) != 1 or not isinstance(chain[0], WeightFakeQuant) or not chain[0].enabled:
        return None
    return chain[0]


def install_integer_layers(gm):
    """Attach ``IntegerArithmetic`` to each conv/linear [-> batch-norm] [-> ReLU, or a clip the quantizer's range
    lies inside] -> activation quantizer of ``gm`` whose input is on a quantizer's grid and whose weight is
    fake-quantized, from the graph alone: the integer layers of a model no post-training quantizer prepared (a QAT
    model, batch-norm unfolded). Returns the number attached; ``remove_integer_arithmetic`` takes them off."""
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    attached = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or not isinstance(modules[node.target], _LAYERS):
            continue
        layer = modules[node.target]
        wq, src, nxt, norm = _enabled_weight_quantizer(layer), grid_source(gm, node.args[0]), _sole_user(node), None
        if wq is None or src is None or nxt is None:
            continue
        if nxt.op == "call_module" and isinstance(modules[nxt.target], _NORMS) and calls[nxt.target] == 1:
            norm, nxt = modules[nxt.target], _sole_user(nxt)
        clip = None
        if nxt is not None and ((nxt.op == "call_module" and isinstance(modules[nxt.target], nn.ReLU))
                                or (nxt.op == "call_function" and nxt.target in _RELUS)):
            nxt = _sole_user(nxt)
        elif nxt is not None and _clip_bounds(nxt, modules) is not None:
            clip, nxt = _clip_bounds(nxt, modules), _sole_user(nxt)
        if nxt is None or nxt.op != "call_module" or not nxt.target.startswith("activation_quantizers."):
            continue
        if clip is not None and not _within(modules[nxt.target], clip):
            continue  # onnxruntime keeps such a clip, and the convolution before it then runs in float
        hook = IntegerArithmetic(wq, modules[src.target], modules[nxt.target], norm=norm)
        hook.enabled = False  # switched on by integer_evaluation
        hook.attach(layer)
        attached += 1
    return attached


def _clip_bounds(node, modules):
    """(min, max) of a ReLU6 / hardtanh node, else None."""
    if node.op == "call_module" and isinstance(modules[node.target], nn.Hardtanh):  # ReLU6 is one
        return float(modules[node.target].min_val), float(modules[node.target].max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh and len(node.args) == 3 and not node.kwargs:
        return float(node.args[1]), float(node.args[2])
    return None


def _within(quant, clip):
    """Whether clipping to ``clip`` before ``quant`` changes no quantized value: the clip's min quantizes to the
    grid's lowest level and its max to the highest. onnxruntime then removes the Clip (its ClipQuantFusion, on the
    same half-step bounds), and the convolution before it fuses to QLinearConv: MobileNet-V2's ReLU6 before
    quantizers whose QAT range ends at 6.00007."""
    if not quant.observed or quant.scale.numel() != 1:
        return False
    scale = torch.tensor(float(quant.scale), dtype=torch.float32)
    zero_point = int(quant.zero_point)
    lowest = float(scale * (quant.qmin - zero_point + 0.5))  # the largest value that quantizes to qmin
    highest = float(scale * (quant.qmax - zero_point - 0.5))  # the smallest value that quantizes to qmax
    return clip[0] <= lowest and highest <= clip[1]


def remove_integer_arithmetic(model):
    """Take every integer-arithmetic hook (and replaced forward) off ``model``: it computes in float again."""
    for module in list(model.modules()):
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, IntegerArithmetic):
                hook.detach(module)
            elif isinstance(hook, _HOOK_TYPES):
                del module._forward_hooks[key]
                for _, keeper in hook.keepers:  # the hooks keeping its inputs, on other modules
                    keeper.remove()


@contextlib.contextmanager
def integer_simulation(model):
    """Within the block, ``model`` computes in integer arithmetic: a post-training quantizer's installed hooks
    switched on, or, on a model without them whose graph holds activation quantizers (a QAT model), hooks
    installed for the block (``install_integer_layers``, ``install_integer_adds``) and taken off after. Yields the
    number of hooks on (0: the model has nothing to compute in integers, e.g. an FP32 model)."""
    gm = next((m for m in model.modules() if isinstance(m, fx.GraphModule)), None)
    installed = not integer_hooks(model) and gm is not None and hasattr(gm, "activation_quantizers")
    if installed:
        install_integer_layers(gm)
        install_integer_adds(gm)
    try:
        with integer_evaluation(model) as hooks:
            yield hooks
    finally:
        if installed:
            remove_integer_arithmetic(gm)


@contextlib.contextmanager
def integer_evaluation(model, on=True):
    """Within the block, ``model``'s installed integer arithmetic is on (or off); the previous states come back
    after. Yields the number of hooks switched (0 for a model without any, e.g. a QAT model)."""
    previous = set_integer_evaluation(model, on)
    try:
        yield len(previous)
    finally:
        for h, state in previous:
            h.enabled = state
