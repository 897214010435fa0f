// Per-tensor fake quantization on the CPU in one pass (compressor/quantization/cpu_kernel.py builds and loads it).
//
// fake_quantize(x, scale, zero_point, qmin, qmax), with its gradient (autograd in C++):
// forward:  out = (clamp(nearbyint(x * (1 / scale)) + zero_point, qmin, qmax) - zero_point) * scale, and the
//           straight-through mask (the rounded value lies inside [qmin, qmax]) in the same loop;
// backward: grad where the mask is set, 0 elsewhere.
// The float32 operations and their order are those of fake_quant_op._FakeQuantize's vectorized tensor ops (and of
// torch.fake_quantize_per_tensor_affine), so the results are bit-identical; the loops are written so that the
// compiler vectorizes them (the eager version makes 7 passes over the tensor and 3 temporaries forward, and its
// backward's torch.where on a bool mask does not vectorize on this CPU).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

constexpr int64_t kGrain = 1 << 15;

void check_input(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "fake_quantize_cpu: a float32 CPU tensor");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "fake_quantize_cpu: a dense tensor (contiguous in some order)");
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == at::kFloat && scale.device().is_cpu(),
              "fake_quantize_cpu: one float32 scale");
  TORCH_CHECK(zero_point.numel() == 1 && zero_point.scalar_type() == at::kInt && zero_point.device().is_cpu(),
              "fake_quantize_cpu: one int32 zero point");
}

std::tuple<at::Tensor, at::Tensor> forward_kernel(const at::Tensor& x, const at::Tensor& scale,
                                           const at::Tensor& zero_point, int64_t qmin, int64_t qmax,
                                           bool with_mask) {
  check_input(x, scale, zero_point);
  const float s = *scale.const_data_ptr<float>();
  const float inv = 1.0f / s;  // torch.reciprocal(scale) in float32
  const float zp = static_cast<float>(*zero_point.const_data_ptr<int32_t>());
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  // empty_like keeps a dense tensor's strides (channels-last stays channels-last): element i of the storage
  // of x, out and mask is the same logical element
  at::Tensor out = at::empty_like(x);
  at::Tensor mask = with_mask ? at::empty_like(x, x.options().dtype(at::kBool)) : at::empty({0}, x.options().dtype(at::kBool));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* mp = with_mask ? reinterpret_cast<uint8_t*>(mask.mutable_data_ptr<bool>()) : nullptr;
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    if (mp != nullptr) {
      for (int64_t i = begin; i < end; ++i) {
        const float q = std::nearbyint(xp[i] * inv) + zp;
        const float c = q < lo ? lo : (q > hi ? hi : q);  // NaN stays NaN (and its mask 0), as torch.clamp
        op[i] = (c - zp) * s;
        mp[i] = static_cast<uint8_t>(c == q);
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const float q = std::nearbyint(xp[i] * inv) + zp;
        const float c = q < lo ? lo : (q > hi ? hi : q);
        op[i] = (c - zp) * s;
      }
    }
  });
  return {out, mask};
}

at::Tensor backward_kernel(const at::Tensor& grad, const at::Tensor& mask) {
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kFloat && mask.scalar_type() == at::kBool,
              "fake_quantize_cpu backward: a float32 CPU gradient and a bool mask");
  TORCH_CHECK(grad.sizes() == mask.sizes() && grad.strides() == mask.strides() &&
                  grad.is_non_overlapping_and_dense(),
              "fake_quantize_cpu backward: the gradient laid out as the mask");
  at::Tensor out = at::empty_like(grad);
  const uint32_t* gp = reinterpret_cast<const uint32_t*>(grad.const_data_ptr<float>());
  const uint8_t* mp = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
  uint32_t* op = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<float>());
  at::parallel_for(0, grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
    // the select as a bit mask (all ones or +0.0f): it vectorizes, where a branch or torch.where's bool select
    // does not, and keeps torch.where's values exactly (an infinite gradient outside the range gives 0)
    for (int64_t i = begin; i < end; ++i) op[i] = gp[i] & (0u - static_cast<uint32_t>(mp[i]));
  });
  return out;
}

// The straight-through gradient in C++: a Python autograd.Function costs about 0.1 ms per call forward and again
// backward, which on resnet20_cifar's small activations is as much as the arithmetic.
class FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
    const bool with_mask = x.requires_grad();  // (needs_input_grad exists only in backward)
    auto [out, mask] = forward_kernel(x, scale, zero_point, qmin, qmax, with_mask);
    if (with_mask) ctx->save_for_backward({mask});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_x = grad.strides() == mask.strides() && grad.scalar_type() == at::kFloat
                            ? backward_kernel(grad, mask)
                            : at::where(mask, grad, at::zeros({}, grad.options()));
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quantize_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                  int64_t qmin, int64_t qmax) {
  return FakeQuantizeFunction::apply(x, scale, zero_point, qmin, qmax);
}

at::Tensor fake_quantize_plain(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                               int64_t qmin, int64_t qmax) {
  return std::get<0>(forward_kernel(x, scale, zero_point, qmin, qmax, false));
}

}  // namespace

TORCH_LIBRARY(compressor_cpu, m) {
  m.def("fake_quantize(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax) -> Tensor");
}

TORCH_LIBRARY_IMPL(compressor_cpu, Autograd, m) {
  m.impl("fake_quantize", &fake_quantize_autograd);
}

TORCH_LIBRARY_IMPL(compressor_cpu, CPU, m) {
  m.impl("fake_quantize", &fake_quantize_plain);
}
