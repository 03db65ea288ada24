// CPU twin of the trajectory loss: at::parallel_for with a deterministic reduction.
//
// The vector is cut into fixed chunks of kChunk elements (independent of the thread
// count); each chunk is summed sequentially in double into its own slot, and the slots are
// added in chunk order. The result is therefore bit-identical for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "traj_loss/traj_loss.h"

namespace mtt_fast {
namespace traj_loss {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per partial sum
constexpr int64_t kGrain = 1 << 15;  // elements per task in the elementwise backward

// (N, D) of the inputs, deterministic.
template <typename scalar_t>
void sums_cpu(const scalar_t* a, const scalar_t* b, const scalar_t* c, int64_t n, acc_t& num,
              acc_t& den) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc_t> part(2 * chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t lo = k * kChunk;
      const int64_t hi = std::min(n, lo + kChunk);
      acc_t sn = 0.0, sd = 0.0;
      for (int64_t i = lo; i < hi; ++i) accumulate<scalar_t>(a[i], b[i], c[i], sn, sd);
      part[2 * k] = sn;
      part[2 * k + 1] = sd;
    }
  });
  num = 0.0;
  den = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    num += part[2 * k];
    den += part[2 * k + 1];
  }
}

at::Tensor traj_loss_cpu(const at::Tensor& student, const at::Tensor& target,
                         const at::Tensor& start) {
  check_inputs("mtt_fast::traj_loss", student, target, start);
  TORCH_INTERNAL_ASSERT(student.device().is_cpu());
  at::Tensor out = at::empty({}, student.options());
  AT_DISPATCH_FLOATING_TYPES(student.scalar_type(), "traj_loss_cpu", [&] {
    acc_t num = 0.0, den = 0.0;
    sums_cpu<scalar_t>(student.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
                       start.const_data_ptr<scalar_t>(), student.numel(), num, den);
    *out.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(loss_from_sums(num, den));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> traj_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& target,
    const at::Tensor& start) {
  check_inputs("mtt_fast::traj_loss_backward", student, target, start);
  check_grad("mtt_fast::traj_loss_backward", grad, student);
  TORCH_INTERNAL_ASSERT(student.device().is_cpu());
  at::Tensor ga = at::empty_like(student);
  at::Tensor gb = at::empty_like(target);
  at::Tensor gc = at::empty_like(start);
  AT_DISPATCH_FLOATING_TYPES(student.scalar_type(), "traj_loss_backward_cpu", [&] {
    const scalar_t* a = student.const_data_ptr<scalar_t>();
    const scalar_t* b = target.const_data_ptr<scalar_t>();
    const scalar_t* c = start.const_data_ptr<scalar_t>();
    const int64_t n = student.numel();
    acc_t num = 0.0, den = 0.0;
    sums_cpu<scalar_t>(a, b, c, n, num, den);
    const GradCoefs k = grad_coefs(static_cast<acc_t>(grad.item<double>()), num, den);
    scalar_t* pa = ga.mutable_data_ptr<scalar_t>();
    scalar_t* pb = gb.mutable_data_ptr<scalar_t>();
    scalar_t* pc = gc.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        grad_element<scalar_t>(a[i], b[i], c[i], k, pa[i], pb[i], pc[i]);
      }
    });
  });
  return std::make_tuple(ga, gb, gc);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) {
  m.impl("traj_loss", &traj_loss_cpu);
  m.impl("traj_loss_backward", &traj_loss_backward_cpu);
}

}  // namespace traj_loss
}  // namespace mtt_fast
