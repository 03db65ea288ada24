// CUDA twin of the trajectory loss. The per-element math is in traj_loss.h (shared with
// the CPU twin); this file adds only indexing, launches and CUB block reductions.
//
// Reduction (deterministic: the same inputs give the same bits on every run):
//   1. partial_sums_kernel: a grid of min(kMaxBlocks, ceil(n / kThreads)) blocks (a
//      function of n only) strides over the vector; each thread accumulates (N, D) in
//      double, each block reduces with cub::BlockReduce and writes one (N, D) pair.
//   2. finalize_kernel: one block reduces the pairs the same way, writes (N, D) and L.
// The backward runs 1-2 again, then one elementwise kernel for the three gradients; the
// upstream gradient is read on the device, so nothing synchronizes with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <tuple>

#include "traj_loss/traj_loss.h"

namespace mtt_fast {
namespace traj_loss {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

using BlockReduce = cub::BlockReduce<acc_t, kThreads>;

// Sum of (num, den) over the block; the result is valid in thread 0.
__device__ inline void block_sum2(acc_t& num, acc_t& den) {
  __shared__ typename BlockReduce::TempStorage tmp;
  num = BlockReduce(tmp).Sum(num);
  __syncthreads();  // tmp is reused
  den = BlockReduce(tmp).Sum(den);
}

template <typename scalar_t>
__global__ void partial_sums_kernel(const scalar_t* __restrict__ a,
                                    const scalar_t* __restrict__ b,
                                    const scalar_t* __restrict__ c, int64_t n,
                                    acc_t* __restrict__ partial) {
  acc_t num = 0.0, den = 0.0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    accumulate<scalar_t>(a[i], b[i], c[i], num, den);
  }
  block_sum2(num, den);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = num;
    partial[2 * blockIdx.x + 1] = den;
  }
}

// One block: sums[0] = N, sums[1] = D; *loss = N / D (if loss is not null).
template <typename scalar_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial, int64_t blocks,
                                acc_t* __restrict__ sums, scalar_t* __restrict__ loss) {
  acc_t num = 0.0, den = 0.0;
  for (int64_t k = threadIdx.x; k < blocks; k += blockDim.x) {
    num += partial[2 * k];
    den += partial[2 * k + 1];
  }
  block_sum2(num, den);
  if (threadIdx.x == 0) {
    sums[0] = num;
    sums[1] = den;
    if (loss != nullptr) *loss = static_cast<scalar_t>(loss_from_sums(num, den));
  }
}

template <typename scalar_t>
__global__ void grad_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ sums,
                            const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                            const scalar_t* __restrict__ c, int64_t n, scalar_t* __restrict__ ga,
                            scalar_t* __restrict__ gb, scalar_t* __restrict__ gc) {
  const GradCoefs k = grad_coefs(static_cast<acc_t>(*grad), sums[0], sums[1]);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    grad_element<scalar_t>(a[i], b[i], c[i], k, ga[i], gb[i], gc[i]);
  }
}

int64_t reduce_blocks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads));
}

// Launches 1-2 above; returns the (N, D) pair as a 2-element double tensor on the device.
template <typename scalar_t>
at::Tensor sums_cuda(const at::Tensor& student, const at::Tensor& target,
                     const at::Tensor& start, scalar_t* loss, cudaStream_t stream) {
  const int64_t n = student.numel();
  const int64_t blocks = reduce_blocks(n);
  at::Tensor scratch = at::empty({2 * blocks + 2}, student.options().dtype(at::kDouble));
  acc_t* partial = scratch.mutable_data_ptr<acc_t>();
  acc_t* sums = partial + 2 * blocks;
  partial_sums_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      student.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
      start.const_data_ptr<scalar_t>(), n, partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(partial, blocks, sums, loss);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return scratch.narrow(0, 2 * blocks, 2);
}

at::Tensor traj_loss_cuda(const at::Tensor& student, const at::Tensor& target,
                          const at::Tensor& start) {
  check_inputs("mtt_fast::traj_loss", student, target, start);
  TORCH_INTERNAL_ASSERT(student.device().is_cuda());
  const c10::cuda::CUDAGuard guard(student.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty({}, student.options());
  AT_DISPATCH_FLOATING_TYPES(student.scalar_type(), "traj_loss_cuda", [&] {
    sums_cuda<scalar_t>(student, target, start, out.mutable_data_ptr<scalar_t>(), stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> traj_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& target,
    const at::Tensor& start) {
  check_inputs("mtt_fast::traj_loss_backward", student, target, start);
  check_grad("mtt_fast::traj_loss_backward", grad, student);
  TORCH_INTERNAL_ASSERT(student.device().is_cuda());
  const c10::cuda::CUDAGuard guard(student.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor g = grad.contiguous();
  at::Tensor ga = at::empty_like(student);
  at::Tensor gb = at::empty_like(target);
  at::Tensor gc = at::empty_like(start);
  const int64_t n = student.numel();
  if (n == 0) return std::make_tuple(ga, gb, gc);
  AT_DISPATCH_FLOATING_TYPES(student.scalar_type(), "traj_loss_backward_cuda", [&] {
    at::Tensor sums = sums_cuda<scalar_t>(student, target, start, nullptr, stream);
    const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8);
    grad_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), sums.const_data_ptr<acc_t>(),
        student.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
        start.const_data_ptr<scalar_t>(), n, ga.mutable_data_ptr<scalar_t>(),
        gb.mutable_data_ptr<scalar_t>(), gc.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return std::make_tuple(ga, gb, gc);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) {
  m.impl("traj_loss", &traj_loss_cuda);
  m.impl("traj_loss_backward", &traj_loss_backward_cuda);
}

}  // namespace traj_loss
}  // namespace mtt_fast
