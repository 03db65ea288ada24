// CPU twin of the fused DSA op: at::parallel_for over samples.
//
// Each sample is computed by one thread, sequentially, with its reductions (image means,
// backward sums) accumulated in double in a fixed order, and the backward's transposed
// sampling scattered into that sample's own slice of grad_x: the result is bit-identical
// for any number of threads. The per-pixel math is in dsa.h (shared with the CUDA twin).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "dsa/dsa.h"

namespace mtt_fast {
namespace dsa {
namespace {

// Sum of n values in double, with four independent accumulators (a fixed order: the
// result does not depend on the thread count).
template <typename scalar_t>
double sum_values(const scalar_t* v, int64_t n) {
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  int64_t e = 0;
  for (; e + 4 <= n; e += 4) {
    a0 += static_cast<double>(v[e]);
    a1 += static_cast<double>(v[e + 1]);
    a2 += static_cast<double>(v[e + 2]);
    a3 += static_cast<double>(v[e + 3]);
  }
  for (; e < n; ++e) a0 += static_cast<double>(v[e]);
  return (a0 + a1) + (a2 + a3);
}

// ---- row helpers (the CPU works a row at a time so the channel loops vectorize) -------

// Integer maps (flips and crops): col = dir * j + base, row = sy, for j in [j0, j1).
struct IntRow {
  int64_t sy, dir, base, j0, j1;
};

template <typename acc_t>
bool integer_row(const SampleParams<acc_t>& P, int64_t i, int64_t H, int64_t W, IntRow& r) {
  if (!(P.a[1] == acc_t(0) && P.a[3] == acc_t(0) && (P.a[0] == acc_t(1) || P.a[0] == acc_t(-1)))) {
    return false;  // not a row-preserving map: take the per-pixel path
  }
  r.sy = round_to_int<acc_t>(P.a[4] * static_cast<acc_t>(i) + P.a[5]);
  r.dir = P.a[0] > acc_t(0) ? 1 : -1;
  r.base = round_to_int<acc_t>(P.a[2]);
  if (r.sy < 0 || r.sy >= H) {
    r.j0 = r.j1 = 0;
  } else if (r.dir > 0) {  // 0 <= base + j < W
    r.j0 = std::max<int64_t>(0, -r.base);
    r.j1 = std::min<int64_t>(W, W - r.base);
  } else {  // 0 <= base - j < W
    r.j0 = std::max<int64_t>(0, r.base - W + 1);
    r.j1 = std::min<int64_t>(W, r.base + 1);
  }
  if (r.j1 < r.j0) r.j1 = r.j0;
  return true;
}

// Per-thread scratch, one row (or one row per channel) long.
template <typename acc_t>
struct Scratch {
  std::vector<int64_t> off;  // 4 W: bilinear tap offsets (unused taps: offset 0, weight 0)
  std::vector<acc_t> w;      // 4 W
  std::vector<acc_t> kappa;  // W: coverage
  std::vector<acc_t> keep;   // W: 1 outside the cutout box, 0 inside
  std::vector<acc_t> aux;    // W: channel sums / color terms
  std::vector<acc_t> gv;     // C W: backward per-channel gradients of the sampled image
  Scratch(int64_t C, int64_t W)
      : off(4 * W), w(4 * W), kappa(W), keep(W), aux(W), gv(C * W) {}
};

// Taps of every pixel of row i (bilinear), from bilinear_taps (dsa.h).
template <typename acc_t>
void bilinear_row(const SampleParams<acc_t>& P, int64_t i, int64_t H, int64_t W,
                  Scratch<acc_t>& s) {
  int64_t* off = s.off.data();
  acc_t* w = s.w.data();
  for (int64_t j = 0; j < W; ++j) {
    bilinear_taps<acc_t>(P, i, j, H, W, off + 4 * j, w + 4 * j);
    s.kappa[j] = ((w[4 * j] + w[4 * j + 1]) + w[4 * j + 2]) + w[4 * j + 3];
  }
}

// keep[j] for row i, from cutout_keep (dsa.h). Where Q keeps rows as rows (flips, crops,
// scales after cutout) the box meets the row in one interval: only pixels near it are
// evaluated one by one.
template <typename acc_t>
void keep_row(const SampleParams<acc_t>& P, int64_t i, int64_t W, acc_t* keep) {
  std::fill(keep, keep + W, acc_t(1));
  int64_t lo = 0, hi = W;
  if (P.q[1] == acc_t(0) && P.q[3] == acc_t(0) && P.q[0] != acc_t(0)) {
    const int64_t r = round_to_int<acc_t>(P.q[4] * static_cast<acc_t>(i) + P.q[5]);
    if (static_cast<acc_t>(r) < P.box[0] || static_cast<acc_t>(r) >= P.box[1]) return;
    // inside iff box2 - 1/2 <= q0 j + q2 < box3 - 1/2; widen by one pixel each side
    const double t1 = (static_cast<double>(P.box[2]) - 0.5 - P.q[2]) / P.q[0];
    const double t2 = (static_cast<double>(P.box[3]) - 0.5 - P.q[2]) / P.q[0];
    const double a = std::min(t1, t2), b = std::max(t1, t2);
    if (!(b > -2.0 && a < static_cast<double>(W) + 2.0)) return;
    lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(std::max(a, -2.0))) - 1);
    hi = std::min<int64_t>(W, static_cast<int64_t>(std::ceil(std::min(b, W + 2.0))) + 1);
  }
  for (int64_t j = lo; j < hi; ++j) keep[j] = cutout_keep<acc_t>(P, true, i, j) ? acc_t(1) : acc_t(0);
}

// y row of every channel = (scale v + chan cm + cst kappa) * keep + nu noise, in place
// over the sampled rows v (which may be x itself for the identity map).
template <typename scalar_t, typename acc_t>
void finish_row(const scalar_t* v, scalar_t* y, const scalar_t* noise, int64_t C, int64_t HW,
                int64_t W, int color, const ColorCoefs<acc_t>& k, const acc_t* kappa,
                const acc_t* keep, acc_t nu, acc_t* aux) {
  if (color != kColorNone) {
    const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
    for (int64_t j = 0; j < W; ++j) aux[j] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* vc = v + c * HW;
      for (int64_t j = 0; j < W; ++j) aux[j] += static_cast<acc_t>(vc[j]);
    }
    // aux = chan cm + cst kappa  (color_value with v = 0)
    for (int64_t j = 0; j < W; ++j) {
      aux[j] = color_value<acc_t>(k, acc_t(0), aux[j] * inv_c,
                                  kappa != nullptr ? kappa[j] : acc_t(1));
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* vc = v + c * HW;
    scalar_t* yc = y + c * HW;
    const scalar_t* nc = noise != nullptr ? noise + c * HW : nullptr;
    if (color != kColorNone) {
      for (int64_t j = 0; j < W; ++j) {
        yc[j] = static_cast<scalar_t>(k.scale * static_cast<acc_t>(vc[j]) + aux[j]);
      }
    } else if (yc != vc) {
      std::copy(vc, vc + W, yc);
    }
    if (keep != nullptr) {
      for (int64_t j = 0; j < W; ++j) yc[j] = static_cast<scalar_t>(static_cast<acc_t>(yc[j]) * keep[j]);
    }
    if (nc != nullptr) {
      for (int64_t j = 0; j < W; ++j) {
        yc[j] = static_cast<scalar_t>(static_cast<acc_t>(yc[j]) + nu * static_cast<acc_t>(nc[j]));
      }
    }
  }
}

template <typename scalar_t>
void forward_sample(const scalar_t* x, const scalar_t* prm, const scalar_t* noise, scalar_t* y,
                    int64_t C, int64_t H, int64_t W, int64_t flags,
                    Scratch<at::opmath_type<scalar_t>>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm);
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  const int64_t HW = H * W, N = C * HW;

  double mu = 0.0;
  if (color == kColorBefore) {
    mu = sum_values<scalar_t>(x, N) / static_cast<double>(N);
  }
  ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, static_cast<acc_t>(mu));
  const bool two_pass = (color == kColorAfter);
  double sum_v = 0.0;
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t* v = y + i * W;  // the sampled row (all channels), stride HW
    const acc_t* kappa = nullptr;
    if (geom == kGeomIdentity) {
      v = x + i * W;
    } else {
      IntRow r;
      const bool fast = geom == kGeomInteger && integer_row<acc_t>(P, i, H, W, r);
      if (!fast) bilinear_row<acc_t>(P, i, H, W, s);  // also the exact integer fallback
      for (int64_t c = 0; c < C; ++c) {
        scalar_t* yc = y + c * HW + i * W;
        if (fast) {
          std::fill(yc, yc + W, scalar_t(0));
          if (r.j1 <= r.j0) continue;
          const scalar_t* src = x + c * HW + r.sy * W + r.base;
          if (r.dir > 0) {
            for (int64_t j = r.j0; j < r.j1; ++j) yc[j] = src[j];
          } else {
            for (int64_t j = r.j0; j < r.j1; ++j) yc[j] = src[-j];
          }
        } else {
          const scalar_t* xc = x + c * HW;
          const int64_t* o = s.off.data();
          const acc_t* w = s.w.data();
          for (int64_t j = 0; j < W; ++j) {
            yc[j] = static_cast<scalar_t>(
                w[4 * j] * static_cast<acc_t>(xc[o[4 * j]]) +
                w[4 * j + 1] * static_cast<acc_t>(xc[o[4 * j + 1]]) +
                w[4 * j + 2] * static_cast<acc_t>(xc[o[4 * j + 2]]) +
                w[4 * j + 3] * static_cast<acc_t>(xc[o[4 * j + 3]]));
          }
        }
      }
      if (color == kColorBefore) {
        if (fast) {
          std::fill(s.kappa.begin(), s.kappa.end(), acc_t(0));
          for (int64_t j = r.j0; j < r.j1; ++j) s.kappa[j] = acc_t(1);
        }
        kappa = s.kappa.data();
      }
    }
    if (two_pass) {
      if (geom != kGeomIdentity) {
        for (int64_t c = 0; c < C; ++c) sum_v += sum_values<scalar_t>(v + c * HW, W);
      }
      continue;
    }
    const acc_t* keep = nullptr;
    if (cutout) {
      keep_row<acc_t>(P, i, W, s.keep.data());
      keep = s.keep.data();
    }
    finish_row<scalar_t, acc_t>(v, y + i * W, noise != nullptr ? noise + i * W : nullptr, C, HW,
                                W, color, k, kappa, keep, P.noise, s.aux.data());
  }
  if (!two_pass) return;
  if (geom == kGeomIdentity) sum_v = sum_values<scalar_t>(x, N);
  // color "after": about the mean of the sampled image
  k = color_coefs<acc_t>(P, color, static_cast<acc_t>(sum_v / static_cast<double>(N)));
  for (int64_t i = 0; i < H; ++i) {
    const acc_t* keep = nullptr;
    if (cutout) {
      keep_row<acc_t>(P, i, W, s.keep.data());
      keep = s.keep.data();
    }
    const scalar_t* v = (geom == kGeomIdentity ? x : y) + i * W;
    finish_row<scalar_t, acc_t>(v, y + i * W, noise != nullptr ? noise + i * W : nullptr, C, HW, W, color, k,
                                nullptr, keep, P.noise, s.aux.data());
  }
}

template <typename scalar_t>
void backward_sample(const scalar_t* g, const scalar_t* prm, scalar_t* gx, int64_t C, int64_t H,
                     int64_t W, int64_t flags, Scratch<at::opmath_type<scalar_t>>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm);
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  const int64_t HW = H * W, N = C * HW;
  const ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, acc_t(0));
  const acc_t chan_over_c = k.chan / static_cast<acc_t>(C);
  acc_t* keep = s.keep.data();
  acc_t* sum_h = s.aux.data();

  // color "after": S = sum of keep * g over the sample, before anything else
  acc_t in_v = acc_t(0), in_x = acc_t(0);
  if (color == kColorAfter) {
    double S = 0.0;
    for (int64_t i = 0; i < H; ++i) {
      if (cutout) keep_row<acc_t>(P, i, W, keep);
      if (!cutout) continue;
      for (int64_t j = 0; j < W; ++j) sum_h[j] = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* gc = g + c * HW + i * W;
        for (int64_t j = 0; j < W; ++j) sum_h[j] += keep[j] * static_cast<acc_t>(gc[j]);
      }
      S += sum_values<acc_t>(sum_h, W);
    }
    if (!cutout) S = sum_values<scalar_t>(g, N);
    uniform_terms<acc_t>(P, color, S, N, in_v, in_x);
  }
  if (geom != kGeomIdentity) std::fill(gx, gx + N, scalar_t(0));
  double S_before = 0.0;
  for (int64_t i = 0; i < H; ++i) {
    IntRow r;
    const bool fast = geom == kGeomInteger && integer_row<acc_t>(P, i, H, W, r);
    const bool bilinear = geom != kGeomIdentity && !fast;
    if (bilinear) bilinear_row<acc_t>(P, i, H, W, s);
    if (cutout) keep_row<acc_t>(P, i, W, keep);
    // gv = grad_v(h) with h = keep * g
    if (color != kColorNone) {
      for (int64_t j = 0; j < W; ++j) sum_h[j] = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* gc = g + c * HW + i * W;
        for (int64_t j = 0; j < W; ++j) sum_h[j] += static_cast<acc_t>(gc[j]);
      }
      if (cutout) {
        for (int64_t j = 0; j < W; ++j) sum_h[j] *= keep[j];
      }
      if (color == kColorBefore) {
        if (geom == kGeomIdentity) {
          for (int64_t j = 0; j < W; ++j) S_before += static_cast<double>(sum_h[j]);
        } else if (fast) {
          for (int64_t j = r.j0; j < r.j1; ++j) S_before += static_cast<double>(sum_h[j]);
        } else {
          for (int64_t j = 0; j < W; ++j) S_before += static_cast<double>(sum_h[j] * s.kappa[j]);
        }
      }
      for (int64_t j = 0; j < W; ++j) sum_h[j] *= chan_over_c;
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* gc = g + c * HW + i * W;
      acc_t* gv = s.gv.data() + c * W;
      for (int64_t j = 0; j < W; ++j) {
        const acc_t h = cutout ? keep[j] * static_cast<acc_t>(gc[j]) : static_cast<acc_t>(gc[j]);
        gv[j] = grad_v<acc_t>(k, h, color != kColorNone ? sum_h[j] : acc_t(0), in_v);
      }
      scalar_t* gxc = gx + c * HW;
      if (geom == kGeomIdentity) {
        for (int64_t j = 0; j < W; ++j) gxc[i * W + j] = static_cast<scalar_t>(gv[j]);
      } else if (fast) {
        scalar_t* dst = gxc + r.sy * W + r.base;
        if (r.dir > 0) {
          for (int64_t j = r.j0; j < r.j1; ++j) dst[j] = static_cast<scalar_t>(gv[j]);
        } else {
          for (int64_t j = r.j0; j < r.j1; ++j) dst[-j] = static_cast<scalar_t>(gv[j]);
        }
      } else {
        const int64_t* o = s.off.data();
        const acc_t* w = s.w.data();
        for (int64_t j = 0; j < W; ++j) {
          for (int n = 0; n < 4; ++n) {
            scalar_t& dst = gxc[o[4 * j + n]];
            dst = static_cast<scalar_t>(static_cast<acc_t>(dst) + w[4 * j + n] * gv[j]);
          }
        }
      }
    }
  }
  if (color == kColorBefore) {
    uniform_terms<acc_t>(P, color, S_before, N, in_v, in_x);
    for (int64_t e = 0; e < N; ++e) gx[e] = static_cast<scalar_t>(static_cast<acc_t>(gx[e]) + in_x);
  }
}

void check_common(const char* op, const at::Tensor& x, const at::Tensor& params, int64_t flags,
                  const char* xname) {
  check_flags(op, flags);
  check_images(op, x, params, xname);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
}

at::Tensor dsa_forward_cpu(const at::Tensor& x, const at::Tensor& params,
                           const std::optional<at::Tensor>& noise, int64_t flags) {
  const char* op = "mtt_fast::dsa_forward";
  check_common(op, x, params, flags, "x");
  check_noise(op, x, noise, flags);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (x.numel() == 0) return y;
  const bool with_noise = (flags & kFlagNoise) != 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_forward_cpu", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    const scalar_t* pn = with_noise ? noise->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const int64_t N = C * H * W;
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Scratch<at::opmath_type<scalar_t>> scratch(C, W);
      for (int64_t b = begin; b < end; ++b) {
        forward_sample<scalar_t>(px + b * N, pp + b * kNumParams,
                                 pn == nullptr ? nullptr : pn + b * N, py + b * N, C, H, W,
                                 flags, scratch);
      }
    });
  });
  return y;
}

at::Tensor dsa_backward_cpu(const at::Tensor& grad_y, const at::Tensor& params, int64_t flags) {
  const char* op = "mtt_fast::dsa_backward";
  check_common(op, grad_y, params, flags, "grad_y");
  at::Tensor gx = at::empty_like(grad_y, at::MemoryFormat::Contiguous);
  const int64_t B = grad_y.size(0), C = grad_y.size(1), H = grad_y.size(2), W = grad_y.size(3);
  if (grad_y.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "dsa_backward_cpu", [&] {
    const scalar_t* pg = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    scalar_t* pgx = gx.mutable_data_ptr<scalar_t>();
    const int64_t N = C * H * W;
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Scratch<at::opmath_type<scalar_t>> scratch(C, W);
      for (int64_t b = begin; b < end; ++b) {
        backward_sample<scalar_t>(pg + b * N, pp + b * kNumParams, pgx + b * N, C, H, W, flags,
                                  scratch);
      }
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) {
  m.impl("dsa_forward", &dsa_forward_cpu);
  m.impl("dsa_backward", &dsa_backward_cpu);
}

}  // namespace dsa
}  // namespace mtt_fast
