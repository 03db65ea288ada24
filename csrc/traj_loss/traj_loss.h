// The normalized-L2 trajectory loss of Matching Training Trajectories, per element.
//
// For flat parameter vectors a (student after N steps), b (expert target theta*_{t+M})
// and c (expert start theta*_t), all of length P:
//
//   u = a - b,  v = c - b,  N = sum_i u_i^2,  D = sum_i v_i^2,  L = N / D.
//
// Gradients for an upstream gradient g = dOut/dL (a scalar):
//
//   dL/da =  g * 2 u / D
//   dL/dc = -g * 2 N v / D^2  = -g * 2 L v / D
//   dL/db = -(dL/da + dL/dc)          (b enters only through u and v, each with sign -1)
//
// Both twins (CPU: traj_loss_cpu.cpp, CUDA: traj_loss_cuda.cu) call these functions, so
// the arithmetic is tested wherever the CPU twin is. Sums are accumulated in double
// (acc_t) for float32 and float64 inputs alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common.h"

namespace mtt_fast {
namespace traj_loss {

// The accumulator type for both sums: double for float32 and float64 inputs.
using acc_t = double;

// Adds element i's contribution to the two sums N (num) and D (den).
template <typename scalar_t>
MTT_HOST_DEVICE inline void accumulate(scalar_t a, scalar_t b, scalar_t c, acc_t& num,
                                       acc_t& den) {
  const acc_t u = static_cast<acc_t>(a) - static_cast<acc_t>(b);
  const acc_t v = static_cast<acc_t>(c) - static_cast<acc_t>(b);
  num += u * u;
  den += v * v;
}

// L = N / D. D == 0 (start == target) gives inf or nan, as the reference does.
MTT_HOST_DEVICE inline acc_t loss_from_sums(acc_t num, acc_t den) { return num / den; }

// The two per-element gradient coefficients, computed once per call:
//   ka = 2 g / D        (dL/da = ka * u)
//   kc = -2 g N / D^2   (dL/dc = kc * v)
struct GradCoefs {
  acc_t ka;
  acc_t kc;
};

MTT_HOST_DEVICE inline GradCoefs grad_coefs(acc_t g, acc_t num, acc_t den) {
  GradCoefs k;
  k.ka = 2.0 * g / den;
  k.kc = -2.0 * g * (num / den) / den;
  return k;
}

// Element i's gradients for (a, b, c).
template <typename scalar_t>
MTT_HOST_DEVICE inline void grad_element(scalar_t a, scalar_t b, scalar_t c, GradCoefs k,
                                         scalar_t& ga, scalar_t& gb, scalar_t& gc) {
  const acc_t u = static_cast<acc_t>(a) - static_cast<acc_t>(b);
  const acc_t v = static_cast<acc_t>(c) - static_cast<acc_t>(b);
  const acc_t da = k.ka * u;
  const acc_t dc = k.kc * v;
  ga = static_cast<scalar_t>(da);
  gc = static_cast<scalar_t>(dc);
  gb = static_cast<scalar_t>(-(da + dc));
}

// Host-side argument checks shared by both twins (not compiled for the device).
inline void check_inputs(const char* op, const at::Tensor& student, const at::Tensor& target,
                         const at::Tensor& start) {
  TORCH_CHECK(student.dim() == 1 && target.dim() == 1 && start.dim() == 1, op,
              ": student, target and start must be 1-D flat parameter vectors, got shapes ",
              student.sizes(), ", ", target.sizes(), ", ", start.sizes());
  TORCH_CHECK(student.size(0) == target.size(0) && student.size(0) == start.size(0), op,
              ": student, target and start must have the same length, got ", student.size(0),
              ", ", target.size(0), ", ", start.size(0));
  TORCH_CHECK(student.scalar_type() == target.scalar_type() &&
                  student.scalar_type() == start.scalar_type(),
              op, ": student, target and start must have the same dtype, got ",
              student.scalar_type(), ", ", target.scalar_type(), ", ", start.scalar_type());
  TORCH_CHECK(student.scalar_type() == at::kFloat || student.scalar_type() == at::kDouble, op,
              ": only float32 and float64 are supported, got ", student.scalar_type());
  TORCH_CHECK(student.device() == target.device() && student.device() == start.device(), op,
              ": student, target and start must be on the same device, got ", student.device(),
              ", ", target.device(), ", ", start.device());
  TORCH_CHECK(student.is_contiguous() && target.is_contiguous() && start.is_contiguous(), op,
              ": student, target and start must be contiguous (call .contiguous())");
}

inline void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& student) {
  TORCH_CHECK(grad.numel() == 1, op, ": grad must hold one element (the loss is a scalar), got ",
              "shape ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == student.scalar_type(), op, ": grad dtype ",
              grad.scalar_type(), " does not match the inputs' ", student.scalar_type());
  TORCH_CHECK(grad.device() == student.device(), op, ": grad is on ", grad.device(),
              " but the inputs are on ", student.device());
}

}  // namespace traj_loss
}  // namespace mtt_fast
