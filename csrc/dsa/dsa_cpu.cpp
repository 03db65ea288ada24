// CPU twin of the fused DSA op: at::parallel_for over samples.
//
// Each sample is computed by one thread, sequentially, with its reductions (image means,
// backward sums) accumulated in double in a fixed order, and the backward's transposed
// sampling scattered into that sample's own slice of grad_x: the result is bit-identical
// for any number of threads. The per-pixel math is dsa.h's (shared with the CUDA twin),
// computed on blocks of whole rows (about 1024 pixels: all of a small image at once) in
// forms the compiler vectorizes. The general form is
//   any map (rotation, and what the others do not cover): bilinear on a zero-padded copy
//     of the sample (no validity tests per tap), per pixel of the block, the backward
//     accumulating into a padded buffer; cutout: dsa.h's cutout_keep per pixel;
//   color, cutout mask and noise: per pixel of the block;
// and three specialised forms are kept because each makes the mode "S" call that uses it
// (the MTT default) much faster on a 2-core x86-64 CPU (fused forward + backward, one
// thread, 256x3x32x32 and 100x1x28x28; benchmarks/bench_dsa.py's groups):
//   integer maps (flips, crops): row copies (about 2x faster than the separable form);
//   axis-aligned bilinear maps (scale, with flips and crops): separable, column taps once
//     per sample, two input rows per output row (1.5-1.7x faster than the general form);
//   a cutout frame that keeps rows as rows (cutout with no rotation after it): the column
//     test once per sample and the row test once per row (3-4x faster than per pixel).
// These forms equal dsa.h's formulas up to float rounding (the weights are factored);
// tests/ops/test_dsa_op.py holds both twins to the pure-PyTorch spec.
//
// The kernels themselves are in dsa_cpu_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>

#include "dsa/dsa.h"
#include "dsa/dsa_cpu_kernels.h"

namespace mtt_fast {
namespace dsa {
namespace {

void check_common(const char* op, const at::Tensor& x, const at::Tensor& params, int64_t flags,
                  const char* xname) {
  check_flags(op, flags);
  check_images(op, x, params, xname);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  // the CPU twin indexes a plane with int32 (see dsa_cpu_kernels.h)
  TORCH_CHECK(x.size(2) * x.size(3) < (int64_t(1) << 30), op, ": images of ", x.size(2), "x",
              x.size(3), " pixels are too large for the CPU kernel (H * W must be < 2^30)");
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
    cpu::forward_batch<scalar_t>(px, pp, pn, py, B, C, H, W, flags);
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
    cpu::backward_batch<scalar_t>(pg, pp, pgx, B, C, H, W, flags);
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
