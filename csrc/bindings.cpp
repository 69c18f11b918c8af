// Python bindings of the CUDA kernels: sparseformer.kernels._C. Each op checks its tensors (device,
// dtype, contiguity, table widths) and launches on the current stream; kernels/topk/cuda_kernels.py and
// kernels/adamw/cuda_kernels.py call them with the tables of csrc/sf_kernels.h.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sf_kernels.h"

namespace {

void check(const at::Tensor& t, at::ScalarType st, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == st, op, ": ", name, " must be ", c10::toString(st), ", got ",
              c10::toString(t.scalar_type()));
}

void check_table(const at::Tensor& t, at::ScalarType st, int64_t width, const char* op, const char* name) {
  check(t, st, op, name);
  TORCH_CHECK(t.dim() == 2 && t.size(1) == width, op, ": ", name, " must be [T, ", width, "], got ", t.sizes());
}

void done(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

int dtype_code(int64_t code) {
  TORCH_CHECK(code >= sf::dtype_code::kFloat32 && code <= sf::dtype_code::kFloat64,
              "dtype code must be 0 (f32), 1 (f16), 2 (bf16) or 3 (f64), got ", code);
  return static_cast<int>(code);
}

void topk_sample(at::Tensor meta, at::Tensor thr, at::Tensor cut, at::Tensor out, int64_t dtype) {
  const char* op = "topk_sample";
  check_table(meta, at::kLong, sf::meta::kWidth, op, "meta");
  check(thr, at::kLong, op, "thr"); check(cut, at::kLong, op, "cut"); check(out, at::kLong, op, "out");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == meta.size(0), op, ": out must be [T, S]");
  const c10::cuda::CUDAGuard guard(meta.device());
  done(sf::topk_sample(meta.data_ptr<int64_t>(), thr.data_ptr<int64_t>(), cut.data_ptr<int64_t>(),
                       out.data_ptr<int64_t>(), out.size(0), out.size(1), dtype_code(dtype),
                       c10::cuda::getCurrentCUDAStream()), op);
}

void topk_hist(at::Tensor prog_tid, at::Tensor prog_start, at::Tensor meta, at::Tensor thr, at::Tensor cut,
               at::Tensor win, at::Tensor hist, int64_t dtype) {
  const char* op = "topk_hist";
  check(prog_tid, at::kInt, op, "prog_tid"); check(prog_start, at::kLong, op, "prog_start");
  check_table(meta, at::kLong, sf::meta::kWidth, op, "meta");
  check(thr, at::kLong, op, "thr"); check(cut, at::kLong, op, "cut");
  check_table(win, at::kLong, sf::window::kWidth, op, "win");
  check_table(hist, at::kLong, sf::hist::kWidth, op, "hist");
  const c10::cuda::CUDAGuard guard(meta.device());
  done(sf::topk_hist(prog_tid.data_ptr<int32_t>(), prog_start.data_ptr<int64_t>(), prog_tid.numel(),
                     meta.data_ptr<int64_t>(), thr.data_ptr<int64_t>(), cut.data_ptr<int64_t>(),
                     win.data_ptr<int64_t>(), hist.data_ptr<int64_t>(), dtype_code(dtype),
                     c10::cuda::getCurrentCUDAStream()), op);
}

void topk_apply(at::Tensor prog_tid, at::Tensor prog_start, at::Tensor meta, at::Tensor thr, at::Tensor cut,
                at::Tensor dec, at::Tensor decay, at::Tensor cnt, at::Tensor ckey, at::Tensor cidx,
                int64_t dtype, bool mask_out) {
  const char* op = "topk_apply";
  check(prog_tid, at::kInt, op, "prog_tid"); check(prog_start, at::kLong, op, "prog_start");
  check_table(meta, at::kLong, sf::meta::kWidth, op, "meta");
  check(thr, at::kLong, op, "thr"); check(cut, at::kLong, op, "cut");
  check_table(dec, at::kLong, sf::decision::kWidth, op, "dec");
  check(decay, at::kFloat, op, "decay"); check(cnt, at::kInt, op, "cnt");
  check(ckey, at::kLong, op, "ckey"); check(cidx, at::kLong, op, "cidx");
  const c10::cuda::CUDAGuard guard(meta.device());
  done(sf::topk_apply(prog_tid.data_ptr<int32_t>(), prog_start.data_ptr<int64_t>(), prog_tid.numel(),
                      meta.data_ptr<int64_t>(), thr.data_ptr<int64_t>(), cut.data_ptr<int64_t>(),
                      dec.data_ptr<int64_t>(), decay.data_ptr<float>(), cnt.data_ptr<int32_t>(),
                      ckey.data_ptr<int64_t>(), cidx.data_ptr<int64_t>(), dtype_code(dtype), mask_out,
                      c10::cuda::getCurrentCUDAStream()), op);
}

void topk_scatter(at::Tensor tid, at::Tensor idx, at::Tensor fac, at::Tensor meta, int64_t dtype, bool mask_out) {
  const char* op = "topk_scatter";
  check(tid, at::kLong, op, "tid"); check(idx, at::kLong, op, "idx"); check(fac, at::kFloat, op, "fac");
  check_table(meta, at::kLong, sf::meta::kWidth, op, "meta");
  TORCH_CHECK(tid.numel() == idx.numel() && fac.numel() == idx.numel(), op, ": tid, idx, fac differ in size");
  const c10::cuda::CUDAGuard guard(meta.device());
  done(sf::topk_scatter(tid.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), fac.data_ptr<float>(), idx.numel(),
                        meta.data_ptr<int64_t>(), dtype_code(dtype), mask_out,
                        c10::cuda::getCurrentCUDAStream()), op);
}

void adamw(at::Tensor prog_tid, at::Tensor prog_start, at::Tensor ptrs, at::Tensor hyp, at::Tensor scale,
           at::Tensor win, at::Tensor hist, int64_t dtype) {
  const char* op = "adamw";
  check(prog_tid, at::kInt, op, "prog_tid"); check(prog_start, at::kLong, op, "prog_start");
  check_table(ptrs, at::kLong, sf::adam_ptrs::kWidth, op, "ptrs");
  check_table(hyp, at::kFloat, sf::adam_hyp::kWidth, op, "hyp");
  check(scale, at::kFloat, op, "scale");
  check_table(win, at::kLong, sf::window::kWidth, op, "win");
  check_table(hist, at::kLong, sf::hist::kWidth, op, "hist");
  const c10::cuda::CUDAGuard guard(ptrs.device());
  done(sf::adamw(prog_tid.data_ptr<int32_t>(), prog_start.data_ptr<int64_t>(), prog_tid.numel(),
                 ptrs.data_ptr<int64_t>(), hyp.data_ptr<float>(), scale.data_ptr<float>(), win.data_ptr<int64_t>(),
                 hist.data_ptr<int64_t>(), dtype_code(dtype), c10::cuda::getCurrentCUDAStream()), op);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparseformer CUDA kernels: batched exact top-k projection passes and the fused AdamW pass";
  m.attr("BLOCK") = sf::kBlock;
  m.attr("BINS") = sf::kBins;
  m.def("topk_sample", &topk_sample, "sampled keys per tensor");
  m.def("topk_hist", &topk_hist, "window histogram pass");
  m.def("topk_apply", &topk_apply, "zero / scale / list-candidates pass");
  m.def("topk_scatter", &topk_scatter, "scale listed entries");
  m.def("adamw", &adamw, "fused Adam pass (+ first projection histogram)");
}
