// CPU emulation of the CUDA execution model, just enough for the fused cross
// entropy kernels: one std::thread per CUDA thread, blocks run one after the
// other, __syncthreads is a block barrier and warp shuffles exchange values
// through a per-warp buffer between two barriers.
//
// The ATen device headers the kernels build on (cuda_utils::BlockReduce,
// memory::aligned_vector) are compiled as they are, on top of these
// primitives: shim/ATen/cuda/DeviceUtils.cuh stands in for the CUDA-only
// header that would otherwise define the shuffles, and at::native's
// max_propagate_nan, which SharedReduceOps.h defines for CUDA compilers only,
// is given below with the same semantics.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

// The kernels are 1-D; y and z exist for the ATen headers (Block2D) and stay 1.
struct EmuDim {
  unsigned x;
  unsigned y = 1;
  unsigned z = 1;
};
inline thread_local EmuDim threadIdx;
inline thread_local EmuDim blockIdx;
inline EmuDim blockDim;
inline EmuDim gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;
struct EmuWarp {
  std::barrier<> bar{32};
  alignas(8) unsigned char buf[32][8];
};
inline std::vector<std::unique_ptr<EmuWarp>> emu_warps;
inline std::atomic<int> emu_assert_failures{0};

#undef C10_LAUNCH_BOUNDS_1
#undef C10_LAUNCH_BOUNDS_2
#undef CUDA_KERNEL_ASSERT
#define C10_LAUNCH_BOUNDS_1(x)
#define C10_LAUNCH_BOUNDS_2(x, y)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) {               \
      ++emu_assert_failures;     \
    }                            \
  } while (0)
#ifndef C10_WARP_SIZE
#define C10_WARP_SIZE 32
#endif

inline void __syncthreads() {
  emu_block_barrier->arrive_and_wait();
}

// Every lane of the warp publishes `value`, then reads the one of lane
// `source` (its own when `source` lies outside its segment of `width` lanes,
// as CUDA does).
template <typename T, typename Source>
T emu_shuffle(T value, int width, Source source_of) {
  static_assert(sizeof(T) <= 8);
  EmuWarp& warp = *emu_warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  std::memcpy(warp.buf[lane], &value, sizeof(T));
  warp.bar.arrive_and_wait();
  int source = source_of(lane);
  if (source / width != lane / width) {
    source = lane;
  }
  T result;
  std::memcpy(&result, warp.buf[source], sizeof(T));
  warp.bar.arrive_and_wait();
  return result;
}

// The signatures of ATen/cuda/DeviceUtils.cuh.
template <typename T>
T WARP_SHFL_XOR(T value, int laneMask, int width = 32, unsigned int mask = 0xffffffff) {
  (void)mask;
  return emu_shuffle(value, width, [&](int lane) { return lane ^ laneMask; });
}

template <typename T>
T WARP_SHFL_DOWN(T value, unsigned int delta, int width = 32, unsigned int mask = 0xffffffff) {
  (void)mask;
  return emu_shuffle(value, width, [&](int lane) { return lane + static_cast<int>(delta); });
}

namespace at::native {
template <typename scalar_t>
scalar_t max_propagate_nan(scalar_t a, scalar_t b) {
  return std::isnan(b) ? b : std::max(a, b);
}
} // namespace at::native

#include <ATen/native/cuda/MemoryAccess.cuh>
#include <ATen/native/cuda/block_reduce.cuh>

template <class F>
void emu_launch(unsigned grid, unsigned block, F body) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    emu_block_barrier = &barrier;
    emu_warps.clear();
    for (unsigned w = 0; w < (block + 31) / 32; ++w) {
      emu_warps.push_back(std::make_unique<EmuWarp>());
    }
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([&, t, b] {
        threadIdx.x = t;
        blockIdx.x = b;
        body();
      });
    }
    for (auto& thread : threads) {
      thread.join();
    }
  }
}
