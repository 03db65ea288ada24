// CUDA twin of the fused DSA op. The per-pixel math is in dsa.h (shared with the CPU
// twin); this file adds only indexing, the launches, and per-sample reductions done with
// ATen (sum over [B, N] in double), so no hand-rolled reduction code lives here.
//
// One thread per output pixel (b, i, j), looping over the channels (adjacent threads read
// and write adjacent columns: coalesced).
//
// Forward:
//   color "before": mu = mean of x per sample (ATen), then one kernel writes y.
//   color "after":  kernel 1 writes the sampled image v into y; mu = mean of y per sample
//                   (ATen); kernel 2 applies color, cutout and noise in place.
//   otherwise:      one kernel.
// Backward (the transpose):
//   with color: kernel 1 writes, per pixel, keep * sum_k g_k (times the coverage for color
//   "before") into a [B, H*W] double buffer; ATen sums it per sample. Then one kernel
//   scatters each pixel's gradient to its taps: a plain add for the identity and integer
//   maps (each input pixel is read by at most one output pixel: no races, deterministic),
//   gpuAtomicAdd for bilinear sampling (float32 results may differ in the last bits from
//   run to run; a gather formulation would avoid that, to be chosen by measurement).
//   For color "before" the uniform term (1 - c) S / N is added with ATen.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "dsa/dsa.h"

namespace mtt_fast {
namespace dsa {
namespace {

constexpr int kThreads = 256;

// mode: 0 = full forward (v, color, cutout, noise); 1 = write v only; 2 = finish in place.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ prm,
                               const double* __restrict__ mu, const scalar_t* __restrict__ noise,
                               scalar_t* __restrict__ y, int64_t B, int64_t C, int64_t H,
                               int64_t W, int64_t flags, int mode) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  const int64_t total = B * HW;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t b = idx / HW, p = idx - b * HW;
    const int64_t i = p / W, j = p - i * W;
    const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm + b * kNumParams);
    const scalar_t* xb = x + b * C * HW;
    scalar_t* yb = y + b * C * HW;
    Taps<acc_t> t;
    acc_t kappa = acc_t(1);
    acc_t cm = acc_t(0);
    if (mode != 2) {
      make_taps<acc_t>(P, geom, i, j, H, W, t);
      kappa = coverage<acc_t>(t);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* xc = xb + c * HW;
        acc_t v = acc_t(0);
        for (int n = 0; n < t.n; ++n) v += t.w[n] * static_cast<acc_t>(xc[t.off[n]]);
        yb[c * HW + p] = static_cast<scalar_t>(v);
        cm += v;
      }
      if (mode == 1) continue;
    } else {
      for (int64_t c = 0; c < C; ++c) cm += static_cast<acc_t>(yb[c * HW + p]);
    }
    cm *= inv_c;
    const acc_t m = (mu != nullptr) ? static_cast<acc_t>(mu[b]) : acc_t(0);
    const ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, m);
    const bool keep = cutout_keep<acc_t>(P, cutout, i, j);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t e = c * HW + p;
      acc_t out = keep ? color_value<acc_t>(k, static_cast<acc_t>(yb[e]), cm, kappa) : acc_t(0);
      if (noise != nullptr) out += P.noise * static_cast<acc_t>(noise[b * C * HW + e]);
      yb[e] = static_cast<scalar_t>(out);
    }
  }
}

// Per pixel: keep * sum_k g_k, times the coverage for color "before".
template <typename scalar_t>
__global__ void backward_sum_kernel(const scalar_t* __restrict__ g,
                                    const scalar_t* __restrict__ prm, double* __restrict__ out,
                                    int64_t B, int64_t C, int64_t H, int64_t W, int64_t flags) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  const int64_t total = B * HW;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t b = idx / HW, p = idx - b * HW;
    const int64_t i = p / W, j = p - i * W;
    const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm + b * kNumParams);
    double sh = 0.0;
    if (cutout_keep<acc_t>(P, cutout, i, j)) {
      const scalar_t* gb = g + b * C * HW;
      for (int64_t c = 0; c < C; ++c) sh += static_cast<double>(gb[c * HW + p]);
      if (color == kColorBefore) {
        Taps<acc_t> t;
        make_taps<acc_t>(P, geom, i, j, H, W, t);
        sh *= static_cast<double>(coverage<acc_t>(t));
      }
    }
    out[idx] = sh;
  }
}

template <typename scalar_t>
__global__ void backward_scatter_kernel(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ prm,
                                        const double* __restrict__ sums, scalar_t* __restrict__ gx,
                                        int64_t B, int64_t C, int64_t H, int64_t W,
                                        int64_t flags) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  const int64_t total = B * HW;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t b = idx / HW, p = idx - b * HW;
    const int64_t i = p / W, j = p - i * W;
    const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm + b * kNumParams);
    Taps<acc_t> t;
    make_taps<acc_t>(P, geom, i, j, H, W, t);
    if (t.n == 0) continue;
    acc_t in_v, in_x;
    uniform_terms<acc_t>(P, color, sums != nullptr ? sums[b] : 0.0, C * HW, in_v, in_x);
    const ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, acc_t(0));
    const bool keep = cutout_keep<acc_t>(P, cutout, i, j);
    const scalar_t* gb = g + b * C * HW;
    scalar_t* gxb = gx + b * C * HW;
    acc_t sum_h = acc_t(0);
    if (keep && color != kColorNone) {
      for (int64_t c = 0; c < C; ++c) sum_h += static_cast<acc_t>(gb[c * HW + p]);
    }
    const acc_t chan_term = k.chan / static_cast<acc_t>(C) * sum_h;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t h = keep ? static_cast<acc_t>(gb[c * HW + p]) : acc_t(0);
      const acc_t gv = grad_v<acc_t>(k, h, chan_term, in_v);
      scalar_t* gxc = gxb + c * HW;
      if (geom == kGeomBilinear) {
        for (int n = 0; n < t.n; ++n) {
          gpuAtomicAdd(gxc + t.off[n], static_cast<scalar_t>(t.w[n] * gv));
        }
      } else {  // one tap, read by this output pixel only
        gxc[t.off[0]] = static_cast<scalar_t>(static_cast<acc_t>(gxc[t.off[0]]) + gv);
      }
    }
  }
}

unsigned blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 16)));
}

// Per-sample sum of a [B, ...] tensor, in double.
at::Tensor per_sample_sum(const at::Tensor& t) {
  return t.reshape({t.size(0), -1}).sum(1, /*keepdim=*/false, at::kDouble).contiguous();
}

at::Tensor dsa_forward_cuda(const at::Tensor& x, const at::Tensor& params,
                            const std::optional<at::Tensor>& noise, int64_t flags) {
  const char* op = "mtt_fast::dsa_forward";
  check_flags(op, flags);
  check_images(op, x, params, "x");
  check_noise(op, x, noise, flags);
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (x.numel() == 0) return y;
  const int64_t N = C * H * W;
  const int color = color_of(flags);
  const bool with_noise = (flags & kFlagNoise) != 0;
  const unsigned blocks = blocks_for(B * H * W);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_forward_cuda", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    const scalar_t* pn = with_noise ? noise->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    if (color == kColorAfter) {
      forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(px, pp, nullptr, nullptr, py, B,
                                                                C, H, W, flags, 1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor mu = per_sample_sum(y).div_(static_cast<double>(N));
      forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          px, pp, mu.const_data_ptr<double>(), pn, py, B, C, H, W, flags, 2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      at::Tensor mu;
      if (color == kColorBefore) mu = per_sample_sum(x).div_(static_cast<double>(N));
      forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          px, pp, mu.defined() ? mu.const_data_ptr<double>() : nullptr, pn, py, B, C, H, W,
          flags, 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

at::Tensor dsa_backward_cuda(const at::Tensor& grad_y, const at::Tensor& params, int64_t flags) {
  const char* op = "mtt_fast::dsa_backward";
  check_flags(op, flags);
  check_images(op, grad_y, params, "grad_y");
  TORCH_INTERNAL_ASSERT(grad_y.device().is_cuda());
  const c10::cuda::CUDAGuard guard(grad_y.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor gx = at::zeros_like(grad_y, at::MemoryFormat::Contiguous);
  const int64_t B = grad_y.size(0), C = grad_y.size(1), H = grad_y.size(2), W = grad_y.size(3);
  if (grad_y.numel() == 0) return gx;
  const int64_t N = C * H * W;
  const int color = color_of(flags);
  const unsigned blocks = blocks_for(B * H * W);
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "dsa_backward_cuda", [&] {
    const scalar_t* pg = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    at::Tensor sums;
    if (color != kColorNone) {
      at::Tensor per_pixel = at::empty({B, H * W}, grad_y.options().dtype(at::kDouble));
      backward_sum_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          pg, pp, per_pixel.mutable_data_ptr<double>(), B, C, H, W, flags);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sums = per_sample_sum(per_pixel);
    }
    backward_scatter_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        pg, pp, sums.defined() ? sums.const_data_ptr<double>() : nullptr,
        gx.mutable_data_ptr<scalar_t>(), B, C, H, W, flags);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (color == kColorBefore) {
      // gx += (1 - c) * S / N, per sample
      const at::Tensor c = params.select(1, kContrast).to(at::kDouble);
      const at::Tensor u = (1.0 - c).mul_(sums).div_(static_cast<double>(N));
      gx.add_(u.to(grad_y.scalar_type()).view({B, 1, 1, 1}));
    }
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) {
  m.impl("dsa_forward", &dsa_forward_cuda);
  m.impl("dsa_backward", &dsa_backward_cuda);
}

}  // namespace dsa
}  // namespace mtt_fast
