// Fused ConvNet block: instance norm (GroupNorm(C, C), affine) -> ReLU -> 2x2 average pool,
// its backward and the backward's own backward. The per-slice formulas of both twins.
//
// Everything is per (sample n, channel c) slice of the conv output x [B, C, H, W]; over
// one slice of N = H W values (means are over the slice):
//
//   forward   mu = mean(x),  rstd = 1 / sqrt(mean((x - mu)^2) + eps)   (biased variance)
//             xh = (x - mu) rstd,  z = w xh + b,  r = relu(z),  m = [z > 0]
//             y  = avgpool2x2(r)  [B, C, H/2, W/2] (floor: an odd last row/column is dropped,
//                  as nn.AvgPool2d(2, 2) does). stats[n, c] = (mu, rstd) is saved with x.
//
//   backward  for the upstream gradient gy:  u = U(gy), the adjoint of the pool (u = gy/4
//             on each pixel of a window, 0 on a dropped row/column), a = m u (the ReLU).
//             A = mean(a), Bx = mean(a xh)
//             gx = w rstd (a - A - xh Bx)
//             gw[c] = sum_n N Bx,   gb[c] = sum_n N A.
//
//   double    the backward is (gy, x, w) -> (gx, gw, gb); for cotangents (Rx, Rw, Rb) of
//   backward  its outputs, the scalar s = <Rx, gx> + Rw.gw + Rb.gb is, per slice,
//             s = <a, P>  with  P = w rstd (Rx - Rm - xh Q) + Rw xh + Rb,
//             Rm = mean(Rx), Q = mean(Rx xh). The mask m is piecewise constant, so the
//             second derivatives come from the normalization alone (none w.r.t. b):
//   d s/d gy  = avgpool2x2(m P)                               (U^T = the pool)
//   d s/d w   = sum_n rstd N K,   K = mean(a Rx) - A Rm - Bx Q
//   d s/d x   : s depends on x through xh (via Bx, Q) and through rstd (explicitly):
//             G  = d s/d xh = ga a + gr Rx,  ga = Rw - w rstd Q,  gr = -w rstd Bx
//             d s/d rstd (explicit) = w N K, and d rstd/d x = -rstd^2 xh / N, so
//             ggx = rstd (G - mean(G) - xh mean(G xh)) - w K rstd^2 xh
//             with mean(G) = ga A + gr Rm, mean(G xh) = ga Bx + gr Q.
// The stats passed to the backward ops must be the forward's stats of the same x: their
// derivatives w.r.t. x are the total ones (through mu and rstd), and the stats input gets
// none.
//
// Every twin computes, per slice, a few sums (SliceSums), turns them into per-slice
// coefficients (the *_coefs functions below), then applies the per-pixel formulas.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace mtt_fast {
namespace block {

// Per-slice statistics from the sums S1 = sum(x - shift) and S2 = sum((x - mu)^2).
template <typename acc_t>
MTT_HOST_DEVICE inline acc_t rstd_of(acc_t sum_sq_dev, int64_t n, double eps) {
  const acc_t var = sum_sq_dev / static_cast<acc_t>(n);
#if defined(__CUDACC__) || defined(__HIPCC__)
  return ::rsqrt(var + static_cast<acc_t>(eps));
#else
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
#endif
}

// z = w xh + b with xh = (x - mu) rstd, written as z = alpha x + beta.
template <typename acc_t>
struct Affine {
  acc_t alpha, beta;
};

template <typename acc_t>
MTT_HOST_DEVICE inline Affine<acc_t> affine_of(acc_t mu, acc_t rstd, acc_t w, acc_t b) {
  return {w * rstd, b - w * rstd * mu};
}

template <typename acc_t>
MTT_HOST_DEVICE inline acc_t relu(acc_t z) {
  return z > acc_t(0) ? z : acc_t(0);
}

// ---- backward -------------------------------------------------------------------------
// gx = c_a a + c_0 + c_x xh, per slice.
template <typename acc_t>
struct BackwardCoefs {
  acc_t c_a, c_0, c_x;
};

// sum_a = sum(a), sum_ax = sum(a xh) over the slice of n values.
template <typename acc_t>
MTT_HOST_DEVICE inline BackwardCoefs<acc_t> backward_coefs(acc_t sum_a, acc_t sum_ax, int64_t n,
                                                           acc_t w, acc_t rstd) {
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
  const acc_t wr = w * rstd;
  return {wr, -wr * sum_a * inv_n, -wr * sum_ax * inv_n};
}

// ---- double backward ------------------------------------------------------------------
// The slice sums it needs: sum(a), sum(a xh), sum(Rx), sum(Rx xh), sum(a Rx).
template <typename acc_t>
struct DoubleSums {
  acc_t a, ax, r, rx, ar;
};

// Per slice:  P   = p_r Rx + p_x xh + p_0                 (ggy = avgpool(m P))
//             ggx = q_a a + q_r Rx + q_0 + q_x xh
//             ggw partial = gw_part (summed over samples)
template <typename acc_t>
struct DoubleCoefs {
  acc_t p_r, p_x, p_0;
  acc_t q_a, q_r, q_0, q_x;
  acc_t gw_part;
};

template <typename acc_t>
MTT_HOST_DEVICE inline DoubleCoefs<acc_t> double_coefs(const DoubleSums<acc_t>& s, int64_t n,
                                                       acc_t w, acc_t rstd, acc_t rw, acc_t rb) {
  const acc_t nn = static_cast<acc_t>(n);
  const acc_t inv_n = acc_t(1) / nn;
  const acc_t A = s.a * inv_n, Bx = s.ax * inv_n, Rm = s.r * inv_n, Q = s.rx * inv_n;
  const acc_t ARx = s.ar * inv_n;
  const acc_t wr = w * rstd;
  const acc_t K = ARx - A * Rm - Bx * Q;
  const acc_t ga = rw - wr * Q;
  const acc_t gr = -wr * Bx;
  const acc_t meanG = ga * A + gr * Rm;
  const acc_t meanGx = ga * Bx + gr * Q;
  DoubleCoefs<acc_t> c;
  c.p_r = wr;
  c.p_x = ga;  // rw - w rstd Q
  c.p_0 = rb - wr * Rm;
  c.q_a = rstd * ga;
  c.q_r = rstd * gr;
  c.q_0 = -rstd * meanG;
  c.q_x = -rstd * meanGx - w * K * rstd * rstd;
  c.gw_part = rstd * nn * K;
  return c;
}

// ---- argument checks (both twins) -----------------------------------------------------
inline void check_map(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be [B, C, H, W], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": only float32 and float64 are supported, got ", t.scalar_type(), " for ", name);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
}

inline void check_same(const char* op, const at::Tensor& ref, const at::Tensor& t,
                       const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but x has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but x is on ", ref.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
}

// x [B, C, H, W] with H, W >= 2; weight, bias [C]; stats (when defined) [B, C, 2].
inline void check_block(const char* op, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& bias, const at::Tensor* stats) {
  check_map(op, x, "x");
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, op,
              ": x must be at least 2x2 for the 2x2 pool, got shape ", x.sizes());
  check_same(op, x, weight, "weight");
  check_same(op, x, bias, "bias");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && bias.dim() == 1 &&
                  bias.size(0) == x.size(1),
              op, ": weight and bias must be [C] with C = ", x.size(1), ", got ",
              weight.sizes(), " and ", bias.sizes());
  if (stats != nullptr) {
    check_same(op, x, *stats, "stats");
    TORCH_CHECK(stats->dim() == 3 && stats->size(0) == x.size(0) && stats->size(1) == x.size(1) &&
                    stats->size(2) == 2,
                op, ": stats must be [B, C, 2] (mean, rstd) from convblock_forward, got ",
                stats->sizes());
  }
}

// A pooled map [B, C, H/2, W/2] (grad_y or the double backward's output).
inline void check_pooled(const char* op, const at::Tensor& x, const at::Tensor& t,
                         const char* name) {
  check_same(op, x, t, name);
  TORCH_CHECK(t.dim() == 4 && t.size(0) == x.size(0) && t.size(1) == x.size(1) &&
                  t.size(2) == x.size(2) / 2 && t.size(3) == x.size(3) / 2,
              op, ": ", name, " must be [B, C, H/2, W/2] = [", x.size(0), ", ", x.size(1), ", ",
              x.size(2) / 2, ", ", x.size(3) / 2, "], got ", t.sizes());
}

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(eps > 0.0, op, ": eps must be positive, got ", eps);
}

}  // namespace block
}  // namespace mtt_fast
