// The CPU twin's kernels (see dsa_cpu.cpp for what they compute and how); included by
// dsa_cpu.cpp only. Compiled for the build's baseline instruction set, without FMA
// contraction, so every value goes through dsa.h's sequence of roundings.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "dsa/dsa.h"

namespace mtt_fast {
namespace dsa {
namespace cpu {

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

// ---- row helpers ------------------------------------------------------------------------

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

// The CPU works on blocks of whole rows, about kBlockPixels pixels each (every row of a
// small image at once: with rows of a few dozen pixels, per-row loop overhead would cost as
// much as the pixels). Rows are contiguous, so a block is one span of n = rows * W pixels
// per channel, and the per-pixel loops run over the span.
constexpr int64_t kBlockPixels = 1024;

inline int64_t block_rows(int64_t H, int64_t W) {
  return std::max<int64_t>(1, std::min<int64_t>(H, kBlockPixels / std::max<int64_t>(W, 1)));
}

// Per-thread scratch: per block (L = block_rows * W pixels) unless said otherwise.
template <typename acc_t>
struct Scratch {
  int64_t rows, L;
  std::vector<int32_t> ji, ri;  // column and row (within the block) of each block pixel
  // general bilinear sampling of a block, on a zero-padded copy of the sample (see
  // bilinear_block): offset of the top-left tap in the padded plane, and the fractions
  std::vector<int32_t> off;
  std::vector<acc_t> fx, fy;
  std::vector<acc_t> pad;  // C (H + 3) (W + 3): the padded sample (forward) or its gradient
  // separable (axis-aligned) sampling: the column taps (W), the same for every row
  std::vector<int32_t> col0, col1;
  std::vector<acc_t> wcol0, wcol1;
  std::vector<acc_t> kappa;    // coverage
  std::vector<acc_t> keep;     // 1 outside the cutout box, 0 inside
  std::vector<acc_t> colkeep;  // W: the column test of a separable cutout frame (block_keep)
  std::vector<acc_t> aux;      // channel sums / color terms
  std::vector<acc_t> tmp;      // products to sum; the separable backward's row scatter (W)
  std::vector<acc_t> gv;       // C L: backward per-channel gradients of the sampled image
  Scratch(int64_t C, int64_t H, int64_t W)
      : rows(block_rows(H, W)), L(rows * W), ji(L), ri(L), off(L), fx(L), fy(L), col0(W),
        col1(W), wcol0(W), wcol1(W), kappa(L), keep(L), colkeep(W), aux(L), tmp(L),
        gv(C * L) {
    for (int64_t k = 0; k < L; ++k) {
      ji[k] = static_cast<int32_t>(k % W);
      ri[k] = static_cast<int32_t>(k / W);
    }
  }
};

// ---- bilinear sampling, the CPU's row-wise forms of bilinear_taps (dsa.h) ---------------
// Same coordinates, clamping, floor and weights as bilinear_taps, in int32 and laid out
// so the compiler can vectorize the loops (coordinates are clamped to [-1, W] x [-1, H],
// and dsa_forward_cpu checks that H * W fits in int32).

template <typename acc_t>
inline int32_t floor_i32(acc_t v) {
  const int32_t t = static_cast<int32_t>(v);  // truncates toward zero
  return t - static_cast<int32_t>(static_cast<acc_t>(t) > v);
}

// One axis of a tap: the two neighbours of coordinate v on an axis of n pixels, clamped
// into the frame, and their zero-padded weights. Written without branches (min/max,
// 0/1 factors) so the loops that call it vectorize; the values are bilinear_taps' ones.
template <typename acc_t>
inline void axis_taps(acc_t v, int32_t n, int32_t& i0, int32_t& i1, acc_t& w0, acc_t& w1) {
  v = std::min(std::max(v, acc_t(-1)), static_cast<acc_t>(n));
  const int32_t a = floor_i32<acc_t>(v);
  const acc_t f = v - static_cast<acc_t>(a);
  const int32_t b = a + 1;
  // in-frame tests as one unsigned compare each (a >= -1, so a < 0 wraps to a huge value)
  w0 = static_cast<acc_t>(static_cast<uint32_t>(a) < static_cast<uint32_t>(n)) * (acc_t(1) - f);
  w1 = static_cast<acc_t>(static_cast<uint32_t>(b) < static_cast<uint32_t>(n)) * f;
  i0 = std::min(std::max(a, int32_t(0)), n - 1);
  i1 = std::min(b, n - 1);  // b >= 0
}

// The sampling matrix keeps rows as rows and columns as columns (scale, flips, crops):
// bilinear sampling is then separable, with column taps shared by every row.
template <typename acc_t>
inline bool separable(const SampleParams<acc_t>& P) {
  return P.a[1] == acc_t(0) && P.a[3] == acc_t(0);
}

// Column taps of a separable map (input column = a0 j + a2; a1 = 0). The loop takes
// plain restrict pointers (not members) so that GCC vectorizes it.
template <typename acc_t>
void column_taps_loop(acc_t a0, acc_t a2, int32_t W, int32_t* __restrict__ c0,
                      int32_t* __restrict__ c1, acc_t* __restrict__ w0, acc_t* __restrict__ w1) {
  for (int32_t j = 0; j < W; ++j) {
    const acc_t cx = (a0 * static_cast<acc_t>(j) + acc_t(0)) + a2;
    axis_taps<acc_t>(cx, W, c0[j], c1[j], w0[j], w1[j]);
  }
}

template <typename acc_t>
void column_taps(const SampleParams<acc_t>& P, int32_t W, Scratch<acc_t>& s) {
  column_taps_loop<acc_t>(P.a[0], P.a[2], W, s.col0.data(), s.col1.data(), s.wcol0.data(),
                          s.wcol1.data());
}

// Row taps of a separable map for output row i (input row = a4 i + a5; a3 = 0).
template <typename acc_t>
struct RowAxis {
  int32_t r0, r1;  // input rows
  acc_t w0, w1;
};

template <typename acc_t>
RowAxis<acc_t> row_axis(const SampleParams<acc_t>& P, int64_t i, int32_t H) {
  RowAxis<acc_t> r;
  const acc_t cy = (acc_t(0) + P.a[4] * static_cast<acc_t>(i)) + P.a[5];
  axis_taps<acc_t>(cy, H, r.r0, r.r1, r.w0, r.w1);
  return r;
}

// General bilinear sampling (any 2x3 map) reads a zero-padded copy of each channel plane:
// one zero column/row before the frame and two after, Wp = W + 3, so that the four taps of
// every (clamped) point are in the buffer and need no validity test: a tap outside the
// frame reads (forward) or accumulates into (backward) the padding, which is bilinear_taps'
// zero weight. Per pixel: o = padded offset of the top-left tap, fx, fy the fractions;
//   v = (1 - fy) ((1 - fx) p[o] + fx p[o + 1]) + fy ((1 - fx) p[o + Wp] + fx p[o + Wp + 1]),
// bilinear_taps' sum in factored form. The coverage (color "before") is
// (wy0 + wy1) (wx0 + wx1) with bilinear_taps' zero-padded weights.
inline int64_t padded_width(int64_t W) { return W + 3; }
inline int64_t padded_plane(int64_t H, int64_t W) { return (H + 3) * (W + 3); }

template <typename acc_t, bool kWantKappa>
void bilinear_block_loop(acc_t a0, acc_t a1, acc_t a2, acc_t a3, acc_t a4, acc_t a5, int32_t i0,
                         int32_t H, int32_t W, int64_t n, const int32_t* __restrict__ ji,
                         const int32_t* __restrict__ ri, int32_t* __restrict__ off,
                         acc_t* __restrict__ fxs, acc_t* __restrict__ fys,
                         acc_t* __restrict__ kappa) {
  const int32_t Wp = W + 3;
  const acc_t fw = static_cast<acc_t>(W), fh = static_cast<acc_t>(H);
  const uint32_t uw = static_cast<uint32_t>(W), uh = static_cast<uint32_t>(H);
  for (int64_t k = 0; k < n; ++k) {
    const acc_t fj = static_cast<acc_t>(ji[k]), fi = static_cast<acc_t>(i0 + ri[k]);
    const acc_t cx = std::min(std::max((a0 * fj + a1 * fi) + a2, acc_t(-1)), fw);
    const acc_t cy = std::min(std::max((a3 * fj + a4 * fi) + a5, acc_t(-1)), fh);
    const int32_t x0 = floor_i32<acc_t>(cx), y0 = floor_i32<acc_t>(cy);
    const acc_t fx = cx - static_cast<acc_t>(x0), fy = cy - static_cast<acc_t>(y0);
    off[k] = (y0 + 1) * Wp + (x0 + 1);
    fxs[k] = fx;
    fys[k] = fy;
    if constexpr (kWantKappa) {  // axis_taps' zero-padded weights, summed per axis
      const acc_t wx = static_cast<acc_t>(static_cast<uint32_t>(x0) < uw) * (acc_t(1) - fx) +
                       static_cast<acc_t>(static_cast<uint32_t>(x0 + 1) < uw) * fx;
      const acc_t wy = static_cast<acc_t>(static_cast<uint32_t>(y0) < uh) * (acc_t(1) - fy) +
                       static_cast<acc_t>(static_cast<uint32_t>(y0 + 1) < uh) * fy;
      kappa[k] = wy * wx;
    }
  }
}

// The taps of the n pixels of the block that starts at row i0 (and their coverage when
// want_kappa), into s.off, s.fx, s.fy (s.kappa).
template <typename acc_t>
void bilinear_block(const SampleParams<acc_t>& P, int64_t i0, int64_t n, int32_t H, int32_t W,
                    bool want_kappa, Scratch<acc_t>& s) {
  const int32_t r0 = static_cast<int32_t>(i0);
  if (want_kappa) {
    bilinear_block_loop<acc_t, true>(P.a[0], P.a[1], P.a[2], P.a[3], P.a[4], P.a[5], r0, H, W, n,
                                     s.ji.data(), s.ri.data(), s.off.data(), s.fx.data(),
                                     s.fy.data(), s.kappa.data());
  } else {
    bilinear_block_loop<acc_t, false>(P.a[0], P.a[1], P.a[2], P.a[3], P.a[4], P.a[5], r0, H, W, n,
                                      s.ji.data(), s.ri.data(), s.off.data(), s.fx.data(),
                                      s.fy.data(), s.kappa.data());
  }
}

// The zero-padded copy of one sample's planes (forward of the general bilinear path).
template <typename scalar_t, typename acc_t>
void pad_sample(const scalar_t* x, int64_t C, int64_t H, int64_t W, Scratch<acc_t>& s) {
  const int64_t Wp = padded_width(W), P = padded_plane(H, W);
  s.pad.assign(static_cast<size_t>(C * P), acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t i = 0; i < H; ++i) {
      const scalar_t* src = x + (c * H + i) * W;
      acc_t* dst = s.pad.data() + c * P + (i + 1) * Wp + 1;
      for (int64_t j = 0; j < W; ++j) dst[j] = static_cast<acc_t>(src[j]);
    }
  }
}

// The four taps of n pixels of one channel from the padded plane p (row length Wp).
template <typename scalar_t, typename acc_t>
void gather_block(const acc_t* __restrict__ p, const int32_t* __restrict__ off,
                  const acc_t* __restrict__ fxs, const acc_t* __restrict__ fys, int64_t n,
                  int32_t Wp, scalar_t* __restrict__ y) {
  for (int64_t k = 0; k < n; ++k) {
    const acc_t* q = p + off[k];
    const acc_t fx = fxs[k], fy = fys[k];
    const acc_t top = (acc_t(1) - fx) * q[0] + fx * q[1];
    const acc_t bot = (acc_t(1) - fx) * q[Wp] + fx * q[Wp + 1];
    y[k] = static_cast<scalar_t>((acc_t(1) - fy) * top + fy * bot);
  }
}

// Its transpose: the padded gradient plane p += taps^T gv, one pass per tap column (tap
// o + 1 of pixel j is usually tap o of pixel j + 1: interleaved, every update would wait
// on the previous one through memory).
template <typename acc_t>
void scatter_padded_block(acc_t* p, const int32_t* __restrict__ off, const acc_t* __restrict__ fxs,
                          const acc_t* __restrict__ fys, const acc_t* __restrict__ gv, int64_t n,
                          int32_t Wp) {
  for (int64_t k = 0; k < n; ++k) {
    const acc_t g = (acc_t(1) - fxs[k]) * gv[k];
    p[off[k]] += (acc_t(1) - fys[k]) * g;
    p[off[k] + Wp] += fys[k] * g;
  }
  for (int64_t k = 0; k < n; ++k) {
    const acc_t g = fxs[k] * gv[k];
    p[off[k] + 1] += (acc_t(1) - fys[k]) * g;
    p[off[k] + Wp + 1] += fys[k] * g;
  }
}

// The cutout frame Q keeps rows as rows (flips, crops and scales after cutout, or none):
// then cutout_keep(i, j) = !(row i in the box && column j in the box) exactly (the other
// coordinate's term is a zero product), so the column test is done once per sample.
template <typename acc_t>
bool separable_cutout(const SampleParams<acc_t>& P) {
  return P.q[1] == acc_t(0) && P.q[3] == acc_t(0);
}

template <typename acc_t>
void column_keep(const SampleParams<acc_t>& P, int64_t W, Scratch<acc_t>& s) {
  for (int64_t j = 0; j < W; ++j) {  // cutout_keep's column test, its q1 term a zero product
    const acc_t c = static_cast<acc_t>(
        round_to_int<acc_t>(P.q[0] * static_cast<acc_t>(j) + P.q[1] * acc_t(0) + P.q[2]));
    s.colkeep[j] = (c >= P.box[2] && c < P.box[3]) ? acc_t(0) : acc_t(1);
  }
}

// The keep mask of the block of rows [i0, i1) (nullptr: no pixel of the block is cut):
// cutout_keep (dsa.h) per pixel, or, when `sep` (separable_cutout), its column test done
// once per sample by column_keep and its row test once per row.
template <typename acc_t>
const acc_t* block_keep(const SampleParams<acc_t>& P, bool sep, int64_t i0, int64_t i1, int64_t W,
                        Scratch<acc_t>& s) {
  acc_t* out = s.keep.data();
  bool any = false;
  for (int64_t i = i0; i < i1; ++i) {
    acc_t* row = out + (i - i0) * W;
    if (sep) {
      const acc_t r = static_cast<acc_t>(
          round_to_int<acc_t>(P.q[3] * acc_t(0) + P.q[4] * static_cast<acc_t>(i) + P.q[5]));
      const bool cut = r >= P.box[0] && r < P.box[1];
      if (cut) {
        std::copy(s.colkeep.begin(), s.colkeep.begin() + W, row);
      } else {
        std::fill(row, row + W, acc_t(1));
      }
      any = any || cut;
    } else {
      for (int64_t j = 0; j < W; ++j) {
        const bool k = cutout_keep<acc_t>(P, true, i, j);
        row[j] = k ? acc_t(1) : acc_t(0);
        any = any || !k;
      }
    }
  }
  return any ? out : nullptr;
}

// y of every channel over the n pixels of a block = (scale v + chan cm + cst kappa) * keep
// + nu noise, in place over the sampled block v (which may be x itself for the identity map).
template <typename scalar_t, typename acc_t>
void finish_block(const scalar_t* v, scalar_t* y, const scalar_t* noise, int64_t C, int64_t HW,
                  int64_t n, int color, const ColorCoefs<acc_t>& k, const acc_t* kappa,
                  const acc_t* keep, acc_t nu, acc_t* aux) {
  if (color != kColorNone) {
    const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
    for (int64_t j = 0; j < n; ++j) aux[j] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* vc = v + c * HW;
      for (int64_t j = 0; j < n; ++j) aux[j] += static_cast<acc_t>(vc[j]);
    }
    // aux = chan cm + cst kappa  (color_value with v = 0)
    for (int64_t j = 0; j < n; ++j) {
      aux[j] = color_value<acc_t>(k, acc_t(0), aux[j] * inv_c,
                                  kappa != nullptr ? kappa[j] : acc_t(1));
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* vc = v + c * HW;
    scalar_t* yc = y + c * HW;
    const scalar_t* nc = noise != nullptr ? noise + c * HW : nullptr;
    if (color != kColorNone) {
      if (keep != nullptr) {
        for (int64_t j = 0; j < n; ++j) {
          yc[j] = static_cast<scalar_t>((k.scale * static_cast<acc_t>(vc[j]) + aux[j]) * keep[j]);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          yc[j] = static_cast<scalar_t>(k.scale * static_cast<acc_t>(vc[j]) + aux[j]);
        }
      }
    } else if (keep != nullptr) {
      for (int64_t j = 0; j < n; ++j) {
        yc[j] = static_cast<scalar_t>(static_cast<acc_t>(vc[j]) * keep[j]);
      }
    } else if (yc != vc) {
      std::copy(vc, vc + n, yc);
    }
    if (nc != nullptr) {
      for (int64_t j = 0; j < n; ++j) {
        yc[j] = static_cast<scalar_t>(static_cast<acc_t>(yc[j]) + nu * static_cast<acc_t>(nc[j]));
      }
    }
  }
}

// The sampled rows [i0, i1) of every channel (v = y rows, stride HW) for geometry !=
// identity, and their coverage in s.kappa when `want_kappa`. Integer and separable maps
// work row by row (their taps are per row and per column); the general map per pixel.
template <typename scalar_t, typename acc_t>
void sample_block(const SampleParams<acc_t>& P, int geom, bool sep, const scalar_t* x,
                  scalar_t* y, int64_t i0, int64_t i1, int64_t C, int32_t H, int32_t W,
                  bool want_kappa, Scratch<acc_t>& s) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  IntRow r;
  if (geom == kGeomInteger && integer_row<acc_t>(P, i0, H, W, r)) {
    for (int64_t i = i0; i < i1; ++i) {
      integer_row<acc_t>(P, i, H, W, r);
      for (int64_t c = 0; c < C; ++c) {
        scalar_t* yc = y + c * HW + i * W;
        if (r.j1 <= r.j0) {
          std::fill(yc, yc + W, scalar_t(0));
          continue;
        }
        std::fill(yc, yc + r.j0, scalar_t(0));
        std::fill(yc + r.j1, yc + W, scalar_t(0));
        const scalar_t* src = x + c * HW + r.sy * W + r.base;
        if (r.dir > 0) {
          for (int64_t j = r.j0; j < r.j1; ++j) yc[j] = src[j];
        } else {
          for (int64_t j = r.j0; j < r.j1; ++j) yc[j] = src[-j];
        }
      }
      if (want_kappa) {
        acc_t* kappa = s.kappa.data() + (i - i0) * W;
        std::fill(kappa, kappa + W, acc_t(0));
        for (int64_t j = r.j0; j < r.j1; ++j) kappa[j] = acc_t(1);
      }
    }
    return;
  }
  if (sep) {  // bilinear (or an exact integer map), axis-aligned
    const int32_t* c0 = s.col0.data();
    const int32_t* c1 = s.col1.data();
    const acc_t* w0 = s.wcol0.data();
    const acc_t* w1 = s.wcol1.data();
    for (int64_t i = i0; i < i1; ++i) {
      const RowAxis<acc_t> ry = row_axis<acc_t>(P, i, H);
      for (int64_t c = 0; c < C; ++c) {
        scalar_t* yc = y + c * HW + i * W;
        const scalar_t* ra = x + c * HW + static_cast<int64_t>(ry.r0) * W;
        const scalar_t* rb = x + c * HW + static_cast<int64_t>(ry.r1) * W;
        for (int32_t j = 0; j < W; ++j) {
          const acc_t top = w0[j] * static_cast<acc_t>(ra[c0[j]]) + w1[j] * static_cast<acc_t>(ra[c1[j]]);
          const acc_t bot = w0[j] * static_cast<acc_t>(rb[c0[j]]) + w1[j] * static_cast<acc_t>(rb[c1[j]]);
          yc[j] = static_cast<scalar_t>(ry.w0 * top + ry.w1 * bot);
        }
      }
      if (want_kappa) {
        acc_t* kappa = s.kappa.data() + (i - i0) * W;
        const acc_t wy = ry.w0 + ry.w1;
        for (int32_t j = 0; j < W; ++j) kappa[j] = wy * (w0[j] + w1[j]);
      }
    }
    return;
  }
  const int64_t n = (i1 - i0) * W;
  bilinear_block<acc_t>(P, i0, n, H, W, want_kappa, s);
  const int64_t PP = padded_plane(H, W);
  const int32_t Wp = static_cast<int32_t>(padded_width(W));
  for (int64_t c = 0; c < C; ++c) {
    gather_block<scalar_t, acc_t>(s.pad.data() + c * PP, s.off.data(), s.fx.data(), s.fy.data(),
                                  n, Wp, y + c * HW + i0 * W);
  }
}

// The transpose of sample_block for one row of one channel, integer and separable maps: gx
// (the channel's plane) += taps^T gv (the integer map writes: each input pixel is read by at
// most one output pixel). The general map uses scatter_padded_block.
template <typename scalar_t, typename acc_t>
void scatter_row(int kind, const IntRow& r, const RowAxis<acc_t>& ry, const acc_t* gv,
                 scalar_t* gxc, int32_t W, Scratch<acc_t>& s) {
  if (kind == 1) {  // integer map
    scalar_t* dst = gxc + r.sy * W + r.base;
    if (r.dir > 0) {
      for (int64_t j = r.j0; j < r.j1; ++j) dst[j] = static_cast<scalar_t>(gv[j]);
    } else {
      for (int64_t j = r.j0; j < r.j1; ++j) dst[-j] = static_cast<scalar_t>(gv[j]);
    }
    return;
  }
  if (kind == 2) {  // separable: scatter along the row once, then into the two input rows
    acc_t* t = s.tmp.data();
    std::fill(t, t + W, acc_t(0));
    const int32_t* c0 = s.col0.data();
    const int32_t* c1 = s.col1.data();
    const acc_t* w0 = s.wcol0.data();
    const acc_t* w1 = s.wcol1.data();
    // one pass per tap: tap 1 of pixel j is usually tap 0 of pixel j + 1, so interleaving
    // them would chain every update to the previous one through memory
    for (int32_t j = 0; j < W; ++j) t[c0[j]] += w0[j] * gv[j];
    for (int32_t j = 0; j < W; ++j) t[c1[j]] += w1[j] * gv[j];
    scalar_t* ra = gxc + static_cast<int64_t>(ry.r0) * W;
    scalar_t* rb = gxc + static_cast<int64_t>(ry.r1) * W;
    for (int32_t j = 0; j < W; ++j) ra[j] = static_cast<scalar_t>(static_cast<acc_t>(ra[j]) + ry.w0 * t[j]);
    for (int32_t j = 0; j < W; ++j) rb[j] = static_cast<scalar_t>(static_cast<acc_t>(rb[j]) + ry.w1 * t[j]);
    return;
  }
  TORCH_INTERNAL_ASSERT(false, "scatter_row: the general bilinear map scatters into the padded buffer");
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
  const int32_t H32 = static_cast<int32_t>(H), W32 = static_cast<int32_t>(W);
  const bool sep = geom != kGeomIdentity && separable<acc_t>(P);
  if (sep) column_taps<acc_t>(P, W32, s);
  if (geom != kGeomIdentity && !sep) pad_sample<scalar_t, acc_t>(x, C, H, W, s);
  const bool sep_cut = cutout && separable_cutout<acc_t>(P);
  if (sep_cut) column_keep<acc_t>(P, W, s);

  double mu = 0.0;
  if (color == kColorBefore) {
    mu = sum_values<scalar_t>(x, N) / static_cast<double>(N);
  }
  ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, static_cast<acc_t>(mu));
  const bool two_pass = (color == kColorAfter);
  double sum_v = 0.0;
  for (int64_t i0 = 0; i0 < H; i0 += s.rows) {
    const int64_t i1 = std::min(H, i0 + s.rows), n = (i1 - i0) * W, base = i0 * W;
    const scalar_t* v = y + base;  // the sampled block (all channels), stride HW
    const acc_t* kappa = nullptr;
    if (geom == kGeomIdentity) {
      v = x + base;
    } else {
      sample_block<scalar_t, acc_t>(P, geom, sep, x, y, i0, i1, C, H32, W32,
                                    color == kColorBefore, s);
      if (color == kColorBefore) kappa = s.kappa.data();
    }
    if (two_pass) {
      if (geom != kGeomIdentity) {
        for (int64_t c = 0; c < C; ++c) sum_v += sum_values<scalar_t>(v + c * HW, n);
      }
      continue;
    }
    const acc_t* keep = cutout ? block_keep<acc_t>(P, sep_cut, i0, i1, W, s) : nullptr;
    finish_block<scalar_t, acc_t>(v, y + base, noise != nullptr ? noise + base : nullptr, C, HW,
                                  n, color, k, kappa, keep, P.noise, s.aux.data());
  }
  if (!two_pass) return;
  if (geom == kGeomIdentity) sum_v = sum_values<scalar_t>(x, N);
  // color "after": about the mean of the sampled image
  k = color_coefs<acc_t>(P, color, static_cast<acc_t>(sum_v / static_cast<double>(N)));
  for (int64_t i0 = 0; i0 < H; i0 += s.rows) {
    const int64_t i1 = std::min(H, i0 + s.rows), n = (i1 - i0) * W, base = i0 * W;
    const acc_t* keep = cutout ? block_keep<acc_t>(P, sep_cut, i0, i1, W, s) : nullptr;
    const scalar_t* v = (geom == kGeomIdentity ? x : y) + base;
    finish_block<scalar_t, acc_t>(v, y + base, noise != nullptr ? noise + base : nullptr, C, HW,
                                  n, color, k, nullptr, keep, P.noise, s.aux.data());
  }
}

template <typename scalar_t>
void backward_sample(const scalar_t* g, const scalar_t* prm, scalar_t* gx, int64_t C, int64_t H,
                     int64_t W, int64_t flags, Scratch<at::opmath_type<scalar_t>>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  // the identity map writes gv straight into grad_x (acc_t is scalar_t: float, double)
  static_assert(std::is_same_v<acc_t, scalar_t>, "the CPU twin computes in the input dtype");
  const SampleParams<acc_t> P = load_params<scalar_t, acc_t>(prm);
  const int geom = geom_of(flags), color = color_of(flags);
  const bool cutout = (flags & kFlagCutout) != 0;
  const int64_t HW = H * W, N = C * HW;
  const int32_t H32 = static_cast<int32_t>(H), W32 = static_cast<int32_t>(W);
  const ColorCoefs<acc_t> k = color_coefs<acc_t>(P, color, acc_t(0));
  const acc_t chan_over_c = k.chan / static_cast<acc_t>(C);
  const bool sep = geom != kGeomIdentity && separable<acc_t>(P);
  IntRow r{0, 1, 0, 0, 0};
  // 0 identity, 1 integer row map, 2 separable, 3 general bilinear (the same for every row)
  const int kind = geom == kGeomIdentity                                       ? 0
                   : (geom == kGeomInteger && integer_row<acc_t>(P, 0, H, W, r)) ? 1
                   : sep                                                         ? 2
                                                                                 : 3;
  if (kind == 2) column_taps<acc_t>(P, W32, s);
  const int64_t PP = padded_plane(H, W);
  const int32_t Wp = static_cast<int32_t>(padded_width(W));
  if (kind == 3) s.pad.assign(static_cast<size_t>(C * PP), acc_t(0));  // accumulates there
  const bool sep_cut = cutout && separable_cutout<acc_t>(P);
  if (sep_cut) column_keep<acc_t>(P, W, s);
  acc_t* sum_h = s.aux.data();

  // color "after": S = sum of keep * g over the sample, before anything else
  acc_t in_v = acc_t(0), in_x = acc_t(0);
  if (color == kColorAfter) {
    double S = 0.0;
    if (cutout) {
      for (int64_t i0 = 0; i0 < H; i0 += s.rows) {
        const int64_t i1 = std::min(H, i0 + s.rows), n = (i1 - i0) * W, base = i0 * W;
        const acc_t* keep = block_keep<acc_t>(P, sep_cut, i0, i1, W, s);
        if (keep == nullptr) {
          for (int64_t c = 0; c < C; ++c) S += sum_values<scalar_t>(g + c * HW + base, n);
          continue;
        }
        for (int64_t e = 0; e < n; ++e) sum_h[e] = acc_t(0);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* gc = g + c * HW + base;
          for (int64_t e = 0; e < n; ++e) sum_h[e] += keep[e] * static_cast<acc_t>(gc[e]);
        }
        S += sum_values<acc_t>(sum_h, n);
      }
    } else {
      S = sum_values<scalar_t>(g, N);
    }
    uniform_terms<acc_t>(P, color, S, N, in_v, in_x);
  }
  // gx starts at zero where the sampling scatters into it (the integer map writes each input
  // pixel it reads; the others are 0)
  if (kind == 1 || kind == 2) std::fill(gx, gx + N, scalar_t(0));
  double S_before = 0.0;
  for (int64_t i0 = 0; i0 < H; i0 += s.rows) {
    const int64_t i1 = std::min(H, i0 + s.rows), n = (i1 - i0) * W, base = i0 * W;
    const acc_t* kappa = nullptr;
    if (kind == 2 && color == kColorBefore) {
      for (int64_t i = i0; i < i1; ++i) {
        const RowAxis<acc_t> ry = row_axis<acc_t>(P, i, H32);
        const acc_t wy = ry.w0 + ry.w1;
        acc_t* kr = s.kappa.data() + (i - i0) * W;
        for (int32_t j = 0; j < W32; ++j) kr[j] = wy * (s.wcol0[j] + s.wcol1[j]);
      }
      kappa = s.kappa.data();
    } else if (kind == 3) {
      bilinear_block<acc_t>(P, i0, n, H32, W32, color == kColorBefore, s);
      kappa = s.kappa.data();
    }
    const acc_t* keep = cutout ? block_keep<acc_t>(P, sep_cut, i0, i1, W, s) : nullptr;
    // gv = grad_v(h) with h = keep * g (keep == nullptr: every pixel kept)
    if (color != kColorNone) {
      for (int64_t e = 0; e < n; ++e) sum_h[e] = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* gc = g + c * HW + base;
        for (int64_t e = 0; e < n; ++e) sum_h[e] += static_cast<acc_t>(gc[e]);
      }
      if (keep != nullptr) {
        for (int64_t e = 0; e < n; ++e) sum_h[e] *= keep[e];
      }
      if (color == kColorBefore) {
        if (kind == 0) {
          S_before += sum_values<acc_t>(sum_h, n);
        } else if (kind == 1) {  // the pixels whose tap is in the frame (coverage 1)
          for (int64_t i = i0; i < i1; ++i) {
            integer_row<acc_t>(P, i, H, W, r);
            S_before += sum_values<acc_t>(sum_h + (i - i0) * W + r.j0, r.j1 - r.j0);
          }
        } else {
          acc_t* t = s.tmp.data();
          for (int64_t e = 0; e < n; ++e) t[e] = sum_h[e] * kappa[e];
          S_before += sum_values<acc_t>(t, n);  // four accumulators: no serial add chain
        }
      }
      for (int64_t e = 0; e < n; ++e) sum_h[e] *= chan_over_c;
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* gc = g + c * HW + base;
      acc_t* gv = kind == 0 ? gx + c * HW + base : s.gv.data() + c * s.L;
      if (color == kColorNone && keep == nullptr) {
        for (int64_t e = 0; e < n; ++e) gv[e] = static_cast<acc_t>(gc[e]) * k.scale;
      } else {
        for (int64_t e = 0; e < n; ++e) {
          const acc_t h = keep != nullptr ? keep[e] * static_cast<acc_t>(gc[e]) : static_cast<acc_t>(gc[e]);
          gv[e] = grad_v<acc_t>(k, h, color != kColorNone ? sum_h[e] : acc_t(0), in_v);
        }
      }
      if (kind == 3) {
        scatter_padded_block<acc_t>(s.pad.data() + c * PP, s.off.data(), s.fx.data(), s.fy.data(),
                                    gv, n, Wp);
      } else if (kind != 0) {
        RowAxis<acc_t> ry{0, 0, acc_t(0), acc_t(0)};
        for (int64_t i = i0; i < i1; ++i) {
          if (kind == 1) {
            integer_row<acc_t>(P, i, H, W, r);
          } else {
            ry = row_axis<acc_t>(P, i, H32);
          }
          scatter_row<scalar_t, acc_t>(kind, r, ry, gv + (i - i0) * W, gx + c * HW, W32, s);
        }
      }
    }
  }
  if (color == kColorBefore) uniform_terms<acc_t>(P, color, S_before, N, in_v, in_x);
  if (kind == 3) {  // the frame of the padded gradient (+ the uniform term, in the same pass)
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < H; ++i) {
        const acc_t* src = s.pad.data() + c * PP + (i + 1) * Wp + 1;
        scalar_t* dst = gx + c * HW + i * W;
        for (int64_t j = 0; j < W; ++j) dst[j] = static_cast<scalar_t>(src[j] + in_x);
      }
    }
  } else if (color == kColorBefore) {
    for (int64_t e = 0; e < N; ++e) gx[e] = static_cast<scalar_t>(static_cast<acc_t>(gx[e]) + in_x);
  }
}

// ---- batch entry points (at::parallel_for over samples, per-thread scratch) ------------

template <typename scalar_t>
void forward_batch(const scalar_t* x, const scalar_t* prm, const scalar_t* noise, scalar_t* y,
                   int64_t B, int64_t C, int64_t H, int64_t W, int64_t flags) {
  const int64_t N = C * H * W;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<at::opmath_type<scalar_t>> scratch(C, H, W);
    for (int64_t b = begin; b < end; ++b) {
      forward_sample<scalar_t>(x + b * N, prm + b * kNumParams,
                               noise == nullptr ? nullptr : noise + b * N, y + b * N, C, H, W,
                               flags, scratch);
    }
  });
}

template <typename scalar_t>
void backward_batch(const scalar_t* g, const scalar_t* prm, scalar_t* gx, int64_t B, int64_t C,
                    int64_t H, int64_t W, int64_t flags) {
  const int64_t N = C * H * W;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<at::opmath_type<scalar_t>> scratch(C, H, W);
    for (int64_t b = begin; b < end; ++b) {
      backward_sample<scalar_t>(g + b * N, prm + b * kNumParams, gx + b * N, C, H, W, flags,
                                scratch);
    }
  });
}

}  // namespace cpu
}  // namespace dsa
}  // namespace mtt_fast
