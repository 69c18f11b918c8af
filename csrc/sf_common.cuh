// Device helpers shared by the top-k and AdamW kernels: dtype conversion, selection keys, the
// block-local window histogram. See kernels/topk_triton.py for the key and table definitions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include "sf_kernels.h"

namespace sf {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_f<double>(float x) { return static_cast<double>(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// A double is rounded to float first, as the reference does (w.abs().float()).
template <typename T> __device__ __forceinline__ float load_f(const T* p) { return to_f(*p); }

constexpr int64_t kProt = int64_t(1) << 31;

// Key of the entry at memory position q of tensor row `m` (meta row: ptr, n, R, C, transposed, protected,
// row offset, mask ptr), and its logical flat index.
__device__ __forceinline__ void entry_key(float x, int64_t q, const int64_t* m, const int64_t* thr,
                                          const int64_t* cut, uint32_t& raw, int64_t& key, int64_t& idx) {
  raw = __float_as_uint(fabsf(x));
  key = static_cast<int64_t>(raw);
  const int64_t rows = m[2], cols = m[3];
  int64_t r = 0, c = q;
  idx = q;
  if (m[4]) {
    r = q % rows;
    c = q / rows;
    idx = r * cols + c;
  } else if (m[5]) {
    r = q / cols;
    c = q % cols;
  }
  if (m[5]) {
    const int64_t t = thr[m[6] + r];
    if (key > t || (key == t && c <= cut[m[6] + r])) key += kProt;
  }
}

// Block-wide sum of a per-thread int64 (all threads must call it).
__device__ __forceinline__ int64_t block_sum(int64_t v, int64_t* smem_scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) smem_scratch[warp] = v;
  __syncthreads();
  int64_t total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += smem_scratch[w];
  return total;  // valid in thread 0 only
}

// Window histogram state of one block: counts in shared memory, flushed with one atomic per used bin.
struct WindowHist {
  int32_t* bins;   // shared, kBins
  __device__ void clear() {
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) bins[i] = 0;
  }
  __device__ void flush(int32_t* global) {
    for (int i = threadIdx.x; i < kBins; i += blockDim.x)
      if (bins[i]) atomicAdd(global + i, bins[i]);
  }
};

}  // namespace sf
