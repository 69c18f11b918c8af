// Host entry points of the CUDA kernels and the layouts of the tables they read (no torch headers: nvcc
// builds these files on any machine). kernels/_schema.py declares the same constants and columns, and
// tests/kernels/test_schema.py compares the two; docs/kernels.md describes the algorithm. The Python side
// (kernels/topk/tables.py, kernels/adamw/device.py) builds the tables. Each function launches on `stream`
// and returns cudaGetLastError().
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace sf {

constexpr int kBins = 2048;                // histogram bins per tensor and window (NB)
constexpr int kThreads = 256;              // threads per block
constexpr int kItems = 16;                 // elements per thread
constexpr int kBlock = 4096;               // elements per block (CUDA_BLOCK)
static_assert(kBlock == kThreads * kItems, "a block covers kThreads x kItems elements");
constexpr int64_t kProt = int64_t(1) << 31;   // added to the key of a protected entry (PROT)
constexpr uint32_t kInfBits = 0x7F800000u;  // |x| bits at or above it are inf or NaN (INF_BITS)

// The tables (kernels/_schema.py gives each column's meaning). Rows are per tensor; kWidth is the row length.
namespace dtype_code { enum : int { kFloat32, kFloat16, kBfloat16, kFloat64 }; }     // `dtype` arguments
// int64 [T, kWidth]: kOffset is read by Triton only; a transposed tensor is a 2-D view with strides (1, rows)
namespace meta {
enum : int { kPtr, kNumel, kRows, kCols, kTransposed, kProtected, kRowOffset, kMaskPtr, kOffset, kWidth };
}
namespace window { enum : int { kLo, kShift, kActive, kWidth }; }                    // int64 [T, kWidth]
namespace hist { enum : int { kAbove, kBad, kFirstBin, kWidth = kFirstBin + kBins }; }  // int64 [T, kWidth]
namespace decision { enum : int { kLo, kHi, kCandOffset, kActive, kWidth }; }       // int64 [T, kWidth]
// int64 [T, kWidth]: kSlot is the row in the projection's window/hist tables or -1; k*Off are read by Triton
namespace adam_ptrs {
enum : int { kP, kG, kM, kV, kNumel, kSlot, kPOff, kGOff, kMOff, kVOff, kWidth };
}
namespace adam_hyp {                                                                  // float [T, kWidth]
enum : int { kStepSize, kBc2, kEps, kOmb1, kBeta2, kDecay, kOmb2, kWidth };
}

cudaError_t topk_sample(const int64_t* meta, const int64_t* thr, const int64_t* cut, int64_t* out,
                        int64_t T, int64_t S, int dtype, cudaStream_t stream);
cudaError_t topk_hist(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                      const int64_t* thr, const int64_t* cut, const int64_t* win, int64_t* hist, int dtype,
                      cudaStream_t stream);
cudaError_t topk_apply(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* meta,
                       const int64_t* thr, const int64_t* cut, const int64_t* dec, const float* decay,
                       int32_t* cnt, int64_t* ckey, int64_t* cidx, int dtype, bool mask_out,
                       cudaStream_t stream);
cudaError_t topk_scatter(const int64_t* tid, const int64_t* idx, const float* fac, int64_t M,
                         const int64_t* meta, int dtype, bool mask_out, cudaStream_t stream);
cudaError_t adamw(const int32_t* prog_tid, const int64_t* prog_start, int64_t P, const int64_t* ptrs,
                  const float* hyp, const float* scale, const int64_t* win, int64_t* hist, int dtype,
                  cudaStream_t stream);

}  // namespace sf
