// The streaming passes of the exact batched top-k projection (see kernels/topk_device.py for the
// algorithm and kernels/topk_triton.py for the same passes in Triton). One block per 4096 elements of
// one tensor; 256 threads, 16 coalesced elements each. Histograms are built in shared memory and
// flushed with one global atomic per used bin.
#include "sf_common.cuh"

namespace sf {
namespace {

template <typename T>
__global__ void sample_kernel(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                              int64_t S) {
  const int64_t t = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= S) return;
  const int64_t* m = meta + kMetaCols * t;
  const int64_t n = m[1];
  const int64_t q = j * n / S;
  int64_t key = 0, idx;
  uint32_t raw;
  if (q < n) entry_key(load_f(reinterpret_cast<const T*>(m[0]) + q), q, m, thr, cut, raw, key, idx);
  out[t * S + j] = key;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) hist_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* meta, const int64_t* thr,
    const int64_t* cut, const int64_t* win, int32_t* hist, int64_t* stats) {
  __shared__ int32_t bins[kBins];
  __shared__ int64_t scratch[32];
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* w = win + 4 * t;
  if (w[2] == 0) return;  // uniform over the block
  const int64_t* m = meta + kMetaCols * t;
  const T* base = reinterpret_cast<const T*>(m[0]);
  const int64_t n = m[1], q0 = prog_start[blockIdx.x];
  const int64_t lo = w[0], shift = w[1], hi = lo + (static_cast<int64_t>(kBins) << shift);
  WindowHist h{bins};
  h.clear();
  __syncthreads();
  int64_t above = 0, bad = 0;
#pragma unroll 4
  for (int i = 0; i < kItems; ++i) {
    const int64_t q = q0 + static_cast<int64_t>(i) * kThreads + threadIdx.x;
    if (q < n) {
      uint32_t raw;
      int64_t key, idx;
      entry_key(load_f(base + q), q, m, thr, cut, raw, key, idx);
      bad += raw >= 0x7F800000u;
      if (key >= hi) ++above;
      else if (key >= lo) atomicAdd(&bins[(key - lo) >> shift], 1);
    }
  }
  __syncthreads();
  h.flush(hist + t * kBins);
  const int64_t a = block_sum(above, scratch);
  if (threadIdx.x == 0 && a) atomicAdd(reinterpret_cast<unsigned long long*>(stats + 4 * t), (unsigned long long)a);
  const int64_t b = block_sum(bad, scratch);
  if (threadIdx.x == 0 && b) atomicAdd(reinterpret_cast<unsigned long long*>(stats + 4 * t + 1), (unsigned long long)b);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) apply_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* meta, const int64_t* thr,
    const int64_t* cut, const int64_t* fin, const float* decay, int32_t* cnt, int64_t* ckey, int64_t* cidx,
    bool mask_out) {
  __shared__ int32_t s_count;
  __shared__ int32_t s_base;
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* f = fin + 4 * t;
  if (f[3] == 0) return;  // uniform over the block
  const int64_t* m = meta + kMetaCols * t;
  T* base = reinterpret_cast<T*>(m[0]);
  int8_t* out = reinterpret_cast<int8_t*>(m[7]);
  const int64_t n = m[1], q0 = prog_start[blockIdx.x];
  const int64_t lo = f[0], hi = f[1], coff = f[2];
  const float dec = decay[t];
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  int64_t ck[kItems], ci[kItems];
  int slot[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    slot[i] = -1;
    const int64_t q = q0 + static_cast<int64_t>(i) * kThreads + threadIdx.x;
    if (q < n) {
      const float x = load_f(base + q);
      uint32_t raw;
      int64_t key, idx;
      entry_key(x, q, m, thr, cut, raw, key, idx);
      const bool keep = key >= hi;
      if (mask_out) {
        out[q] = keep ? 1 : 0;
      } else if (key < lo) {
        if (raw) base[q] = from_f<T>(0.0f);
      } else if (keep && dec != 1.0f) {
        base[q] = from_f<T>(x * dec);
      }
      if (!keep && key >= lo) {
        slot[i] = atomicAdd(&s_count, 1);
        ck[i] = key;
        ci[i] = idx;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0 && s_count > 0) s_base = atomicAdd(cnt + t, s_count);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (slot[i] >= 0) {
      const int64_t pos = coff + s_base + slot[i];
      ckey[pos] = ck[i];
      cidx[pos] = ci[i];
    }
  }
}

template <typename T>
__global__ void scatter_kernel(const int64_t* tid, const int64_t* idx, const float* fac, int64_t M,
                               const int64_t* meta, bool mask_out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= M) return;
  const int64_t* m = meta + kMetaCols * tid[j];
  const int64_t rows = m[2], cols = m[3], i = idx[j];
  const int64_t q = m[4] ? (i % cols) * rows + i / cols : i;
  const float a = fac[j];
  if (mask_out) {
    if (a != 0.0f) reinterpret_cast<int8_t*>(m[7])[q] = 1;
  } else {
    T* base = reinterpret_cast<T*>(m[0]);
    base[q] = from_f<T>(a == 0.0f ? 0.0f : load_f(base + q) * a);
  }
}

}  // namespace

#define SF_DISPATCH(dtype, ...)                          \
  switch (dtype) {                                       \
    case 0: { using T = float; __VA_ARGS__; break; }     \
    case 1: { using T = __half; __VA_ARGS__; break; }    \
    case 2: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    case 3: { using T = double; __VA_ARGS__; break; }    \
    default: return cudaErrorInvalidValue;               \
  }

cudaError_t topk_sample(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                        int64_t T, int64_t S, int dtype, cudaStream_t stream) {
  if (T == 0 || S == 0) return cudaSuccess;
  dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((S + kThreads - 1) / kThreads));
  SF_DISPATCH(dtype, (sample_kernel<T><<<grid, kThreads, 0, stream>>>(meta, thr, cut, out, S)));
  return cudaGetLastError();
}

cudaError_t topk_hist(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                      const int64_t* thr, const int64_t* cut, const int64_t* win, int32_t* hist,
                      int64_t* stats, int dtype, cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  SF_DISPATCH(dtype, (hist_kernel<T><<<static_cast<unsigned>(P), kThreads, 0, stream>>>(
                         prog_tid, prog_start, meta, thr, cut, win, hist, stats)));
  return cudaGetLastError();
}

cudaError_t topk_apply(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                       const int64_t* thr, const int64_t* cut, const int64_t* fin, const float* decay,
                       int32_t* cnt, int64_t* ckey, int64_t* cidx, int dtype, bool mask_out,
                       cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  SF_DISPATCH(dtype, (apply_kernel<T><<<static_cast<unsigned>(P), kThreads, 0, stream>>>(
                         prog_tid, prog_start, meta, thr, cut, fin, decay, cnt, ckey, cidx, mask_out)));
  return cudaGetLastError();
}

cudaError_t topk_scatter(const int64_t* tid, const int64_t* idx, const float* fac, int64_t M,
                         const int64_t* meta, int dtype, bool mask_out, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((M + kThreads - 1) / kThreads);
  SF_DISPATCH(dtype, (scatter_kernel<T><<<blocks, kThreads, 0, stream>>>(tid, idx, fac, M, meta, mask_out)));
  return cudaGetLastError();
}

}  // namespace sf
