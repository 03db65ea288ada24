// Fused Differentiable Siamese Augmentation (DSA): the per-pixel math of both twins.
//
// For one sample of images x [C, H, W] the op computes, per output pixel p = (i, j)
// (row i, column j) and channel k:
//
//   taps:   the input pixels that output pixel p reads, with weights w_t:
//           geometry 0 (identity): one tap, p itself, weight 1;
//           geometry 1 (integer map: flips and an integer crop): one tap, the input pixel
//             A p (exact integers), if it lies inside the frame;
//           geometry 2 (bilinear): the 4 neighbours of the real point A p with bilinear
//             weights, each kept only if inside the frame (zero padding), which is
//             grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True).
//   v_k   = sum_t w_t x_k(t)              (the sampled image)
//   kappa = sum_t w_t                     (coverage: 1 inside the frame, 0 outside)
//   cm    = (1 / C) sum_k v_k             (the per-pixel channel mean)
//   color = c s v_k + c (1 - s) cm + ((1 - c) mu + b) * (kappa if color "before" else 1)
//           which is brightness b, then saturation s about the channel mean, then
//           contrast c about the image mean, in closed form (see mtt_fast/ops/dsa.py);
//           mu = the mean of x over (C, H, W) (color "before" the sampling) or of v
//           (color "after" it);
//   y_k   = keep(p) * color + nu * noise_k(p)
//           keep(p) = 0 when the point Q p, rounded to the nearest pixel, is in the cutout
//           box, else 1.
//
// A (2x3) maps output pixel coordinates (column j, row i, 1) to input pixel coordinates:
//   col_in = a00 j + a01 i + a02,  row_in = a10 j + a11 i + a12.
// Q (2x3) maps them to the frame the cutout box is defined in, the same way.
//
// The op is affine in x, so its backward (the transpose of the linear part) is
//   h_k   = keep(p) g_k(p)
//   gv_k  = c s h_k + c (1 - s) / C sum_k' h_k' + [color "after"]  (1 - c) / N sum_all h
//   gx_k(t) += w_t gv_k        for each tap t of p,
//   gx    += [color "before"] (1 - c) / N sum_all(kappa h)    (every element, uniformly)
// with N = C H W. The per-sample sums are the only reductions.
//
// Packed per-sample parameters: a [B, kNumParams] tensor of x's dtype, layout below.
// Structural switches common to the whole batch are the int `flags` argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace mtt_fast {
namespace dsa {

// ---- the packed parameter layout: its one definition ---------------------------------
// Every user of the [B, kNumParams] tensor names these (dsa_pack.cpp writes it, load_params
// reads it); mtt_fast/ops/dsa.py has the same names for Python (IDX_*, and the flags
// below without the k), and tests/ops/test_dsa_layout.py parses this block and checks
// that every constant here has its Python twin with the same value.
constexpr int kA = 0;          // 6 values: a00 a01 a02 a10 a11 a12 (sampling matrix)
constexpr int kBright = 6;     // brightness offset b
constexpr int kSat = 7;        // saturation factor s
constexpr int kContrast = 8;   // contrast factor c
constexpr int kQ = 9;          // 6 values: output pixel -> cutout frame (same form as A)
constexpr int kBoxRow0 = 15;   // cutout box: rows [row0, row1), columns [col0, col1)
constexpr int kBoxRow1 = 16;
constexpr int kBoxCol0 = 17;
constexpr int kBoxCol1 = 18;
constexpr int kNoise = 19;     // noise multiplier nu
constexpr int kNumParams = 20;

// ---- flags ---------------------------------------------------------------------------
constexpr int64_t kGeomMask = 3;        // bits 0-1: 0 identity, 1 integer map, 2 bilinear
constexpr int64_t kGeomIdentity = 0;
constexpr int64_t kGeomInteger = 1;
constexpr int64_t kGeomBilinear = 2;
constexpr int64_t kColorShift = 2;      // bits 2-3: 0 none, 1 after sampling, 2 before
constexpr int64_t kColorMask = 3;       // (flags >> kColorShift) & kColorMask
constexpr int64_t kColorNone = 0;
constexpr int64_t kColorAfter = 1;
constexpr int64_t kColorBefore = 2;
constexpr int64_t kFlagCutout = 16;     // bit 4
constexpr int64_t kFlagNoise = 32;      // bit 5
constexpr int64_t kFlagsAll = 63;
// ---- end of the layout ---------------------------------------------------------------

static_assert(kA == 0 && kBright == kA + 6 && kSat == kBright + 1 && kContrast == kSat + 1 &&
                  kQ == kContrast + 1 && kBoxRow0 == kQ + 6 && kBoxRow1 == kBoxRow0 + 1 &&
                  kBoxCol0 == kBoxRow1 + 1 && kBoxCol1 == kBoxCol0 + 1 &&
                  kNoise == kBoxCol1 + 1 && kNumParams == kNoise + 1,
              "the packed layout: one slot per value, no gaps, no overlaps");

MTT_HOST_DEVICE inline int geom_of(int64_t flags) { return static_cast<int>(flags & kGeomMask); }
MTT_HOST_DEVICE inline int color_of(int64_t flags) {
  return static_cast<int>((flags >> kColorShift) & kColorMask);
}

// The per-sample parameters, in the compute type.
template <typename acc_t>
struct SampleParams {
  acc_t a[6];
  acc_t bright, sat, contrast;
  acc_t q[6];
  acc_t box[4];  // row0, row1, col0, col1
  acc_t noise;
};

template <typename scalar_t, typename acc_t>
MTT_HOST_DEVICE inline SampleParams<acc_t> load_params(const scalar_t* p) {
  SampleParams<acc_t> s;
  for (int k = 0; k < 6; ++k) s.a[k] = static_cast<acc_t>(p[kA + k]);
  s.bright = static_cast<acc_t>(p[kBright]);
  s.sat = static_cast<acc_t>(p[kSat]);
  s.contrast = static_cast<acc_t>(p[kContrast]);
  for (int k = 0; k < 6; ++k) s.q[k] = static_cast<acc_t>(p[kQ + k]);
  s.box[0] = static_cast<acc_t>(p[kBoxRow0]);
  s.box[1] = static_cast<acc_t>(p[kBoxRow1]);
  s.box[2] = static_cast<acc_t>(p[kBoxCol0]);
  s.box[3] = static_cast<acc_t>(p[kBoxCol1]);
  s.noise = static_cast<acc_t>(p[kNoise]);
  return s;
}

// The input pixels one output pixel reads: plane offsets (row * W + col) and weights.
template <typename acc_t>
struct Taps {
  int64_t off[4];
  acc_t w[4];
  int n;
};

// floor(v) as an integer, for finite v well inside the int64 range (coordinates here are
// within a few image sizes). Branch-free and inline: ::floor is a library call on CPUs
// compiled for baseline x86-64.
template <typename acc_t>
MTT_HOST_DEVICE inline int64_t floor_to_int(acc_t v) {
  const int64_t t = static_cast<int64_t>(v);  // truncates toward zero
  return t - static_cast<int64_t>(static_cast<acc_t>(t) > v);
}

template <typename acc_t>
MTT_HOST_DEVICE inline int64_t round_to_int(acc_t v) {
  return floor_to_int<acc_t>(v + static_cast<acc_t>(0.5));
}

// The 4 bilinear taps of output pixel (i, j), branch-free: a tap outside the H x W frame
// gets weight 0 and an offset clamped into the frame (zero padding; it reads a valid
// pixel and contributes 0 * value). Tap order: (y0, x0), (y0, x0+1), (y0+1, x0),
// (y0+1, x0+1).
template <typename acc_t>
MTT_HOST_DEVICE inline void bilinear_taps(const SampleParams<acc_t>& P, int64_t i, int64_t j,
                                          int64_t H, int64_t W, int64_t* off, acc_t* w) {
  const acc_t fj = static_cast<acc_t>(j), fi = static_cast<acc_t>(i);
  acc_t cx = P.a[0] * fj + P.a[1] * fi + P.a[2];  // input column
  acc_t cy = P.a[3] * fj + P.a[4] * fi + P.a[5];  // input row
  // points beyond one pixel outside the frame read nothing either way: clamp them so the
  // integer conversion stays defined
  cx = cx < acc_t(-1) ? acc_t(-1) : (cx > static_cast<acc_t>(W) ? static_cast<acc_t>(W) : cx);
  cy = cy < acc_t(-1) ? acc_t(-1) : (cy > static_cast<acc_t>(H) ? static_cast<acc_t>(H) : cy);
  const int64_t x0 = floor_to_int<acc_t>(cx), y0 = floor_to_int<acc_t>(cy);
  const acc_t fx = cx - static_cast<acc_t>(x0), fy = cy - static_cast<acc_t>(y0);
  const int64_t x1 = x0 + 1, y1 = y0 + 1;
  const acc_t wx0 = (x0 >= 0 && x0 < W) ? acc_t(1) - fx : acc_t(0);
  const acc_t wx1 = (x1 >= 0 && x1 < W) ? fx : acc_t(0);
  const acc_t wy0 = (y0 >= 0 && y0 < H) ? acc_t(1) - fy : acc_t(0);
  const acc_t wy1 = (y1 >= 0 && y1 < H) ? fy : acc_t(0);
  const int64_t xa = x0 < 0 ? 0 : (x0 >= W ? W - 1 : x0);
  const int64_t xb = x1 < 0 ? 0 : (x1 >= W ? W - 1 : x1);
  const int64_t ya = (y0 < 0 ? 0 : (y0 >= H ? H - 1 : y0)) * W;
  const int64_t yb = (y1 < 0 ? 0 : (y1 >= H ? H - 1 : y1)) * W;
  off[0] = ya + xa;
  off[1] = ya + xb;
  off[2] = yb + xa;
  off[3] = yb + xb;
  w[0] = wy0 * wx0;
  w[1] = wy0 * wx1;
  w[2] = wy1 * wx0;
  w[3] = wy1 * wx1;
}

// Fills t with the taps of output pixel (i, j) for an H x W frame.
template <typename acc_t>
MTT_HOST_DEVICE inline void make_taps(const SampleParams<acc_t>& P, int geom, int64_t i,
                                      int64_t j, int64_t H, int64_t W, Taps<acc_t>& t) {
  t.n = 0;
  if (geom == kGeomIdentity) {
    t.off[0] = i * W + j;
    t.w[0] = acc_t(1);
    t.n = 1;
    return;
  }
  const acc_t fj = static_cast<acc_t>(j), fi = static_cast<acc_t>(i);
  const acc_t cx = P.a[0] * fj + P.a[1] * fi + P.a[2];  // input column
  const acc_t cy = P.a[3] * fj + P.a[4] * fi + P.a[5];  // input row
  if (geom == kGeomInteger) {
    const int64_t sx = round_to_int(cx), sy = round_to_int(cy);
    if (sx >= 0 && sx < W && sy >= 0 && sy < H) {
      t.off[0] = sy * W + sx;
      t.w[0] = acc_t(1);
      t.n = 1;
    }
    return;
  }
  bilinear_taps<acc_t>(P, i, j, H, W, t.off, t.w);
  t.n = 4;
}

template <typename acc_t>
MTT_HOST_DEVICE inline acc_t coverage(const Taps<acc_t>& t) {
  acc_t k = acc_t(0);
  for (int n = 0; n < t.n; ++n) k += t.w[n];
  return k;
}

// 1 where output pixel (i, j) survives the cutout, 0 inside the box.
template <typename acc_t>
MTT_HOST_DEVICE inline bool cutout_keep(const SampleParams<acc_t>& P, bool cutout, int64_t i,
                                        int64_t j) {
  if (!cutout) return true;
  const acc_t fj = static_cast<acc_t>(j), fi = static_cast<acc_t>(i);
  const int64_t c = round_to_int<acc_t>(P.q[0] * fj + P.q[1] * fi + P.q[2]);
  const int64_t r = round_to_int<acc_t>(P.q[3] * fj + P.q[4] * fi + P.q[5]);
  const bool inside = static_cast<acc_t>(r) >= P.box[0] && static_cast<acc_t>(r) < P.box[1] &&
                      static_cast<acc_t>(c) >= P.box[2] && static_cast<acc_t>(c) < P.box[3];
  return !inside;
}

// color = scale * v_k + chan * cm + cst * (use_cov ? kappa : 1)
template <typename acc_t>
struct ColorCoefs {
  acc_t scale, chan, cst;
  bool use_cov;
};

template <typename acc_t>
MTT_HOST_DEVICE inline ColorCoefs<acc_t> color_coefs(const SampleParams<acc_t>& P, int color,
                                                     acc_t mu) {
  ColorCoefs<acc_t> k;
  if (color == kColorNone) {
    k.scale = acc_t(1);
    k.chan = acc_t(0);
    k.cst = acc_t(0);
    k.use_cov = false;
    return k;
  }
  k.scale = P.contrast * P.sat;
  k.chan = P.contrast * (acc_t(1) - P.sat);
  k.cst = (acc_t(1) - P.contrast) * mu + P.bright;
  k.use_cov = (color == kColorBefore);
  return k;
}

template <typename acc_t>
MTT_HOST_DEVICE inline acc_t color_value(const ColorCoefs<acc_t>& k, acc_t v, acc_t cm,
                                         acc_t kappa) {
  return k.scale * v + k.chan * cm + k.cst * (k.use_cov ? kappa : acc_t(1));
}

// Backward: gv_k = scale * h_k + chan / C * sum_h + uniform
template <typename acc_t>
MTT_HOST_DEVICE inline acc_t grad_v(const ColorCoefs<acc_t>& k, acc_t h, acc_t chan_sum_h,
                                    acc_t uniform) {
  return k.scale * h + chan_sum_h + uniform;
}

// The per-sample uniform terms of the backward, from S = the per-sample sum the backward
// reduces (sum of h for color "after", sum of kappa * h for color "before"):
//   in_v: added to every gv (color "after"); in_x: added to every gx (color "before").
template <typename acc_t>
MTT_HOST_DEVICE inline void uniform_terms(const SampleParams<acc_t>& P, int color, double S,
                                          int64_t N, acc_t& in_v, acc_t& in_x) {
  in_v = acc_t(0);
  in_x = acc_t(0);
  if (color == kColorNone) return;
  const acc_t u = static_cast<acc_t>((1.0 - static_cast<double>(P.contrast)) * S /
                                     static_cast<double>(N));
  if (color == kColorAfter) in_v = u;
  else in_x = u;
}

// ---- host-side checks shared by both twins ----------------------------------------------
inline void check_flags(const char* op, int64_t flags) {
  TORCH_CHECK(flags >= 0 && flags <= kFlagsAll && geom_of(flags) <= kGeomBilinear &&
                  color_of(flags) <= kColorBefore,
              op, ": invalid flags ", flags);
}

inline void check_images(const char* op, const at::Tensor& x, const at::Tensor& params,
                         const char* xname) {
  TORCH_CHECK(x.dim() == 4, op, ": ", xname, " must be images [B, C, H, W], got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": only float32 and float64 are supported, got ", x.scalar_type());
  TORCH_CHECK(params.dim() == 2 && params.size(0) == x.size(0) && params.size(1) == kNumParams,
              op, ": params must be [B, ", kNumParams, "] with B = ", x.size(0), ", got shape ",
              params.sizes());
  TORCH_CHECK(params.scalar_type() == x.scalar_type(), op, ": params dtype ",
              params.scalar_type(), " does not match ", xname, "'s ", x.scalar_type());
  TORCH_CHECK(params.device() == x.device(), op, ": params is on ", params.device(),
              " but ", xname, " is on ", x.device());
  TORCH_CHECK(x.is_contiguous() && params.is_contiguous(), op, ": ", xname,
              " and params must be contiguous (call .contiguous())");
}

inline void check_noise(const char* op, const at::Tensor& x,
                        const std::optional<at::Tensor>& noise, int64_t flags) {
  if (!(flags & kFlagNoise)) return;
  TORCH_CHECK(noise.has_value() && noise->defined(), op,
              ": flags ask for noise but no noise tensor was given");
  TORCH_CHECK(noise->sizes() == x.sizes(), op, ": noise must have the shape of x ", x.sizes(),
              ", got ", noise->sizes());
  TORCH_CHECK(noise->scalar_type() == x.scalar_type() && noise->device() == x.device(), op,
              ": noise must have x's dtype and device");
  TORCH_CHECK(noise->is_contiguous(), op, ": noise must be contiguous");
}

}  // namespace dsa
}  // namespace mtt_fast
