// CUDA twin of the fused ConvNet block (instance norm + ReLU + 2x2 average pool), its
// backward and double backward. The formulas are in block.h (shared with the CPU twin);
// this file adds only indexing, launches and CUB block reductions.
//
// One thread block per (sample, channel) slice: its threads stride over the slice,
// reduce the slice sums with cub::BlockReduce (broadcast through shared memory), compute
// the per-slice coefficients of block.h and then apply the per-pixel formulas. The weight
// and bias gradients are written per slice and summed over samples with an ATen sum.
// Deterministic: the same inputs give the same bits on every run.
//
// Compiled in CI (no GPU there); not yet run on hardware.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <optional>
#include <tuple>

#include "block/block.h"

namespace mtt_fast {
namespace block {
namespace {

constexpr int kThreads = 256;

// The sum of v over the thread block, returned to every thread.
template <typename acc_t>
__device__ inline acc_t block_sum(acc_t v) {
  using BlockReduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename BlockReduce::TempStorage tmp;
  __shared__ acc_t result;
  const acc_t r = BlockReduce(tmp).Sum(v);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  const acc_t out = result;
  __syncthreads();  // tmp and result are reused by the next call
  return out;
}

// a = m U(gy) at pixel i of a slice (and the mask m), block.h's "backward".
template <typename scalar_t, typename acc_t>
__device__ inline acc_t masked_upstream_at(const scalar_t* __restrict__ xs,
                                           const scalar_t* __restrict__ gs, int64_t i, int64_t W,
                                           int64_t Ho, int64_t Wo, const Affine<acc_t>& af,
                                           acc_t& m) {
  const int64_t ii = i / W, j = i - ii * W;
  m = acc_t(0);
  if (ii >= 2 * Ho || j >= 2 * Wo) return acc_t(0);
  const acc_t z = af.alpha * static_cast<acc_t>(xs[i]) + af.beta;
  if (!(z > acc_t(0))) return acc_t(0);
  m = acc_t(1);
  return acc_t(0.25) * static_cast<acc_t>(gs[(ii / 2) * Wo + (j / 2)]);
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                               scalar_t* __restrict__ stats, int64_t C, int64_t H, int64_t W,
                               double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t s = blockIdx.x, c = s % C, HW = H * W, Ho = H / 2, Wo = W / 2;
  const scalar_t* xs = x + s * HW;
  acc_t sum = acc_t(0);
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) sum += static_cast<acc_t>(xs[i]);
  const acc_t mu_acc = block_sum<acc_t>(sum) / static_cast<acc_t>(HW);
  acc_t sq = acc_t(0);
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t d = static_cast<acc_t>(xs[i]) - mu_acc;
    sq += d * d;
  }
  sq = block_sum<acc_t>(sq);
  // the backward reads the stats back in scalar_t: use the rounded values here too
  const scalar_t mu_s = static_cast<scalar_t>(mu_acc);
  const scalar_t rstd_s = static_cast<scalar_t>(rstd_of<acc_t>(sq, HW, eps));
  if (threadIdx.x == 0) {
    stats[2 * s] = mu_s;
    stats[2 * s + 1] = rstd_s;
  }
  const Affine<acc_t> af = affine_of<acc_t>(static_cast<acc_t>(mu_s), static_cast<acc_t>(rstd_s),
                                            static_cast<acc_t>(w[c]), static_cast<acc_t>(b[c]));
  scalar_t* ys = y + s * Ho * Wo;
  for (int64_t o = threadIdx.x; o < Ho * Wo; o += blockDim.x) {
    const int64_t io = o / Wo, jo = o - io * Wo;
    const scalar_t* r0 = xs + 2 * io * W + 2 * jo;
    const scalar_t* r1 = r0 + W;
    const acc_t t = relu<acc_t>(af.alpha * static_cast<acc_t>(r0[0]) + af.beta) +
                    relu<acc_t>(af.alpha * static_cast<acc_t>(r0[1]) + af.beta) +
                    relu<acc_t>(af.alpha * static_cast<acc_t>(r1[0]) + af.beta) +
                    relu<acc_t>(af.alpha * static_cast<acc_t>(r1[1]) + af.beta);
    ys[o] = static_cast<scalar_t>(acc_t(0.25) * t);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ stats, scalar_t* __restrict__ gx,
                                at::opmath_type<scalar_t>* __restrict__ part_w,
                                at::opmath_type<scalar_t>* __restrict__ part_b, int64_t C,
                                int64_t H, int64_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t s = blockIdx.x, c = s % C, HW = H * W, Ho = H / 2, Wo = W / 2;
  const acc_t mu = static_cast<acc_t>(stats[2 * s]), rstd = static_cast<acc_t>(stats[2 * s + 1]);
  const acc_t wc = static_cast<acc_t>(w[c]);
  const Affine<acc_t> af = affine_of<acc_t>(mu, rstd, wc, static_cast<acc_t>(b[c]));
  const scalar_t* xs = x + s * HW;
  const scalar_t* gs = g + s * Ho * Wo;
  acc_t sa = acc_t(0), sax = acc_t(0), m;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t a = masked_upstream_at<scalar_t, acc_t>(xs, gs, i, W, Ho, Wo, af, m);
    sa += a;
    sax += a * (static_cast<acc_t>(xs[i]) - mu) * rstd;
  }
  sa = block_sum<acc_t>(sa);
  sax = block_sum<acc_t>(sax);
  if (threadIdx.x == 0) {
    part_b[s] = sa;
    part_w[s] = sax;
  }
  const BackwardCoefs<acc_t> k = backward_coefs<acc_t>(sa, sax, HW, wc, rstd);
  scalar_t* gxs = gx + s * HW;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t a = masked_upstream_at<scalar_t, acc_t>(xs, gs, i, W, Ho, Wo, af, m);
    const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
    gxs[i] = static_cast<scalar_t>(k.c_a * a + k.c_0 + k.c_x * xh);
  }
}

template <typename scalar_t>
__global__ void double_backward_kernel(
    const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
    const scalar_t* __restrict__ b, const scalar_t* __restrict__ stats,
    const scalar_t* __restrict__ rx, const scalar_t* __restrict__ rw,
    const scalar_t* __restrict__ rb, scalar_t* __restrict__ ggy, scalar_t* __restrict__ ggx,
    at::opmath_type<scalar_t>* __restrict__ part_w, int64_t C, int64_t H, int64_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t s = blockIdx.x, c = s % C, HW = H * W, Ho = H / 2, Wo = W / 2;
  const acc_t mu = static_cast<acc_t>(stats[2 * s]), rstd = static_cast<acc_t>(stats[2 * s + 1]);
  const acc_t wc = static_cast<acc_t>(w[c]);
  const Affine<acc_t> af = affine_of<acc_t>(mu, rstd, wc, static_cast<acc_t>(b[c]));
  const scalar_t* xs = x + s * HW;
  const scalar_t* gs = g + s * Ho * Wo;
  const scalar_t* rs = rx != nullptr ? rx + s * HW : nullptr;
  DoubleSums<acc_t> sums{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  acc_t m;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t a = masked_upstream_at<scalar_t, acc_t>(xs, gs, i, W, Ho, Wo, af, m);
    const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
    const acc_t r = rs != nullptr ? static_cast<acc_t>(rs[i]) : acc_t(0);
    sums.a += a;
    sums.ax += a * xh;
    sums.r += r;
    sums.rx += r * xh;
    sums.ar += a * r;
  }
  sums.a = block_sum<acc_t>(sums.a);
  sums.ax = block_sum<acc_t>(sums.ax);
  if (rs != nullptr) {
    sums.r = block_sum<acc_t>(sums.r);
    sums.rx = block_sum<acc_t>(sums.rx);
    sums.ar = block_sum<acc_t>(sums.ar);
  }
  const acc_t rwc = rw != nullptr ? static_cast<acc_t>(rw[c]) : acc_t(0);
  const acc_t rbc = rb != nullptr ? static_cast<acc_t>(rb[c]) : acc_t(0);
  const DoubleCoefs<acc_t> k = double_coefs<acc_t>(sums, HW, wc, rstd, rwc, rbc);
  if (threadIdx.x == 0) part_w[s] = k.gw_part;
  scalar_t* gxs = ggx + s * HW;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t a = masked_upstream_at<scalar_t, acc_t>(xs, gs, i, W, Ho, Wo, af, m);
    const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
    const acc_t r = rs != nullptr ? static_cast<acc_t>(rs[i]) : acc_t(0);
    gxs[i] = static_cast<scalar_t>(k.q_a * a + k.q_r * r + k.q_0 + k.q_x * xh);
  }
  scalar_t* gys = ggy + s * Ho * Wo;
  for (int64_t o = threadIdx.x; o < Ho * Wo; o += blockDim.x) {
    const int64_t io = o / Wo, jo = o - io * Wo;
    acc_t t = acc_t(0);
    for (int64_t di = 0; di < 2; ++di) {
      for (int64_t dj = 0; dj < 2; ++dj) {
        const int64_t i = (2 * io + di) * W + 2 * jo + dj;
        const acc_t xv = static_cast<acc_t>(xs[i]);
        if (af.alpha * xv + af.beta > acc_t(0)) {
          const acc_t r = rs != nullptr ? static_cast<acc_t>(rs[i]) : acc_t(0);
          t += k.p_r * r + k.p_x * (xv - mu) * rstd + k.p_0;
        }
      }
    }
    gys[o] = static_cast<scalar_t>(acc_t(0.25) * t);
  }
}

unsigned slices(int64_t B, int64_t C) {
  TORCH_CHECK(B * C <= 2147483647LL, "mtt_fast::convblock: too many (sample, channel) slices");
  return static_cast<unsigned>(B * C);
}

std::tuple<at::Tensor, at::Tensor> convblock_forward_cuda(const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const at::Tensor& bias, double eps) {
  const char* op = "mtt_fast::convblock_forward";
  check_block(op, x, weight, bias, nullptr);
  check_eps(op, eps);
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = at::empty({B, C, H / 2, W / 2}, x.options());
  at::Tensor stats = at::empty({B, C, 2}, x.options());
  if (B * C == 0) return std::make_tuple(y, stats);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_forward_cuda", [&] {
    forward_kernel<scalar_t><<<slices(B, C), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
        stats.mutable_data_ptr<scalar_t>(), C, H, W, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return std::make_tuple(y, stats);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convblock_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& stats) {
  const char* op = "mtt_fast::convblock_backward";
  check_block(op, x, weight, bias, &stats);
  check_pooled(op, x, grad_y, "grad_y");
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gx = at::empty_like(x);
  if (B * C == 0) return std::make_tuple(gx, at::zeros_like(weight), at::zeros_like(bias));
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor part = at::empty({2, B, C}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* pp = part.mutable_data_ptr<acc_t>();
    backward_kernel<scalar_t><<<slices(B, C), kThreads, 0, stream>>>(
        grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        stats.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), pp, pp + B * C, C, H,
        W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor sums = part.sum(1).to(x.scalar_type());  // [2, C]: (weight, bias)
  return std::make_tuple(gx, sums[0].contiguous(), sums[1].contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convblock_double_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& stats, const std::optional<at::Tensor>& r_x,
    const std::optional<at::Tensor>& r_weight, const std::optional<at::Tensor>& r_bias) {
  const char* op = "mtt_fast::convblock_double_backward";
  check_block(op, x, weight, bias, &stats);
  check_pooled(op, x, grad_y, "grad_y");
  const bool has_rx = r_x.has_value() && r_x->defined();
  const bool has_rw = r_weight.has_value() && r_weight->defined();
  const bool has_rb = r_bias.has_value() && r_bias->defined();
  if (has_rx) {
    check_same(op, x, *r_x, "r_x");
    TORCH_CHECK(r_x->sizes() == x.sizes(), op, ": r_x must be shaped like x");
  }
  if (has_rw) {
    check_same(op, x, *r_weight, "r_weight");
    TORCH_CHECK(r_weight->sizes() == weight.sizes(), op, ": r_weight must be [C]");
  }
  if (has_rb) {
    check_same(op, x, *r_bias, "r_bias");
    TORCH_CHECK(r_bias->sizes() == bias.sizes(), op, ": r_bias must be [C]");
  }
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor ggy = at::empty_like(grad_y);
  at::Tensor ggx = at::empty_like(x);
  if (B * C == 0) return std::make_tuple(ggy, ggx, at::zeros_like(weight));
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor part = at::empty({B, C}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_double_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    double_backward_kernel<scalar_t><<<slices(B, C), kThreads, 0, stream>>>(
        grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        stats.const_data_ptr<scalar_t>(), has_rx ? r_x->const_data_ptr<scalar_t>() : nullptr,
        has_rw ? r_weight->const_data_ptr<scalar_t>() : nullptr,
        has_rb ? r_bias->const_data_ptr<scalar_t>() : nullptr, ggy.mutable_data_ptr<scalar_t>(),
        ggx.mutable_data_ptr<scalar_t>(), part.mutable_data_ptr<acc_t>(), C, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return std::make_tuple(ggy, ggx, part.sum(0).to(x.scalar_type()));
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) {
  m.impl("convblock_forward", &convblock_forward_cuda);
  m.impl("convblock_backward", &convblock_backward_cuda);
  m.impl("convblock_double_backward", &convblock_double_backward_cuda);
}

}  // namespace block
}  // namespace mtt_fast
