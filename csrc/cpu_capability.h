// Which instruction set the CPU kernels that are compiled twice run (today: the fused DSA
// op, csrc/dsa/dsa_cpu.cpp), in the spirit of ATen's per-capability CPU kernels.
//
// A build is for baseline x86-64 (SSE2: 4-wide float vectors). Where the compiler can
// target AVX2 for a region of code (GCC on x86-64: MTT_FAST_AVX2_CLONES), the hot kernels
// are compiled a second time for AVX2 (8-wide, no FMA, so both copies round alike and give
// the same bits), and each call picks the copy for the CPU it runs on:
//   "avx2"    the CPU has AVX2 and MTT_FAST_CPU_CAPABILITY is not "default";
//   "default" otherwise (no AVX2, no AVX2 copy in this build, or the variable says so).
// The variable is read at every call (a getenv), so tests and benchmarks can switch it.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MTT_FAST_AVX2_CLONES 1
#else
#define MTT_FAST_AVX2_CLONES 0
#endif

namespace mtt_fast {

// Whether this CPU has AVX2 (cached: it cannot change while the process runs).
inline bool cpu_has_avx2() {
#if MTT_FAST_AVX2_CLONES
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
#else
  return false;
#endif
}

// Whether the kernels compiled twice take their AVX2 copy now.
inline bool cpu_uses_avx2() {
  if (!cpu_has_avx2()) return false;
  const char* forced = std::getenv("MTT_FAST_CPU_CAPABILITY");
  return forced == nullptr || std::strcmp(forced, "default") != 0;
}

// "avx2" or "default": the copy cpu_uses_avx2 selects.
inline const char* cpu_capability() { return cpu_uses_avx2() ? "avx2" : "default"; }

}  // namespace mtt_fast
