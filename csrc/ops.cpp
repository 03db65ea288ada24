// mtt_fast's compiled core: every operator schema, in one TORCH_LIBRARY block.
//
// Kernels are registered per dispatch key beside each op family
// (csrc/<family>/<family>_cpu.cpp: CPU, csrc/<family>/<family>_cuda.cu: CUDA). Fake
// (meta) kernels and autograd formulas are registered from Python in mtt_fast/ops, which
// also holds the pure-PyTorch reference of every op (the spec); the DSA ops' autograd is
// registered in C++ instead (csrc/dsa/dsa_autograd.cpp says why).
//
// Importing the Python module mtt_fast._C (an empty module, see PyInit__C below) loads
// this shared library, which runs the registrations; the ops then live in
// torch.ops.mtt_fast.
#include <Python.h>
#include <torch/library.h>

namespace mtt_fast {
namespace {

// Whether this library was compiled with its CUDA kernels (setup.py passes -DWITH_CUDA
// to the C++ and CUDA compilers of a CUDAExtension build). True does not mean a GPU is
// present: a CUDA build loads and runs its CPU kernels on machines without one.
bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(mtt_fast, m) {
  // ---- build information ----------------------------------------------------------
  m.def("built_with_cuda() -> bool", &built_with_cuda);

  // ---- traj_loss: L = ||student - target||^2 / ||start - target||^2 (csrc/traj_loss) --
  // student, target, start: 1-D, same length, dtype (float32 | float64), device,
  // contiguous. Returns a 0-dim tensor of the inputs' dtype.
  m.def("traj_loss(Tensor student, Tensor target, Tensor start) -> Tensor");
  // grad: the 0-dim upstream gradient dOut/dL. Returns (dOut/dstudent, dOut/dtarget,
  // dOut/dstart), each shaped like the inputs. Recomputes both sums (one fused pass).
  m.def(
      "traj_loss_backward(Tensor grad, Tensor student, Tensor target, Tensor start)"
      " -> (Tensor, Tensor, Tensor)");

  // ---- dsa: fused differentiable Siamese augmentation (csrc/dsa) --------------------
  // x: images [B, C, H, W], float32 | float64, contiguous. params: [B, 20] of x's dtype,
  // the packed per-sample parameters (layout defined in csrc/dsa/dsa.h:
  // sampling matrix, color factors, cutout frame and box, noise multiplier). noise: [B, C,
  // H, W] like x, required when flags has the noise bit. flags: batch-wide switches
  // (geometry kind, color placement, cutout, noise). Returns y, shaped like x.
  m.def("dsa_forward(Tensor x, Tensor params, Tensor? noise, int flags) -> Tensor");
  // The transpose of dsa_forward's linear part (the op is affine in x): grad_x for the
  // upstream gradient grad_y. Independent of x and of the noise.
  m.def("dsa_backward(Tensor grad_y, Tensor params, int flags) -> Tensor");
  // The [B, 20] params of dsa_forward from sampled parameters (mtt_fast.augment.AugParams
  // fields, CPU tensors; None for groups not applied), on the host (csrc/dsa/dsa_pack.cpp;
  // spec: mtt_fast.augment.fused.pack_reference). ops: the op groups in strategy order as
  // codes (color 0, crop 1, cutout 2, flip 3, scale 4, rotate 5, noise 6); shape: the
  // images' [B, C, H, W]. Returns a CPU tensor of dtype (float32 | float64).
  m.def(
      "dsa_pack(int[] ops, int[] shape, Tensor? theta_scale, Tensor? theta_rot, Tensor? flip,"
      " Tensor? brightness, Tensor? saturation, Tensor? contrast, Tensor? crop_shift,"
      " Tensor? cutout_center, Tensor? cutout_size, ScalarType dtype) -> Tensor");

  // ---- convblock: instance norm (GroupNorm(C, C), affine) + ReLU + 2x2 avg pool ------
  // (csrc/block; the formulas of all three ops are in csrc/block/block.h.)
  // x: the conv output [B, C, H, W] (H, W >= 2), float32 | float64, contiguous; weight,
  // bias: [C] (the norm's affine). Returns y [B, C, H/2, W/2] (floor, as nn.AvgPool2d(2, 2))
  // and stats [B, C, 2] = (mean, rstd) per (sample, channel), which the backward ops take.
  m.def(
      "convblock_forward(Tensor x, Tensor weight, Tensor bias, float eps)"
      " -> (Tensor, Tensor)");
  // grad_y: [B, C, H/2, W/2]; stats: convblock_forward's stats of this x. Returns
  // (grad_x, grad_weight, grad_bias). Its derivatives w.r.t. x are total (through the stats).
  m.def(
      "convblock_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias, Tensor stats)"
      " -> (Tensor, Tensor, Tensor)");
  // The vector-Jacobian product of convblock_backward for cotangents (r_x, r_weight,
  // r_bias) of its outputs (None = zero). Returns the gradients w.r.t. (grad_y, x, weight);
  // those w.r.t. bias are zero (the ReLU mask is piecewise constant).
  m.def(
      "convblock_double_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias,"
      " Tensor stats, Tensor? r_x, Tensor? r_weight, Tensor? r_bias) -> (Tensor, Tensor, Tensor)");
}

}  // namespace mtt_fast

// A Python extension module with no methods: `import mtt_fast._C` only loads the library
// so the TORCH_LIBRARY registrations above run (as pytorch/extension-cpp does). Plain
// CPython API, no pybind11, so this file compiles quickly.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  /* name */
      "mtt_fast's compiled core; the ops are in torch.ops.mtt_fast", /* doc */
      -1,    /* size */
      NULL,  /* methods */
  };
  return PyModule_Create(&module_def);
}
}
