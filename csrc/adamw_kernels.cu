// The fused Adam pass of SparseAdamW (kernels/adamw/reference.py gives the math,
// kernels/adamw/triton_kernels.py the same pass in Triton): read p, g, m, v; write p, m, v; for a
// projected tensor with an active window also build the projection's first histogram (WindowHist).
// IEEE division and square root (__fdiv_rn, __fsqrt_rn) keep the result independent of --use_fast_math.
#include "sf_common.cuh"

namespace sf {
namespace {

template <typename T>
__device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

template <typename T>
__global__ void __launch_bounds__(kThreads) adamw_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* ptrs, const float* hyp,
    const float* scale, const int64_t* win, int64_t* hist) {
  __shared__ int32_t bins[kBins];
  __shared__ int64_t scratch[32];
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* pr = ptrs + adam_ptrs::kWidth * t;
  T* p = reinterpret_cast<T*>(pr[adam_ptrs::kP]);
  const T* g = reinterpret_cast<const T*>(pr[adam_ptrs::kG]);
  T* mm = reinterpret_cast<T*>(pr[adam_ptrs::kM]);
  T* vv = reinterpret_cast<T*>(pr[adam_ptrs::kV]);
  const int64_t n = pr[adam_ptrs::kNumel], slot = pr[adam_ptrs::kSlot], q0 = prog_start[blockIdx.x];
  const float* h = hyp + adam_hyp::kWidth * t;
  const float step_size = h[adam_hyp::kStepSize], bc2 = h[adam_hyp::kBc2], eps = h[adam_hyp::kEps];
  const float omb1 = h[adam_hyp::kOmb1], beta2 = h[adam_hyp::kBeta2], dec = h[adam_hyp::kDecay];
  const float omb2 = h[adam_hyp::kOmb2];
  const float s = *scale;
  const int64_t* win_row = slot >= 0 ? win + window::kWidth * slot : nullptr;
  const bool do_hist = win_row != nullptr && win_row[window::kActive] != 0;  // uniform over the block
  WindowHist wh{bins, scratch};
  if (do_hist) wh.begin(win_row);
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
        wh.add(raw, static_cast<int64_t>(raw));
      }
    }
  }
  if (do_hist) wh.flush(hist + hist::kWidth * slot);
}

}  // namespace

cudaError_t adamw(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* ptrs,
                  const float* hyp, const float* scale, const int64_t* win, int64_t* hist, int dtype,
                  cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  SF_DISPATCH(dtype, (adamw_kernel<T><<<static_cast<unsigned>(P), kThreads, 0, stream>>>(
                         prog_tid, prog_start, ptrs, hyp, scale, win, hist)));
  return cudaGetLastError();
}

}  // namespace sf
