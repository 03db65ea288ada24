// CPU twin of the fused ConvNet block (instance norm + ReLU + 2x2 average pool), its
// backward and double backward: at::parallel_for over the B*C (sample, channel) slices.
//
// One thread owns a slice at a time: the slice (H*W values, a few KiB at the ConvNet's
// sizes) stays in cache across the passes (sums, then the per-pixel formulas of block.h).
// Per-slice sums use eight independent accumulators in a fixed order, and the weight and
// bias gradients are summed over samples afterwards in sample order: the results are
// bit-identical for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "block/block.h"

namespace mtt_fast {
namespace block {
namespace {

constexpr int kLanes = 8;

// sum_{i < n} f(i) with kLanes accumulators (vectorizable, fixed order).
template <typename acc_t, typename F>
inline acc_t lane_sum(int64_t n, F f) {
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += f(i + k);
  }
  for (; i < n; ++i) acc[0] += f(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Several sums at once, same order as lane_sum for each.
template <typename acc_t, int K, typename F>
inline void lane_sums(int64_t n, F f, acc_t* out) {
  acc_t acc[K][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      acc_t v[K];
      f(i + k, v);
      for (int q = 0; q < K; ++q) acc[q][k] += v[q];
    }
  }
  for (; i < n; ++i) {
    acc_t v[K];
    f(i, v);
    for (int q = 0; q < K; ++q) acc[q][0] += v[q];
  }
  for (int q = 0; q < K; ++q) {
    const acc_t* a = acc[q];
    out[q] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
}

int64_t grain_for(int64_t hw) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hw)); }

// For one slice: a = m U(gy) -> a[HW], and the ReLU mask m -> m[HW] when kMask. Branch-free
// (the mask of random data defeats branch prediction) so the row loops vectorize; urow is
// scratch for one row of U(gy) (W values).
template <bool kMask, typename scalar_t, typename acc_t>
inline void masked_upstream(const scalar_t* __restrict__ xs, const scalar_t* __restrict__ gs,
                            int64_t H, int64_t W, const Affine<acc_t>& af, acc_t* __restrict__ a,
                            acc_t* __restrict__ m, acc_t* __restrict__ urow) {
  const int64_t Ho = H / 2, Wo = W / 2;
  const acc_t alpha = af.alpha, beta = af.beta;
  for (int64_t j = 2 * Wo; j < W; ++j) urow[j] = acc_t(0);  // a dropped column
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t* __restrict__ xr = xs + i * W;
    acc_t* __restrict__ ar = a + i * W;
    if (i >= 2 * Ho) {  // a dropped row: no gradient reaches it through the pool
      std::fill(ar, ar + W, acc_t(0));
      if (kMask) std::fill(m + i * W, m + i * W + W, acc_t(0));
      continue;
    }
    if (i % 2 == 0) {
      const scalar_t* __restrict__ gr = gs + (i / 2) * Wo;
      for (int64_t jo = 0; jo < Wo; ++jo) {
        const acc_t u = acc_t(0.25) * static_cast<acc_t>(gr[jo]);
        urow[2 * jo] = u;
        urow[2 * jo + 1] = u;
      }
    }
    if (kMask) {
      acc_t* __restrict__ mr = m + i * W;
      for (int64_t j = 0; j < W; ++j) {
        const acc_t mk = (alpha * static_cast<acc_t>(xr[j]) + beta) > acc_t(0) ? acc_t(1) : acc_t(0);
        mr[j] = mk;
        ar[j] = mk * urow[j];
      }
    } else {
      for (int64_t j = 0; j < W; ++j) {
        const acc_t mk = (alpha * static_cast<acc_t>(xr[j]) + beta) > acc_t(0) ? acc_t(1) : acc_t(0);
        ar[j] = mk * urow[j];
      }
    }
  }
}

// ---- forward --------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> convblock_forward_cpu(const at::Tensor& x,
                                                         const at::Tensor& weight,
                                                         const at::Tensor& bias, double eps) {
  const char* op = "mtt_fast::convblock_forward";
  check_block(op, x, weight, bias, nullptr);
  check_eps(op, eps);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, HW = H * W;
  at::Tensor y = at::empty({B, C, Ho, Wo}, x.options());
  at::Tensor stats = at::empty({B, C, 2}, x.options());
  if (B * C == 0) return std::make_tuple(y, stats);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pw = weight.const_data_ptr<scalar_t>();
    const scalar_t* pb = bias.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    scalar_t* ps = stats.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, grain_for(HW), [&](int64_t s0, int64_t s1) {
      std::vector<acc_t> row(W);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t c = s % C;
        const scalar_t* xs = px + s * HW;
        const acc_t mu_acc =
            lane_sum<acc_t>(HW, [&](int64_t i) { return static_cast<acc_t>(xs[i]); }) /
            static_cast<acc_t>(HW);
        const acc_t sq = lane_sum<acc_t>(HW, [&](int64_t i) {
          const acc_t d = static_cast<acc_t>(xs[i]) - mu_acc;
          return d * d;
        });
        // the backward reads the stats back in scalar_t: use the rounded values here too
        ps[2 * s] = static_cast<scalar_t>(mu_acc);
        ps[2 * s + 1] = static_cast<scalar_t>(rstd_of<acc_t>(sq, HW, eps));
        const acc_t mu = static_cast<acc_t>(ps[2 * s]), rstd = static_cast<acc_t>(ps[2 * s + 1]);
        const Affine<acc_t> af =
            affine_of<acc_t>(mu, rstd, static_cast<acc_t>(pw[c]), static_cast<acc_t>(pb[c]));
        scalar_t* ys = py + s * Ho * Wo;
        acc_t* t = row.data();
        for (int64_t io = 0; io < Ho; ++io) {
          const scalar_t* r0 = xs + 2 * io * W;
          const scalar_t* r1 = r0 + W;
          for (int64_t j = 0; j < 2 * Wo; ++j) {
            t[j] = relu<acc_t>(af.alpha * static_cast<acc_t>(r0[j]) + af.beta) +
                   relu<acc_t>(af.alpha * static_cast<acc_t>(r1[j]) + af.beta);
          }
          scalar_t* yr = ys + io * Wo;
          for (int64_t jo = 0; jo < Wo; ++jo) {
            yr[jo] = static_cast<scalar_t>(acc_t(0.25) * (t[2 * jo] + t[2 * jo + 1]));
          }
        }
      }
    });
  });
  return std::make_tuple(y, stats);
}

// Sums partial[n, c] over n in sample order into out[c].
template <typename scalar_t, typename acc_t>
void sum_over_samples(const std::vector<acc_t>& partial, int64_t B, int64_t C, scalar_t* out) {
  for (int64_t c = 0; c < C; ++c) {
    acc_t acc = acc_t(0);
    for (int64_t n = 0; n < B; ++n) acc += partial[n * C + c];
    out[c] = static_cast<scalar_t>(acc);
  }
}

// ---- backward -------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> convblock_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& stats) {
  const char* op = "mtt_fast::convblock_backward";
  check_block(op, x, weight, bias, &stats);
  check_pooled(op, x, grad_y, "grad_y");
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, HW = H * W;
  at::Tensor gx = at::empty_like(x);
  at::Tensor gw = at::zeros_like(weight);
  at::Tensor gb = at::zeros_like(bias);
  if (B * C == 0) return std::make_tuple(gx, gw, gb);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pw = weight.const_data_ptr<scalar_t>();
    const scalar_t* pb = bias.const_data_ptr<scalar_t>();
    const scalar_t* ps = stats.const_data_ptr<scalar_t>();
    scalar_t* pgx = gx.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> part_w(B * C), part_b(B * C);
    at::parallel_for(0, B * C, grain_for(HW), [&](int64_t s0, int64_t s1) {
      std::vector<acc_t> abuf(HW + W);
      acc_t* a = abuf.data();
      acc_t* urow = a + HW;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t c = s % C;
        const acc_t mu = static_cast<acc_t>(ps[2 * s]), rstd = static_cast<acc_t>(ps[2 * s + 1]);
        const acc_t w = static_cast<acc_t>(pw[c]);
        const Affine<acc_t> af = affine_of<acc_t>(mu, rstd, w, static_cast<acc_t>(pb[c]));
        const scalar_t* xs = px + s * HW;
        masked_upstream<false, scalar_t, acc_t>(xs, pg + s * Ho * Wo, H, W, af, a, nullptr, urow);
        acc_t sums[2];
        lane_sums<acc_t, 2>(
            HW,
            [&](int64_t i, acc_t* v) {
              const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
              v[0] = a[i];
              v[1] = a[i] * xh;
            },
            sums);
        part_b[s] = sums[0];
        part_w[s] = sums[1];
        const BackwardCoefs<acc_t> k = backward_coefs<acc_t>(sums[0], sums[1], HW, w, rstd);
        scalar_t* gs = pgx + s * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
          gs[i] = static_cast<scalar_t>(k.c_a * a[i] + k.c_0 + k.c_x * xh);
        }
      }
    });
    sum_over_samples<scalar_t, acc_t>(part_w, B, C, gw.mutable_data_ptr<scalar_t>());
    sum_over_samples<scalar_t, acc_t>(part_b, B, C, gb.mutable_data_ptr<scalar_t>());
  });
  return std::make_tuple(gx, gw, gb);
}

// ---- double backward ------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> convblock_double_backward_cpu(
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
    TORCH_CHECK(r_x->sizes() == x.sizes(), op, ": r_x must be shaped like x ", x.sizes(),
                ", got ", r_x->sizes());
  }
  if (has_rw) {
    check_same(op, x, *r_weight, "r_weight");
    TORCH_CHECK(r_weight->sizes() == weight.sizes(), op, ": r_weight must be [C], got ",
                r_weight->sizes());
  }
  if (has_rb) {
    check_same(op, x, *r_bias, "r_bias");
    TORCH_CHECK(r_bias->sizes() == bias.sizes(), op, ": r_bias must be [C], got ",
                r_bias->sizes());
  }
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, HW = H * W;
  at::Tensor ggy = at::empty_like(grad_y);
  at::Tensor ggx = at::empty_like(x);
  at::Tensor ggw = at::zeros_like(weight);
  if (B * C == 0) return std::make_tuple(ggy, ggx, ggw);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convblock_double_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pw = weight.const_data_ptr<scalar_t>();
    const scalar_t* pb = bias.const_data_ptr<scalar_t>();
    const scalar_t* ps = stats.const_data_ptr<scalar_t>();
    const scalar_t* prx = has_rx ? r_x->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* prw = has_rw ? r_weight->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* prb = has_rb ? r_bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pggy = ggy.mutable_data_ptr<scalar_t>();
    scalar_t* pggx = ggx.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> part_w(B * C);
    at::parallel_for(0, B * C, grain_for(HW), [&](int64_t s0, int64_t s1) {
      std::vector<acc_t> buf(2 * HW + W);
      acc_t* a = buf.data();
      acc_t* m = a + HW;
      acc_t* t = m + HW;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t c = s % C;
        const acc_t mu = static_cast<acc_t>(ps[2 * s]), rstd = static_cast<acc_t>(ps[2 * s + 1]);
        const acc_t w = static_cast<acc_t>(pw[c]);
        const Affine<acc_t> af = affine_of<acc_t>(mu, rstd, w, static_cast<acc_t>(pb[c]));
        const scalar_t* xs = px + s * HW;
        const scalar_t* rs = has_rx ? prx + s * HW : nullptr;
        masked_upstream<true, scalar_t, acc_t>(xs, pg + s * Ho * Wo, H, W, af, a, m, t);
        DoubleSums<acc_t> sums{};
        if (rs != nullptr) {
          acc_t v5[5];
          lane_sums<acc_t, 5>(
              HW,
              [&](int64_t i, acc_t* v) {
                const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
                const acc_t r = static_cast<acc_t>(rs[i]);
                v[0] = a[i];
                v[1] = a[i] * xh;
                v[2] = r;
                v[3] = r * xh;
                v[4] = a[i] * r;
              },
              v5);
          sums = {v5[0], v5[1], v5[2], v5[3], v5[4]};
        } else {
          acc_t v2[2];
          lane_sums<acc_t, 2>(
              HW,
              [&](int64_t i, acc_t* v) {
                const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
                v[0] = a[i];
                v[1] = a[i] * xh;
              },
              v2);
          sums = {v2[0], v2[1], acc_t(0), acc_t(0), acc_t(0)};
        }
        const acc_t rw = prw != nullptr ? static_cast<acc_t>(prw[c]) : acc_t(0);
        const acc_t rb = prb != nullptr ? static_cast<acc_t>(prb[c]) : acc_t(0);
        const DoubleCoefs<acc_t> k = double_coefs<acc_t>(sums, HW, w, rstd, rw, rb);
        part_w[s] = k.gw_part;
        // ggx = q_a a + q_r Rx + q_0 + q_x xh
        scalar_t* gxs = pggx + s * HW;
        if (rs != nullptr) {
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
            gxs[i] = static_cast<scalar_t>(k.q_a * a[i] + k.q_r * static_cast<acc_t>(rs[i]) +
                                           k.q_0 + k.q_x * xh);
          }
        } else {
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t xh = (static_cast<acc_t>(xs[i]) - mu) * rstd;
            gxs[i] = static_cast<scalar_t>(k.q_a * a[i] + k.q_0 + k.q_x * xh);
          }
        }
        // ggy = avgpool2x2(m P), P = p_r Rx + p_x xh + p_0
        scalar_t* gys = pggy + s * Ho * Wo;
        for (int64_t io = 0; io < Ho; ++io) {
          for (int64_t j = 0; j < 2 * Wo; ++j) t[j] = acc_t(0);
          for (int64_t di = 0; di < 2; ++di) {
            const int64_t off = (2 * io + di) * W;
            const scalar_t* xr = xs + off;
            const acc_t* mr = m + off;
            if (rs != nullptr) {
              const scalar_t* rr = rs + off;
              for (int64_t j = 0; j < 2 * Wo; ++j) {
                const acc_t xh = (static_cast<acc_t>(xr[j]) - mu) * rstd;
                t[j] += mr[j] * (k.p_r * static_cast<acc_t>(rr[j]) + k.p_x * xh + k.p_0);
              }
            } else {
              for (int64_t j = 0; j < 2 * Wo; ++j) {
                const acc_t xh = (static_cast<acc_t>(xr[j]) - mu) * rstd;
                t[j] += mr[j] * (k.p_x * xh + k.p_0);
              }
            }
          }
          scalar_t* gr = gys + io * Wo;
          for (int64_t jo = 0; jo < Wo; ++jo) {
            gr[jo] = static_cast<scalar_t>(acc_t(0.25) * (t[2 * jo] + t[2 * jo + 1]));
          }
        }
      }
    });
    sum_over_samples<scalar_t, acc_t>(part_w, B, C, ggw.mutable_data_ptr<scalar_t>());
  });
  return std::make_tuple(ggy, ggx, ggw);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) {
  m.impl("convblock_forward", &convblock_forward_cpu);
  m.impl("convblock_backward", &convblock_backward_cpu);
  m.impl("convblock_double_backward", &convblock_double_backward_cpu);
}

}  // namespace block
}  // namespace mtt_fast
