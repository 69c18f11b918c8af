// The fused Adam pass of SparseAdamW (kernels/adamw.py gives the math, kernels/adamw_triton.py the same
// pass in Triton): read p, g, m, v; write p, m, v; for a projected tensor with a warm window also build
// the projection's first histogram in shared memory. IEEE division and square root (__fdiv_rn,
// __fsqrt_rn) keep the result independent of --use_fast_math.
#include "sf_common.cuh"

namespace sf {
namespace {

template <typename T>
__device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

template <typename T>
__global__ void __launch_bounds__(kThreads) adamw_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* ptrs, const float* hyp,
    const float* scale, const int64_t* win, int32_t* hist, int64_t* stats) {
  __shared__ int32_t bins[kBins];
  __shared__ int64_t scratch[32];
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* pr = ptrs + kMetaCols * t;
  T* p = reinterpret_cast<T*>(pr[0]);
  const T* g = reinterpret_cast<const T*>(pr[1]);
  T* mm = reinterpret_cast<T*>(pr[2]);
  T* vv = reinterpret_cast<T*>(pr[3]);
  const int64_t n = pr[4], j = pr[5], q0 = prog_start[blockIdx.x];
  const float* h = hyp + 8 * t;
  const float step_size = h[0], bc2 = h[1], eps = h[2], omb1 = h[3], beta2 = h[4], dec = h[5], omb2 = h[6];
  const float s = *scale;
  const bool do_hist = j >= 0 && win[4 * j + 2] != 0;  // uniform over the block
  int64_t lo = 0, shift = 0, hi = 0;
  WindowHist wh{bins};
  if (do_hist) {
    lo = win[4 * j];
    shift = win[4 * j + 1];
    hi = lo + (static_cast<int64_t>(kBins) << shift);
    wh.clear();
    __syncthreads();
  }
  int64_t above = 0, bad = 0;
#pragma unroll 4
  for (int i = 0; i < kItems; ++i) {
    const int64_t q = q0 + static_cast<int64_t>(i) * kThreads + threadIdx.x;
    if (q < n) {
      // float32 math, rounded to T wherever the torch reference stores a tensor (no-op for float)
      float pv = load_f(p + q);
      const float gv = rnd<T>(load_f(g + q) * s);
      float mv = load_f(mm + q);
      float v2 = load_f(vv + q);
      mv = rnd<T>(mv + omb1 * (gv - mv));
      v2 = rnd<T>(v2 * beta2);
      v2 = rnd<T>(v2 + (omb2 * gv) * gv);
      const float denom = rnd<T>(rnd<T>(__fsqrt_rn(rnd<T>(__fdiv_rn(v2, bc2)))) + eps);
      pv = pv - step_size * __fdiv_rn(mv, denom);
      T pn = from_f<T>(pv);
      if (dec != 1.0f) pn = from_f<T>(to_f(pn) * dec);
      p[q] = pn;
      mm[q] = from_f<T>(mv);
      vv[q] = from_f<T>(v2);
      if (do_hist) {
        const uint32_t raw = __float_as_uint(fabsf(to_f(pn)));
        const int64_t key = raw;
        bad += raw >= 0x7F800000u;
        if (key >= hi) ++above;
        else if (key >= lo) atomicAdd(&bins[(key - lo) >> shift], 1);
      }
    }
  }
  if (do_hist) {
    __syncthreads();
    wh.flush(hist + j * kBins);
    const int64_t a = block_sum(above, scratch);
    if (threadIdx.x == 0 && a) atomicAdd(reinterpret_cast<unsigned long long*>(stats + 4 * j), (unsigned long long)a);
    const int64_t b = block_sum(bad, scratch);
    if (threadIdx.x == 0 && b) atomicAdd(reinterpret_cast<unsigned long long*>(stats + 4 * j + 1), (unsigned long long)b);
  }
}

}  // namespace

cudaError_t adamw(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* ptrs,
                  const float* hyp, const float* scale, const int64_t* win, int32_t* hist, int64_t* stats,
                  int dtype, cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(P);
  switch (dtype) {
    case 0: adamw_kernel<float><<<blocks, kThreads, 0, stream>>>(prog_tid, prog_start, ptrs, hyp, scale, win, hist, stats); break;
    case 1: adamw_kernel<__half><<<blocks, kThreads, 0, stream>>>(prog_tid, prog_start, ptrs, hyp, scale, win, hist, stats); break;
    case 2: adamw_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(prog_tid, prog_start, ptrs, hyp, scale, win, hist, stats); break;
    case 3: adamw_kernel<double><<<blocks, kThreads, 0, stream>>>(prog_tid, prog_start, ptrs, hyp, scale, win, hist, stats); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace sf
