// The only file that knows about Python: argument checks, GIL release, module _C.
// Full validation with friendly messages lives in drfast/search/validate.py; these checks
// are the last line of defence so that no call from Python can crash the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/kernels.h"
#ifdef DRFAST_WITH_CUDA
#include "cuda/flat_search_cuda.h"
#include "cuda/pq_search_cuda.h"
#endif

namespace py = pybind11;
using drfast::SearchInput;
using drfast::SearchOutput;

namespace {

#define DRFAST_CHECK(cond, msg) \
  do {                          \
    if (!(cond)) throw std::invalid_argument(msg); \
  } while (0)

void check_array(const py::array& a, const char* name, char kind, int itemsize, py::ssize_t ndim) {
  DRFAST_CHECK(a.dtype().kind() == kind && a.itemsize() == itemsize,
               std::string(name) + ": wrong dtype");
  DRFAST_CHECK(a.ndim() == ndim, std::string(name) + ": wrong number of dimensions");
  DRFAST_CHECK(a.flags() & py::array::c_style, std::string(name) + ": must be C-contiguous");
}

template <class T>
T* mutable_data(py::array& a, const char* name) {
  DRFAST_CHECK(a.writeable(), std::string(name) + ": must be writeable");
  return static_cast<T*>(a.mutable_data());
}

// Checks shared by the CPU and CUDA entry points once pointers are known.
void check_search(const SearchInput& in) {
  DRFAST_CHECK(in.B >= 1, "queries: need at least one row");
  DRFAST_CHECK(in.N >= 1, "docs: need at least one row");
  DRFAST_CHECK(in.d >= 1, "queries: need at least one column");
  DRFAST_CHECK(in.k >= 1, "k must be >= 1");
  DRFAST_CHECK(in.cutoff >= 0, "cutoff must be >= 0");
}

void check_positives_host(const SearchInput& in) {
  DRFAST_CHECK(in.pos_offsets[0] == 0, "pos_offsets[0] must be 0");
  for (int64_t b = 0; b < in.B; ++b)
    DRFAST_CHECK(in.pos_offsets[b + 1] >= in.pos_offsets[b], "pos_offsets must be non-decreasing");
  for (int64_t i = 0; i < in.pos_offsets[in.B]; ++i)
    DRFAST_CHECK(in.pos_ids[i] >= 0 && in.pos_ids[i] < in.N, "pos_ids: row id out of range");
}

// Checks of the positives and outputs shared by the flat and PQ entry points; fills `in`'s
// positives and `out`.
void check_positives_and_outputs(SearchInput& in, py::array& pos_offsets, py::array& pos_ids, py::array& ids,
                                 py::array& scores, py::array& pos_scores, py::array& pos_ranks,
                                 py::object& pair_weights, SearchOutput& out) {
  check_array(pos_offsets, "pos_offsets", 'i', 8, 1);
  check_array(pos_ids, "pos_ids", 'i', 8, 1);
  check_array(ids, "ids", 'i', 8, 2);
  check_array(scores, "scores", 'f', 4, 2);
  check_array(pos_scores, "pos_scores", 'f', 4, 1);
  check_array(pos_ranks, "pos_ranks", 'i', 8, 1);
  check_search(in);
  DRFAST_CHECK(pos_offsets.shape(0) == in.B + 1, "pos_offsets: expected B + 1 entries");
  in.pos_offsets = static_cast<const int64_t*>(pos_offsets.data());
  in.pos_ids = static_cast<const int64_t*>(pos_ids.data());
  DRFAST_CHECK(in.pos_offsets[in.B] == pos_ids.shape(0), "pos_ids: length differs from pos_offsets[B]");
  check_positives_host(in);
  const int64_t nnz = pos_ids.shape(0), k = in.k;
  DRFAST_CHECK(ids.shape(0) == in.B && ids.shape(1) == k, "ids: expected shape [B, k]");
  DRFAST_CHECK(scores.shape(0) == in.B && scores.shape(1) == k, "scores: expected shape [B, k]");
  DRFAST_CHECK(pos_scores.shape(0) == nnz && pos_ranks.shape(0) == nnz, "pos_scores/pos_ranks: expected [nnz]");
  out.ids = mutable_data<int64_t>(ids, "ids");
  out.scores = mutable_data<float>(scores, "scores");
  out.pos_scores = mutable_data<float>(pos_scores, "pos_scores");
  out.pos_ranks = mutable_data<int64_t>(pos_ranks, "pos_ranks");
  if (in.cutoff > 0) {
    DRFAST_CHECK(!pair_weights.is_none(), "pair_weights: required when cutoff > 0");
    py::array w = pair_weights.cast<py::array>();
    check_array(w, "pair_weights", 'f', 4, 2);
    DRFAST_CHECK(w.shape(0) == nnz && w.shape(1) == k, "pair_weights: expected shape [nnz, k]");
    out.pair_weights = mutable_data<float>(w, "pair_weights");
  }
}

void flat_search_cpu(py::array queries, py::array docs, int64_t k, py::array pos_offsets, py::array pos_ids,
                     int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                     py::object pair_weights) {
  check_array(queries, "queries", 'f', 4, 2);
  check_array(docs, "docs", 'f', docs.itemsize() == 2 ? 2 : 4, 2);
  SearchInput in;
  in.queries = static_cast<const float*>(queries.data());
  in.B = queries.shape(0);
  in.d = queries.shape(1);
  in.docs = docs.data();
  in.N = docs.shape(0);
  in.docs_fp16 = docs.itemsize() == 2;
  in.k = k;
  in.cutoff = cutoff;
  DRFAST_CHECK(docs.shape(1) == in.d, "docs: dimension differs from queries");
  SearchOutput out;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out);
  py::gil_scoped_release release;
  drfast::flat_search(in, out);
}

void pq_search_cpu(py::array luts, py::array codes, int64_t k, py::array pos_offsets, py::array pos_ids,
                   int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                   py::object pair_weights) {
  check_array(luts, "luts", 'f', 4, 3);
  check_array(codes, "codes", 'u', 1, 2);
  DRFAST_CHECK(luts.shape(2) == 256, "luts: expected shape [B, m, 256]");
  DRFAST_CHECK(codes.shape(1) == luts.shape(1), "codes: expected shape [N, m] with the luts' m");
  DRFAST_CHECK(luts.shape(1) >= 1, "luts: m must be >= 1");
  SearchInput in;
  in.B = luts.shape(0);
  in.d = luts.shape(1);
  in.N = codes.shape(0);
  in.k = k;
  in.cutoff = cutoff;
  SearchOutput out;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out);
  py::gil_scoped_release release;
  drfast::pq_search(in, static_cast<const float*>(luts.data()), static_cast<const uint8_t*>(codes.data()),
                    luts.shape(1), out);
}

#ifdef DRFAST_WITH_CUDA
SearchOutput device_outputs(uintptr_t ids, uintptr_t scores, uintptr_t pos_scores, uintptr_t pos_ranks,
                            uintptr_t pair_weights) {
  SearchOutput out;
  out.ids = reinterpret_cast<int64_t*>(ids);
  out.scores = reinterpret_cast<float*>(scores);
  out.pos_scores = reinterpret_cast<float*>(pos_scores);
  out.pos_ranks = reinterpret_cast<int64_t*>(pos_ranks);
  out.pair_weights = reinterpret_cast<float*>(pair_weights);
  return out;
}

// Device pointers come from torch tensors (tensor.data_ptr()); shapes are checked in drfast/search.
void flat_search_cuda(uintptr_t queries, int64_t B, int64_t d, uintptr_t docs, int64_t N, bool docs_fp16, int64_t k,
                      uintptr_t pos_offsets, uintptr_t pos_ids, int64_t cutoff, uintptr_t ids, uintptr_t scores,
                      uintptr_t pos_scores, uintptr_t pos_ranks, uintptr_t pair_weights, uintptr_t stream) {
  SearchInput in;
  in.queries = reinterpret_cast<const float*>(queries);
  in.B = B;
  in.d = d;
  in.docs = reinterpret_cast<const void*>(docs);
  in.N = N;
  in.docs_fp16 = docs_fp16;
  in.k = k;
  in.pos_offsets = reinterpret_cast<const int64_t*>(pos_offsets);
  in.pos_ids = reinterpret_cast<const int64_t*>(pos_ids);
  in.cutoff = cutoff;
  check_search(in);
  const SearchOutput out = device_outputs(ids, scores, pos_scores, pos_ranks, pair_weights);
  py::gil_scoped_release release;
  drfast::flat_search_cuda(in, out, reinterpret_cast<void*>(stream));
}

void pq_search_cuda(uintptr_t luts, int64_t B, int64_t m, uintptr_t codes, int64_t N, int64_t k,
                    uintptr_t pos_offsets, uintptr_t pos_ids, int64_t cutoff, uintptr_t ids, uintptr_t scores,
                    uintptr_t pos_scores, uintptr_t pos_ranks, uintptr_t pair_weights, uintptr_t stream) {
  SearchInput in;
  in.B = B;
  in.d = m;
  in.N = N;
  in.k = k;
  in.pos_offsets = reinterpret_cast<const int64_t*>(pos_offsets);
  in.pos_ids = reinterpret_cast<const int64_t*>(pos_ids);
  in.cutoff = cutoff;
  check_search(in);
  const SearchOutput out = device_outputs(ids, scores, pos_scores, pos_ranks, pair_weights);
  py::gil_scoped_release release;
  drfast::pq_search_cuda(in, reinterpret_cast<const float*>(luts), reinterpret_cast<const uint8_t*>(codes), m, out,
                         reinterpret_cast<void*>(stream));
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "drfast native kernels";
  m.def("flat_search", &flat_search_cpu, "Fused flat search on the CPU (outputs preallocated)",
        py::arg("queries"), py::arg("docs"), py::arg("k"), py::arg("pos_offsets"), py::arg("pos_ids"),
        py::arg("cutoff"), py::arg("ids"), py::arg("scores"), py::arg("pos_scores"), py::arg("pos_ranks"),
        py::arg("pair_weights") = py::none());
  m.def("pq_search", &pq_search_cpu, "Fused PQ search on the CPU from per-query lookup tables (outputs preallocated)",
        py::arg("luts"), py::arg("codes"), py::arg("k"), py::arg("pos_offsets"), py::arg("pos_ids"),
        py::arg("cutoff"), py::arg("ids"), py::arg("scores"), py::arg("pos_scores"), py::arg("pos_ranks"),
        py::arg("pair_weights") = py::none());
  m.def("simd_level", []() { return std::string(drfast::simd_level()); });
  m.def("set_simd_level", &drfast::set_simd_level, py::arg("level"));
  m.def("supported_simd_levels", &drfast::supported_simd_levels);
  m.def("num_threads", &drfast::num_threads);
  m.def("set_num_threads", &drfast::set_num_threads, py::arg("n"));
#ifdef DRFAST_WITH_CUDA
  m.attr("built_with_cuda") = true;
  m.def("cuda_device_available", &drfast::cuda_device_available);
  m.def("flat_search_cuda", &flat_search_cuda);
  m.def("pq_search_cuda", &pq_search_cuda);
#else
  m.attr("built_with_cuda") = false;
  m.def("cuda_device_available", []() { return false; });
#endif
}
