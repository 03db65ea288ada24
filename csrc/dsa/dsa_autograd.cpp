// Autograd for the fused DSA ops, registered in C++ (dispatch key Autograd, all devices).
//
// Why here and not with torch.library.register_autograd in mtt_fast/ops/dsa.py (the
// convention for the other op families): DSA runs inside every unrolled student step on
// batches as small as 100x1x28x28, where the Python autograd wrapper cost more than the
// kernels themselves (about 20 us on the forward and 70 us on the backward per call,
// measured on the 2-core CI machine; see benchmarks/bench_dsa.py). The formulas are the
// same ones the Python registration had:
//
//   y  = dsa_forward(x, params, noise, flags)  (affine in x)
//   dx = dsa_backward(dy, params, flags)        (the transpose of its linear part)
//   dnoise = nu * dy                            (y = ... + nu * noise)
//   d(dsa_backward)/d(dy) applied to r = dsa_forward(r, params without brightness, None,
//                                                    flags without noise)
//
// Each backward calls the other op through the dispatcher, so it is itself differentiable:
// gradients of any order work. params and flags are not differentiable inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "dsa/dsa.h"

namespace mtt_fast {
namespace dsa {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& params,
                        const std::optional<at::Tensor>& noise, int64_t flags) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtt_fast::dsa_forward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, int64_t)>();
  return op.call(x, params, noise, flags);
}

at::Tensor call_backward(const at::Tensor& grad_y, const at::Tensor& params, int64_t flags) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtt_fast::dsa_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad_y, params, flags);
}

// params with the brightness offset zeroed: with the noise bit cleared, dsa_forward is then
// the linear part of the affine map.
at::Tensor linear_params(const at::Tensor& params) {
  at::Tensor out = params.clone();
  out.select(1, kBright).zero_();
  return out;
}

class DsaForward : public torch::autograd::Function<DsaForward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const std::optional<at::Tensor>& noise, int64_t flags) {
    ctx->save_for_backward({params});
    ctx->saved_data["flags"] = flags;
    // the graph has an edge per tensor input given: noise is edge 2 only when present
    ctx->saved_data["has_noise"] = noise.has_value() && noise->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, params, noise, flags);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor params = ctx->get_saved_variables()[0];
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const at::Tensor& g = grads[0];
    at::Tensor gx, gnoise;
    if (ctx->needs_input_grad(0)) gx = call_backward(g.contiguous(), params, flags);
    if (ctx->saved_data["has_noise"].toBool() && ctx->needs_input_grad(2))
      gnoise = g * params.select(1, kNoise).reshape({-1, 1, 1, 1});
    return {gx, at::Tensor(), gnoise, at::Tensor()};
  }
};

class DsaBackward : public torch::autograd::Function<DsaBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_y,
                            const at::Tensor& params, int64_t flags) {
    ctx->save_for_backward({params});
    ctx->saved_data["flags"] = flags;
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_backward(grad_y, params, flags);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor params = ctx->get_saved_variables()[0];
    const int64_t flags = ctx->saved_data["flags"].toInt();
    at::Tensor out;
    if (ctx->needs_input_grad(0)) {
      out = call_forward(grads[0].contiguous(), linear_params(params), std::nullopt,
                         flags & ~kFlagNoise);
    }
    return {out, at::Tensor(), at::Tensor()};
  }
};

at::Tensor dsa_forward_autograd(const at::Tensor& x, const at::Tensor& params,
                                const std::optional<at::Tensor>& noise, int64_t flags) {
  return DsaForward::apply(x, params, noise, flags);
}

at::Tensor dsa_backward_autograd(const at::Tensor& grad_y, const at::Tensor& params,
                                 int64_t flags) {
  return DsaBackward::apply(grad_y, params, flags);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, Autograd, m) {
  m.impl("dsa_forward", &dsa_forward_autograd);
  m.impl("dsa_backward", &dsa_backward_autograd);
}

}  // namespace dsa
}  // namespace mtt_fast
