// The streaming passes of the exact batched top-k projection (kernels/topk/phases.py drives them,
// kernels/topk/triton_kernels.py has the same passes in Triton; docs/kernels.md explains the algorithm).
// One block per kBlock elements of one tensor; kThreads threads, kItems coalesced elements each.
// Histograms are built in shared memory (WindowHist) and flushed with one global atomic per used bin.
#include "sf_common.cuh"

namespace sf {
namespace {

template <typename T>
__global__ void sample_kernel(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                              int64_t S) {
  const int64_t t = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= S) return;
  const int64_t* m = meta + meta::kWidth * t;
  const int64_t n = m[meta::kNumel];
  const int64_t q = j * n / S;
  int64_t key = 0, idx;
  uint32_t raw;
  if (q < n) entry_key(load_f(reinterpret_cast<const T*>(m[meta::kPtr]) + q), q, m, thr, cut, raw, key, idx);
  out[t * S + j] = key;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) hist_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* meta, const int64_t* thr,
    const int64_t* cut, const int64_t* win, int64_t* hist) {
  __shared__ int32_t bins[kBins];
  __shared__ int64_t scratch[32];
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* w = win + window::kWidth * t;
  if (w[window::kActive] == 0) return;  // uniform over the block
  const int64_t* m = meta + meta::kWidth * t;
  const T* base = reinterpret_cast<const T*>(m[meta::kPtr]);
  const int64_t n = m[meta::kNumel], q0 = prog_start[blockIdx.x];
  WindowHist h{bins, scratch};
  h.begin(w);
#pragma unroll 4
  for (int i = 0; i < kItems; ++i) {
    const int64_t q = q0 + static_cast<int64_t>(i) * kThreads + threadIdx.x;
    if (q < n) {
      uint32_t raw;
      int64_t key, idx;
      entry_key(load_f(base + q), q, m, thr, cut, raw, key, idx);
      h.add(raw, key);
    }
  }
  h.flush(hist + hist::kWidth * t);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) apply_kernel(
    const int32_t* prog_tid, const int64_t* prog_start, const int64_t* meta, const int64_t* thr,
    const int64_t* cut, const int64_t* dec, const float* decay, int32_t* cnt, int64_t* ckey, int64_t* cidx,
    bool mask_out) {
  __shared__ int32_t s_count;
  __shared__ int32_t s_base;
  const int64_t t = prog_tid[blockIdx.x];
  const int64_t* d = dec + decision::kWidth * t;
  if (d[decision::kActive] == 0) return;  // uniform over the block
  const int64_t* m = meta + meta::kWidth * t;
  T* base = reinterpret_cast<T*>(m[meta::kPtr]);
  int8_t* out = reinterpret_cast<int8_t*>(m[meta::kMaskPtr]);
  const int64_t n = m[meta::kNumel], q0 = prog_start[blockIdx.x];
  const int64_t lo = d[decision::kLo], hi = d[decision::kHi], coff = d[decision::kCandOffset];
  const float factor = decay[t];
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
      } else if (keep && factor != 1.0f) {
        base[q] = from_f<T>(x * factor);
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
  const int64_t* m = meta + meta::kWidth * tid[j];
  const int64_t rows = m[meta::kRows], cols = m[meta::kCols], i = idx[j];
  const int64_t q = m[meta::kTransposed] ? (i % cols) * rows + i / cols : i;
  const float a = fac[j];
  if (mask_out) {
    if (a != 0.0f) reinterpret_cast<int8_t*>(m[meta::kMaskPtr])[q] = 1;
  } else {
    T* base = reinterpret_cast<T*>(m[meta::kPtr]);
    base[q] = from_f<T>(a == 0.0f ? 0.0f : load_f(base + q) * a);
  }
}

}  // namespace

cudaError_t topk_sample(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                        int64_t T, int64_t S, int dtype, cudaStream_t stream) {
  if (T == 0 || S == 0) return cudaSuccess;
  dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((S + kThreads - 1) / kThreads));
  SF_DISPATCH(dtype, (sample_kernel<T><<<grid, kThreads, 0, stream>>>(meta, thr, cut, out, S)));
  return cudaGetLastError();
}

cudaError_t topk_hist(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                      const int64_t* thr, const int64_t* cut, const int64_t* win, int64_t* hist, int dtype,
                      cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  SF_DISPATCH(dtype, (hist_kernel<T><<<static_cast<unsigned>(P), kThreads, 0, stream>>>(
                         prog_tid, prog_start, meta, thr, cut, win, hist)));
  return cudaGetLastError();
}

cudaError_t topk_apply(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                       const int64_t* thr, const int64_t* cut, const int64_t* dec, const float* decay,
                       int32_t* cnt, int64_t* ckey, int64_t* cidx, int dtype, bool mask_out,
                       cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  SF_DISPATCH(dtype, (apply_kernel<T><<<static_cast<unsigned>(P), kThreads, 0, stream>>>(
                         prog_tid, prog_start, meta, thr, cut, dec, decay, cnt, ckey, cidx, mask_out)));
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
