// dsa_pack: sampled DSA parameters -> the fused op's [B, 20] parameter tensor, on the host.
//
// The C++ twin of mtt_fast.augment.fused.pack_reference (the spec, in float64 torch ops):
// the same composition of the geometric ops into one sampling matrix, the same cutout
// frame and box, in one pass over the batch instead of a few dozen tiny tensor operations
// (which cost more than the augmentation itself on small batches).
//
// Geometry: each geometric op is a map from output to input pixel coordinates (2x3, last
// row 0 0 1): flip j -> W - 1 - j; crop (i, j) -> (i + dy, j + dx); scale and rotate
// U theta N with N the pixel -> normalized map of align_corners=True and U its inverse
// (0 on a size-1 axis). The ops applied in strategy order give A = P_1 P_2 ... P_n;
// Q is the product of the geometric ops after cutout.
//
// Host only: every tensor must be on the CPU (the library samples DSA parameters there
// when the fused op is used); the result is a CPU tensor of `dtype`.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "dsa/dsa.h"

namespace mtt_fast {
namespace dsa {
namespace {

// op codes of dsa_pack's `ops` argument (mirror: mtt_fast/augment/fused.py OP_CODES)
constexpr int64_t kOpColor = 0, kOpCrop = 1, kOpCutout = 2, kOpFlip = 3, kOpScale = 4,
                  kOpRotate = 5, kOpNoise = 6;

// A 2x3 affine map (last row 0 0 1), row-major.
struct Affine {
  double m[6];
};

Affine identity() { return Affine{{1.0, 0.0, 0.0, 0.0, 1.0, 0.0}}; }

// a @ b for 3x3 matrices with last row 0 0 1
Affine compose(const Affine& a, const Affine& b) {
  Affine c;
  for (int r = 0; r < 2; ++r) {
    const double* x = a.m + 3 * r;
    c.m[3 * r + 0] = x[0] * b.m[0] + x[1] * b.m[3];
    c.m[3 * r + 1] = x[0] * b.m[1] + x[1] * b.m[4];
    c.m[3 * r + 2] = (x[0] * b.m[2] + x[1] * b.m[5]) + x[2];
  }
  return c;
}

// Values of a CPU tensor as doubles (any real or bool dtype), checked for numel.
std::vector<double> values(const std::optional<at::Tensor>& t, const char* name, int64_t numel,
                           const char* what) {
  TORCH_CHECK(t.has_value() && t->defined(), "mtt_fast::dsa_pack: ops include ", what,
              " but ", name, " is missing");
  TORCH_CHECK(t->device().is_cpu(), "mtt_fast::dsa_pack: ", name,
              " must be on the CPU (sample the parameters there), got ", t->device());
  TORCH_CHECK(t->numel() == numel, "mtt_fast::dsa_pack: ", name, " must have ", numel,
              " elements, got shape ", t->sizes());
  const at::Tensor c = t->contiguous();
  std::vector<double> out(static_cast<size_t>(numel));
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, c.scalar_type(),
                             "dsa_pack", [&] {
                               const scalar_t* p = c.const_data_ptr<scalar_t>();
                               for (int64_t k = 0; k < numel; ++k) {
                                 out[static_cast<size_t>(k)] = static_cast<double>(p[k]);
                               }
                             });
  return out;
}

at::Tensor dsa_pack(at::IntArrayRef ops, at::IntArrayRef shape,
                    const std::optional<at::Tensor>& theta_scale,
                    const std::optional<at::Tensor>& theta_rot,
                    const std::optional<at::Tensor>& flip,
                    const std::optional<at::Tensor>& brightness,
                    const std::optional<at::Tensor>& saturation,
                    const std::optional<at::Tensor>& contrast,
                    const std::optional<at::Tensor>& crop_shift,
                    const std::optional<at::Tensor>& cutout_center,
                    const std::optional<at::Tensor>& cutout_size, at::ScalarType dtype) {
  TORCH_CHECK(shape.size() == 4 && shape[0] >= 0 && shape[2] >= 1 && shape[3] >= 1,
              "mtt_fast::dsa_pack: shape must be [B, C, H, W], got ", shape);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "mtt_fast::dsa_pack: dtype must be float32 or float64, got ", dtype);
  const int64_t B = shape[0], H = shape[2], W = shape[3];
  for (const int64_t op : ops) {
    TORCH_CHECK(op >= kOpColor && op <= kOpNoise, "mtt_fast::dsa_pack: unknown op code ", op);
  }

  // per-size constants: pixel -> normalized (align_corners=True) and back
  const double nw = W > 1 ? 2.0 / static_cast<double>(W - 1) : 0.0, ow = W > 1 ? -1.0 : 0.0;
  const double nh = H > 1 ? 2.0 / static_cast<double>(H - 1) : 0.0, oh = H > 1 ? -1.0 : 0.0;
  const double uw = static_cast<double>(W - 1) / 2.0, uh = static_cast<double>(H - 1) / 2.0;

  auto has = [&](int64_t code) {
    for (const int64_t op : ops) {
      if (op == code) return true;
    }
    return false;
  };
  std::vector<double> sc, rot, fl, br, sat, con, crop, center, size;
  if (has(kOpScale)) sc = values(theta_scale, "theta_scale", 6 * B, "scale");
  if (has(kOpRotate)) rot = values(theta_rot, "theta_rot", 6 * B, "rotate");
  if (has(kOpFlip)) fl = values(flip, "flip", B, "flip");
  if (has(kOpColor)) {
    br = values(brightness, "brightness", B, "color");
    sat = values(saturation, "saturation", B, "color");
    con = values(contrast, "contrast", B, "color");
  }
  if (has(kOpCrop)) crop = values(crop_shift, "crop_shift", 2 * B, "crop");
  if (has(kOpCutout)) {
    center = values(cutout_center, "cutout_center", 2 * B, "cutout");
    size = values(cutout_size, "cutout_size", 2, "cutout");
  }
  int64_t cutout_pos = -1;
  for (size_t k = 0; k < ops.size(); ++k) {
    if (ops[k] == kOpCutout) {
      cutout_pos = static_cast<int64_t>(k);
      break;
    }
  }

  at::Tensor out = at::empty({B, kNumParams}, at::TensorOptions().dtype(dtype));
  std::vector<double> row(kNumParams);
  AT_DISPATCH_FLOATING_TYPES(dtype, "dsa_pack", [&] {
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      Affine a = identity(), q = identity();
      for (size_t k = 0; k < ops.size(); ++k) {
        const int64_t op = ops[k];
        Affine m;
        if (op == kOpFlip) {
          m = identity();
          if (fl[b] != 0.0) {
            m.m[0] = -1.0;
            m.m[2] = static_cast<double>(W - 1);
          }
        } else if (op == kOpCrop) {
          m = identity();
          m.m[2] = crop[2 * b + 1];  // column shift
          m.m[5] = crop[2 * b];      // row shift
        } else if (op == kOpScale || op == kOpRotate) {
          const double* t = (op == kOpScale ? sc.data() : rot.data()) + 6 * b;
          // U theta, then (U theta) N
          const double ut[6] = {uw * t[0], uw * t[1], uw * t[2] + uw,
                                uh * t[3], uh * t[4], uh * t[5] + uh};
          for (int r = 0; r < 2; ++r) {
            m.m[3 * r + 0] = ut[3 * r] * nw;
            m.m[3 * r + 1] = ut[3 * r + 1] * nh;
            m.m[3 * r + 2] = (ut[3 * r] * ow + ut[3 * r + 1] * oh) + ut[3 * r + 2];
          }
        } else {
          continue;  // color, cutout, noise: not geometric
        }
        a = compose(a, m);
        if (cutout_pos >= 0 && static_cast<int64_t>(k) > cutout_pos) q = compose(q, m);
      }
      std::fill(row.begin(), row.end(), 0.0);
      for (int k = 0; k < 6; ++k) row[kA + k] = a.m[k];
      if (!br.empty()) {
        row[kBright] = br[b];
        row[kSat] = sat[b];
        row[kContrast] = con[b];
      }
      if (cutout_pos >= 0) {
        for (int k = 0; k < 6; ++k) row[kQ + k] = q.m[k];
        const double r0 = center[2 * b] - std::floor(size[0] / 2.0);
        const double c0 = center[2 * b + 1] - std::floor(size[1] / 2.0);
        row[kBoxRow0] = r0;
        row[kBoxRow1] = r0 + size[0];
        row[kBoxCol0] = c0;
        row[kBoxCol1] = c0 + size[1];
      }
      if (has(kOpNoise)) row[kNoise] = 1.0;
      for (int k = 0; k < kNumParams; ++k) po[b * kNumParams + k] = static_cast<scalar_t>(row[k]);
    }
  });
  return out;
}

}  // namespace

// CompositeExplicitAutograd: one host kernel for every backend key, and callable with no
// tensor arguments at all (a noise-only strategy has none).
TORCH_LIBRARY_IMPL(mtt_fast, CompositeExplicitAutograd, m) { m.impl("dsa_pack", &dsa_pack); }

}  // namespace dsa
}  // namespace mtt_fast
