// Device helpers shared by the top-k and AdamW kernels: dtype conversion and dispatch, selection keys,
// the block-local window histogram. Keys and tables: kernels/topk/tables.py and csrc/sf_kernels.h.
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

// Runs the statement with T bound to the element type of a dtype code; returns cudaErrorInvalidValue for
// an unknown code (use inside a function returning cudaError_t).
#define SF_DISPATCH(code, ...)                                         \
  switch (code) {                                                      \
    case dtype_code::kFloat32: { using T = float; __VA_ARGS__; break; }          \
    case dtype_code::kFloat16: { using T = __half; __VA_ARGS__; break; }         \
    case dtype_code::kBfloat16: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    case dtype_code::kFloat64: { using T = double; __VA_ARGS__; break; }         \
    default: return cudaErrorInvalidValue;                             \
  }

// Key of the entry at memory position q of the tensor whose meta row is `m`, and its logical flat index.
__device__ __forceinline__ void entry_key(float x, int64_t q, const int64_t* m, const int64_t* thr,
                                          const int64_t* cut, uint32_t& raw, int64_t& key, int64_t& idx) {
  raw = __float_as_uint(fabsf(x));
  key = static_cast<int64_t>(raw);
  const int64_t rows = m[meta::kRows], cols = m[meta::kCols];
  int64_t r = 0, c = q;
  idx = q;
  if (m[meta::kTransposed]) {
    r = q % rows;
    c = q / rows;
    idx = r * cols + c;
  } else if (m[meta::kProtected]) {
    r = q / cols;
    c = q % cols;
  }
  if (m[meta::kProtected]) {
    const int64_t* t = thr + m[meta::kRowOffset];
    if (key > t[r] || (key == t[r] && c <= cut[m[meta::kRowOffset] + r])) key += kProt;
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

// One block's window histogram of one tensor: counts in shared memory, flushed into the tensor's hist row
// (int64 [hist::kWidth]) with one global atomic per used bin. Every thread of the block must call
// begin() and flush(); add() once per key.
struct WindowHist {
  int32_t* bins;       // shared, kBins
  int64_t* scratch;    // shared, 32
  int64_t lo = 0, shift = 0, hi = 0, above = 0, bad = 0;

  __device__ void begin(const int64_t* win_row) {
    lo = win_row[window::kLo];
    shift = win_row[window::kShift];
    hi = lo + (static_cast<int64_t>(kBins) << shift);
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) bins[i] = 0;
    __syncthreads();
  }
  __device__ void add(uint32_t raw, int64_t key) {
    bad += raw >= kInfBits;
    if (key >= hi) ++above;
    else if (key >= lo) atomicAdd(&bins[(key - lo) >> shift], 1);
  }
  __device__ void flush(int64_t* hist_row) {
    __syncthreads();
    auto* row = reinterpret_cast<unsigned long long*>(hist_row);
    for (int i = threadIdx.x; i < kBins; i += blockDim.x)
      if (bins[i]) atomicAdd(row + hist::kFirstBin + i, static_cast<unsigned long long>(bins[i]));
    const int64_t a = block_sum(above, scratch);
    if (threadIdx.x == 0 && a) atomicAdd(row + hist::kAbove, static_cast<unsigned long long>(a));
    const int64_t b = block_sum(bad, scratch);
    if (threadIdx.x == 0 && b) atomicAdd(row + hist::kBad, static_cast<unsigned long long>(b));
  }
};

}  // namespace sf
