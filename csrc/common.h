// Definitions shared by every op family's per-element header (csrc/<family>/<family>.h).
#pragma once

// Marks the per-element math that both twins call: host+device under nvcc/hipcc, plain C++
// for the CPU twin.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MTT_HOST_DEVICE __host__ __device__
#else
#define MTT_HOST_DEVICE
#endif
