// The only file that knows about Python: argument checks, GIL release, module _C.
// Full validation with friendly messages lives in drfast/search/validate.py; these checks
// are the last line of defence so that no call from Python can crash the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/kernels.h"
#include "cpu/first_pass_kernels.h"
#include "cpu/two_stage.h"
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
  if (in.pos_scores_in) return;  // given scores: no positive row is read, any id is fine
  for (int64_t i = 0; i < in.pos_offsets[in.B]; ++i)
    DRFAST_CHECK(in.pos_ids[i] >= 0 && in.pos_ids[i] < in.N, "pos_ids: row id out of range");
}

// The optional given positive scores (SearchInput::pos_scores_in): float32 [nnz], without pair weights.
void set_given_scores(SearchInput& in, const py::object& pos_scores_in, py::array& keep_alive) {
  if (pos_scores_in.is_none()) return;
  keep_alive = pos_scores_in.cast<py::array>();
  check_array(keep_alive, "pos_scores_in", 'f', 4, 1);
  DRFAST_CHECK(keep_alive.shape(0) == in.pos_offsets[in.B], "pos_scores_in: expected [nnz] entries");
  DRFAST_CHECK(in.cutoff == 0, "pos_scores_in: not with cutoff > 0");
  in.pos_scores_in = static_cast<const float*>(keep_alive.data());
}

// Checks of the positives and outputs shared by the flat and PQ entry points; fills `in`'s
// positives and `out`.
void check_positives_and_outputs(SearchInput& in, py::array& pos_offsets, py::array& pos_ids, py::array& ids,
                                 py::array& scores, py::array& pos_scores, py::array& pos_ranks,
                                 py::object& pair_weights, SearchOutput& out, const py::object& pos_scores_in,
                                 py::array& given) {
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
  set_given_scores(in, pos_scores_in, given);
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

// The checked queries [B, d] float32 and rows [N, d] float32/float16 of a flat search.
SearchInput flat_input(py::array queries, py::array docs, int64_t k, int64_t cutoff) {
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
  return in;
}

void flat_search_cpu(py::array queries, py::array docs, int64_t k, py::array pos_offsets, py::array pos_ids,
                     int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                     py::object pair_weights, py::object pos_scores_in) {
  SearchInput in = flat_input(queries, docs, k, cutoff);
  SearchOutput out;
  py::array given;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out,
                              pos_scores_in, given);
  py::gil_scoped_release release;
  drfast::flat_search(in, out);
}

void pq_search_cpu(py::array luts, py::array codes, int64_t k, py::array pos_offsets, py::array pos_ids,
                   int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                   py::object pair_weights, py::object pos_scores_in) {
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
  py::array given;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out,
                              pos_scores_in, given);
  py::gil_scoped_release release;
  drfast::pq_search(in, static_cast<const float*>(luts.data()), static_cast<const uint8_t*>(codes.data()),
                    luts.shape(1), out);
}

// The exact two-stage search (cpu/two_stage.h): the flat search's arguments, then the first pass
// (kind 0 int8 / 1 bf16; query codes [B, dp], qparams float32 [B, 3] = c, alpha, beta; row codes
// [N, dp], row stats float32 [3, N] = a, e, m; row code sums int32 [N] (int8) or [0]), the optional
// int8 refinement (None, or q2codes [B, dp], q2params [B, 4] = c2, beta1, beta2, w2, rcodes [N, dp],
// rstats2 [4, N] = a2, e2, m2, n2, rsums2 [N]) and work counters int64 [B, 3] and [nnz, 2].
void two_stage_search_cpu(py::array queries, py::array docs, int64_t k, py::array pos_offsets, py::array pos_ids,
                          int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                          py::object pair_weights, int kind, py::array qcodes, py::array qparams, py::array codes,
                          py::array rstats, py::array rsums, py::object refine, py::array work_q, py::array work_p,
                          py::object pos_scores_in) {
  SearchInput in = flat_input(queries, docs, k, cutoff);
  SearchOutput out;
  py::array given;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out,
                              pos_scores_in, given);
  DRFAST_CHECK(kind == drfast::kFpKindInt8 || kind == drfast::kFpKindBf16, "kind: expected 0 (int8) or 1 (bf16)");
  const bool int8 = kind == drfast::kFpKindInt8;
  const int64_t esize = int8 ? 1 : 2, dp = (in.d * esize + drfast::kFpAlign - 1) / drfast::kFpAlign * drfast::kFpAlign / esize;
  DRFAST_CHECK(!int8 || in.d <= 65536, "int8 first pass: d must be <= 65536 (int32 sums)");
  check_array(qcodes, "qcodes", 'u', static_cast<int>(esize), 2);
  check_array(codes, "codes", int8 ? 'i' : 'u', static_cast<int>(esize), 2);
  check_array(qparams, "qparams", 'f', 4, 2);
  check_array(rstats, "rstats", 'f', 4, 2);
  check_array(rsums, "rsums", 'i', 4, 1);
  check_array(work_q, "work_q", 'i', 8, 2);
  check_array(work_p, "work_p", 'i', 8, 2);
  DRFAST_CHECK(qcodes.shape(0) == in.B && qcodes.shape(1) == dp, "qcodes: expected shape [B, dp]");
  DRFAST_CHECK(codes.shape(0) == in.N && codes.shape(1) == dp, "codes: expected shape [N, dp]");
  DRFAST_CHECK(qparams.shape(0) == in.B && qparams.shape(1) == 3, "qparams: expected shape [B, 3]");
  DRFAST_CHECK(rstats.shape(0) == 3 && rstats.shape(1) == in.N, "rstats: expected shape [3, N]");
  DRFAST_CHECK(rsums.shape(0) == (int8 ? in.N : 0) || rsums.shape(0) == in.N, "rsums: expected shape [N]");
  DRFAST_CHECK(!int8 || rsums.shape(0) == in.N, "rsums: expected shape [N]");
  const int64_t nnz = pos_ids.shape(0);
  DRFAST_CHECK(work_q.shape(0) == in.B && work_q.shape(1) == 3, "work_q: expected shape [B, 3]");
  DRFAST_CHECK(work_p.shape(0) == nnz && work_p.shape(1) == 2, "work_p: expected shape [nnz, 2]");
  // Transposed query parameters: one contiguous array per field.
  std::vector<float> qp(static_cast<size_t>(in.B) * 7);
  const float* qpp = static_cast<const float*>(qparams.data());
  for (int64_t b = 0; b < in.B; ++b)
    for (int j = 0; j < 3; ++j) qp[j * in.B + b] = qpp[b * 3 + j];
  const float* rs = static_cast<const float*>(rstats.data());
  drfast::FirstPassView fp{kind, in.B, dp, qcodes.data(), qp.data(), qp.data() + in.B, qp.data() + 2 * in.B,
                           codes.data(), rs, int8 ? static_cast<const int32_t*>(rsums.data()) : nullptr,
                           rs + in.N, rs + 2 * in.N};
  drfast::RefineView rv;
  py::array q2codes, q2params, rcodes, rstats2, rsums2;  // kept alive until the kernel returns
  if (!refine.is_none()) {
    DRFAST_CHECK(int8, "refine: only the int8 first pass has a refinement");
    py::tuple t = refine.cast<py::tuple>();
    DRFAST_CHECK(t.size() == 5, "refine: expected (q2codes, q2params, rcodes, rstats2, rsums2)");
    q2codes = t[0].cast<py::array>();
    q2params = t[1].cast<py::array>();
    rcodes = t[2].cast<py::array>();
    rstats2 = t[3].cast<py::array>();
    rsums2 = t[4].cast<py::array>();
    check_array(q2codes, "q2codes", 'u', 1, 2);
    check_array(q2params, "q2params", 'f', 4, 2);
    check_array(rcodes, "rcodes", 'i', 1, 2);
    check_array(rstats2, "rstats2", 'f', 4, 2);
    check_array(rsums2, "rsums2", 'i', 4, 1);
    DRFAST_CHECK(q2codes.shape(0) == in.B && q2codes.shape(1) == dp, "q2codes: expected shape [B, dp]");
    DRFAST_CHECK(q2params.shape(0) == in.B && q2params.shape(1) == 4, "q2params: expected shape [B, 4]");
    DRFAST_CHECK(rcodes.shape(0) == in.N && rcodes.shape(1) == dp, "rcodes: expected shape [N, dp]");
    DRFAST_CHECK(rstats2.shape(0) == 4 && rstats2.shape(1) == in.N, "rstats2: expected shape [4, N]");
    DRFAST_CHECK(rsums2.shape(0) == in.N, "rsums2: expected shape [N]");
    const float* q2 = static_cast<const float*>(q2params.data());
    for (int64_t b = 0; b < in.B; ++b)
      for (int j = 0; j < 4; ++j) qp[(3 + j) * in.B + b] = q2[b * 4 + j];
    const float* r2 = static_cast<const float*>(rstats2.data());
    rv.rcodes = static_cast<const int8_t*>(rcodes.data());
    rv.rscale = r2;
    rv.rerr = r2 + in.N;
    rv.rnorm = r2 + 2 * in.N;
    rv.rresnorm = r2 + 3 * in.N;
    rv.rsum = static_cast<const int32_t*>(rsums2.data());
    rv.q2codes = static_cast<const uint8_t*>(q2codes.data());
    rv.qscale2 = qp.data() + 3 * in.B;
    rv.beta1 = qp.data() + 4 * in.B;
    rv.beta2 = qp.data() + 5 * in.B;
    rv.w2 = qp.data() + 6 * in.B;
  }
  drfast::TwoStageStats st{mutable_data<int64_t>(work_q, "work_q"), mutable_data<int64_t>(work_p, "work_p")};
  py::gil_scoped_release release;
  drfast::two_stage_search(in, fp, rv, out, st);
}

// The positives' CSR and the [nnz] float32 output of the score-positives entries; fills `in`.
float* positives_for_scoring(SearchInput& in, py::array& pos_offsets, py::array& pos_ids, py::array& pos_scores) {
  check_array(pos_offsets, "pos_offsets", 'i', 8, 1);
  check_array(pos_ids, "pos_ids", 'i', 8, 1);
  check_array(pos_scores, "pos_scores", 'f', 4, 1);
  DRFAST_CHECK(in.B >= 0 && pos_offsets.shape(0) == in.B + 1, "pos_offsets: expected B + 1 entries");
  in.pos_offsets = static_cast<const int64_t*>(pos_offsets.data());
  in.pos_ids = static_cast<const int64_t*>(pos_ids.data());
  DRFAST_CHECK(in.pos_offsets[in.B] == pos_ids.shape(0), "pos_ids: length differs from pos_offsets[B]");
  DRFAST_CHECK(pos_scores.shape(0) == pos_ids.shape(0), "pos_scores: expected [nnz] entries");
  check_positives_host(in);
  return mutable_data<float>(pos_scores, "pos_scores");
}

void flat_score_positives_cpu(py::array queries, py::array docs, py::array pos_offsets, py::array pos_ids,
                              py::array pos_scores) {
  SearchInput in = flat_input(queries, docs, 1, 0);
  DRFAST_CHECK(in.N >= 1 && in.d >= 1, "docs: need at least one row and one column");
  float* out = positives_for_scoring(in, pos_offsets, pos_ids, pos_scores);
  py::gil_scoped_release release;
  drfast::flat_score_positives(in, out);
}

void pq_score_positives_cpu(py::array luts, py::array codes, py::array pos_offsets, py::array pos_ids,
                            py::array pos_scores) {
  check_array(luts, "luts", 'f', 4, 3);
  check_array(codes, "codes", 'u', 1, 2);
  DRFAST_CHECK(luts.shape(2) == 256, "luts: expected shape [B, m, 256]");
  DRFAST_CHECK(codes.shape(1) == luts.shape(1) && luts.shape(1) >= 1, "codes: expected shape [N, m] with the luts' m");
  SearchInput in;
  in.B = luts.shape(0);
  in.d = luts.shape(1);
  in.N = codes.shape(0);
  float* out = positives_for_scoring(in, pos_offsets, pos_ids, pos_scores);
  py::gil_scoped_release release;
  drfast::pq_score_positives(in, static_cast<const float*>(luts.data()), static_cast<const uint8_t*>(codes.data()),
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
        py::arg("pair_weights") = py::none(), py::arg("pos_scores_in") = py::none());
  m.def("pq_search", &pq_search_cpu, "Fused PQ search on the CPU from per-query lookup tables (outputs preallocated)",
        py::arg("luts"), py::arg("codes"), py::arg("k"), py::arg("pos_offsets"), py::arg("pos_ids"),
        py::arg("cutoff"), py::arg("ids"), py::arg("scores"), py::arg("pos_scores"), py::arg("pos_ranks"),
        py::arg("pair_weights") = py::none(), py::arg("pos_scores_in") = py::none());
  m.def("two_stage_search", &two_stage_search_cpu,
        "Exact two-stage flat search on the CPU: low-precision first pass with proven bounds, exact rescoring",
        py::arg("queries"), py::arg("docs"), py::arg("k"), py::arg("pos_offsets"), py::arg("pos_ids"),
        py::arg("cutoff"), py::arg("ids"), py::arg("scores"), py::arg("pos_scores"), py::arg("pos_ranks"),
        py::arg("pair_weights"), py::arg("kind"), py::arg("qcodes"), py::arg("qparams"), py::arg("codes"),
        py::arg("rstats"), py::arg("rsums"), py::arg("refine"), py::arg("work_q"), py::arg("work_p"),
        py::arg("pos_scores_in") = py::none());
  m.def("flat_score_positives", &flat_score_positives_cpu,
        "The positives' scores alone, bit-identical to flat_search's (the sharded search's owner scores)",
        py::arg("queries"), py::arg("docs"), py::arg("pos_offsets"), py::arg("pos_ids"), py::arg("pos_scores"));
  m.def("pq_score_positives", &pq_score_positives_cpu,
        "The positives' scores alone, bit-identical to pq_search's (the sharded search's owner scores)",
        py::arg("luts"), py::arg("codes"), py::arg("pos_offsets"), py::arg("pos_ids"), py::arg("pos_scores"));
  m.def("first_pass_kernels", []() { return std::string(drfast::active_first_pass().name); });
  m.def("fast_first_pass_kinds", []() { return std::string(drfast::fast_first_pass_kinds()); });
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
