// Host entry points of the CUDA kernels (no torch headers: nvcc builds these files on any machine).
// Tables and their layouts are those of kernels/topk_triton.py and kernels/adamw_triton.py; the Python
// side (kernels/topk_device.py) builds them. dtype codes: 0 float32, 1 float16, 2 bfloat16, 3 float64.
// Each function launches on `stream` and returns cudaGetLastError().
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace sf {

constexpr int kBins = 2048;         // histogram bins per tensor (topk_device.NB)
constexpr int kThreads = 256;       // threads per block
constexpr int kItems = 16;          // elements per thread
constexpr int kBlock = kThreads * kItems;  // elements per block: the Python block table's BLOCK (4096)
constexpr int kMetaCols = 12;      // columns of the per-tensor tables (meta, ptrs)

cudaError_t topk_sample(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                        int64_t T, int64_t S, int dtype, cudaStream_t stream);
cudaError_t topk_hist(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                      const int64_t* thr, const int64_t* cut, const int64_t* win, int32_t* hist,
                      int64_t* stats, int dtype, cudaStream_t stream);
cudaError_t topk_apply(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                       const int64_t* thr, const int64_t* cut, const int64_t* fin, const float* decay,
                       int32_t* cnt, int64_t* ckey, int64_t* cidx, int dtype, bool mask_out,
                       cudaStream_t stream);
cudaError_t topk_scatter(const int64_t* tid, const int64_t* idx, const float* fac, int64_t M,
                         const int64_t* meta, int dtype, bool mask_out, cudaStream_t stream);
cudaError_t adamw(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* ptrs,
                  const float* hyp, const float* scale, const int64_t* win, int32_t* hist, int64_t* stats,
                  int dtype, cudaStream_t stream);

}  // namespace sf
