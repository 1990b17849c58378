// The only file that knows about Python: argument checks, GIL release, module _C.
// Full validation with friendly messages lives in drfast/search/validate.py; these checks
// are the last line of defence so that no call from Python can crash the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/kernels.h"
#include "cpu/first_pass_kernels.h"
#include "cpu/fused_scan.h"
#include "cpu/isa_kernels.h"
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

// The first-pass arrays of a two-stage search, by name (drfast.search.two_stage.native_two_stage):
//   kind 0 (int8) / 1 (bf16); qcodes [B, dp] uint8 (q8 + 128) or bf16 bits; qparams float32 [B, 3]
//   = c, alpha, beta; codes [N, dp] int8 or bf16 bits; stats float32 [3, N] = a, e, m; sums int32
//   [N] (int8) or [0]; and for the int8 refinement (all or none): res_qcodes [B, dp] uint8,
//   res_qparams float32 [B, 4] = c2, beta1, beta2, w2, res_codes [N, dp] int8, res_stats float32
//   [4, N] = a2, e2, m2, n2, res_sums int32 [N].
// Holds the arrays (alive until the kernel returns) and the transposed query parameters.
struct FirstPassArrays {
  py::array qcodes, qparams, codes, stats, sums, res_qcodes, res_qparams, res_codes, res_stats, res_sums;
  std::vector<float> qp;  // [7][B]: c, alpha, beta, c2, beta1, beta2, w2 (one contiguous array per field)
};

py::array named_array(const py::dict& d, const char* name, char kind, int itemsize, py::ssize_t ndim,
                      py::ssize_t rows, py::ssize_t cols) {
  DRFAST_CHECK(d.contains(name), std::string("first_pass: missing '") + name + "'");
  py::array a = d[name].cast<py::array>();
  check_array(a, name, kind, itemsize, ndim);
  DRFAST_CHECK(a.shape(0) == rows && (ndim == 1 || a.shape(1) == cols),
               std::string(name) + ": wrong shape for these queries and rows");
  return a;
}

// Per-field query parameters from a [B, n] array into qp[(first + j) * B + b].
void transpose_params(const py::array& a, int64_t B, int n, int first, std::vector<float>& qp) {
  const float* src = static_cast<const float*>(a.data());
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < n; ++j) qp[(first + j) * B + b] = src[b * n + j];
}

drfast::FirstPassView first_pass_view(const SearchInput& in, const py::dict& d, FirstPassArrays& keep) {
  const int kind = d.contains("kind") ? d["kind"].cast<int>() : -1;
  DRFAST_CHECK(kind == drfast::kFpKindInt8 || kind == drfast::kFpKindBf16, "kind: expected 0 (int8) or 1 (bf16)");
  const bool int8 = kind == drfast::kFpKindInt8;
  const int esize = int8 ? 1 : 2;
  const int64_t dp = (in.d * esize + drfast::kFpAlign - 1) / drfast::kFpAlign * drfast::kFpAlign / esize;
  DRFAST_CHECK(!int8 || in.d <= 65536, "int8 first pass: d must be <= 65536 (int32 sums)");
  keep.qcodes = named_array(d, "qcodes", 'u', esize, 2, in.B, dp);
  keep.qparams = named_array(d, "qparams", 'f', 4, 2, in.B, 3);
  keep.codes = named_array(d, "codes", int8 ? 'i' : 'u', esize, 2, in.N, dp);
  keep.stats = named_array(d, "stats", 'f', 4, 2, 3, in.N);
  keep.sums = named_array(d, "sums", 'i', 4, 1, int8 ? in.N : 0, 0);
  keep.qp.assign(static_cast<size_t>(in.B) * 7, 0.0f);
  transpose_params(keep.qparams, in.B, 3, 0, keep.qp);
  const float* stats = static_cast<const float*>(keep.stats.data());
  drfast::FirstPassView fp{};
  fp.kind = kind;
  fp.B = in.B;
  fp.dp = dp;
  fp.qcodes = keep.qcodes.data();
  fp.qscale = keep.qp.data();
  fp.alpha = keep.qp.data() + in.B;
  fp.beta = keep.qp.data() + 2 * in.B;
  fp.codes = keep.codes.data();
  fp.rscale = stats;
  fp.rsum = int8 ? static_cast<const int32_t*>(keep.sums.data()) : nullptr;
  fp.rerr = stats + in.N;
  fp.rnorm = stats + 2 * in.N;
  return fp;
}

drfast::RefineView refine_view(const SearchInput& in, const py::dict& d, int64_t dp, bool int8,
                               FirstPassArrays& keep) {
  drfast::RefineView rv{};
  if (!d.contains("res_codes") || d["res_codes"].is_none()) return rv;
  DRFAST_CHECK(int8, "res_codes: only the int8 first pass has a refinement");
  keep.res_qcodes = named_array(d, "res_qcodes", 'u', 1, 2, in.B, dp);
  keep.res_qparams = named_array(d, "res_qparams", 'f', 4, 2, in.B, 4);
  keep.res_codes = named_array(d, "res_codes", 'i', 1, 2, in.N, dp);
  keep.res_stats = named_array(d, "res_stats", 'f', 4, 2, 4, in.N);
  keep.res_sums = named_array(d, "res_sums", 'i', 4, 1, in.N, 0);
  transpose_params(keep.res_qparams, in.B, 4, 3, keep.qp);
  const float* r2 = static_cast<const float*>(keep.res_stats.data());
  rv.rcodes = static_cast<const int8_t*>(keep.res_codes.data());
  rv.rscale = r2;
  rv.rerr = r2 + in.N;
  rv.rnorm = r2 + 2 * in.N;
  rv.rresnorm = r2 + 3 * in.N;
  rv.rsum = static_cast<const int32_t*>(keep.res_sums.data());
  rv.q2codes = static_cast<const uint8_t*>(keep.res_qcodes.data());
  rv.qscale2 = keep.qp.data() + 3 * in.B;
  rv.beta1 = keep.qp.data() + 4 * in.B;
  rv.beta2 = keep.qp.data() + 5 * in.B;
  rv.w2 = keep.qp.data() + 6 * in.B;
  return rv;
}

// The exact two-stage search (cpu/two_stage.h): the flat search's arguments, then the first pass
// (a dict of named arrays, see FirstPassArrays), the work counters int64 [B, kWorkPerQuery] and
// [nnz, kWorkPerPositive] (columns: _C.work_columns), and rank_depth (0: full depth).
void two_stage_search_cpu(py::array queries, py::array docs, int64_t k, py::array pos_offsets, py::array pos_ids,
                          int64_t cutoff, py::array ids, py::array scores, py::array pos_scores, py::array pos_ranks,
                          py::object pair_weights, py::dict first_pass, py::array work_q, py::array work_p,
                          py::object pos_scores_in, int64_t rank_depth) {
  SearchInput in = flat_input(queries, docs, k, cutoff);
  SearchOutput out;
  py::array given;
  check_positives_and_outputs(in, pos_offsets, pos_ids, ids, scores, pos_scores, pos_ranks, pair_weights, out,
                              pos_scores_in, given);
  DRFAST_CHECK(rank_depth >= 0, "rank_depth: must be >= 0 (0: full depth)");
  check_array(work_q, "work_q", 'i', 8, 2);
  check_array(work_p, "work_p", 'i', 8, 2);
  DRFAST_CHECK(work_q.shape(0) == in.B && work_q.shape(1) == drfast::kWorkPerQuery, "work_q: expected [B, 3]");
  DRFAST_CHECK(work_p.shape(0) == pos_ids.shape(0) && work_p.shape(1) == drfast::kWorkPerPositive,
               "work_p: expected [nnz, 2]");
  FirstPassArrays keep;
  drfast::TwoStageParams params{};
  params.first_pass = first_pass_view(in, first_pass, keep);
  params.refine = refine_view(in, first_pass, params.first_pass.dp, params.first_pass.kind == drfast::kFpKindInt8,
                              keep);
  params.work.per_query = mutable_data<int64_t>(work_q, "work_q");
  params.work.per_positive = mutable_data<int64_t>(work_p, "work_p");
  params.rank_depth = rank_depth;
  py::gil_scoped_release release;
  drfast::two_stage_search(in, params, out);
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

// Test hooks for the active first-pass table's kernels on given arrays (each level's table against
// a plain reference, tests/search/test_first_pass_kernels.py).
// Bounds of every query against rows r0 .. r0 + nb, in blocks of kFpBlockRows: (lo, hi) [B, nb].
py::tuple first_pass_bounds_cpu(py::dict first_pass, int64_t d, int64_t r0, int64_t nb) {
  DRFAST_CHECK(first_pass.contains("qcodes") && first_pass.contains("codes"), "first_pass: needs qcodes and codes");
  SearchInput in{};
  in.B = first_pass["qcodes"].cast<py::array>().shape(0);
  in.N = first_pass["codes"].cast<py::array>().shape(0);
  in.d = d;
  DRFAST_CHECK(d >= 1, "d must be >= 1");
  DRFAST_CHECK(r0 >= 0 && nb >= 0 && r0 + nb <= in.N, "r0, nb: rows out of range");
  FirstPassArrays keep;
  const drfast::FirstPassView fp = first_pass_view(in, first_pass, keep);
  py::array_t<float> lo({in.B, nb}), hi({in.B, nb});
  float *l = lo.mutable_data(), *h = hi.mutable_data();
  const drfast::FirstPassKernels& k = drfast::active_first_pass();
  std::vector<uint32_t> scratch(static_cast<size_t>(in.B) * drfast::kFpBlockRows + 2 * fp.dp);
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < nb; i += drfast::kFpBlockRows)
      k.bounds_block(fp, scratch.data(), r0 + i, std::min(drfast::kFpBlockRows, nb - i), l + i, h + i, nb);
  }
  return py::make_tuple(lo, hi);
}

// The second bound's dot products: u1, u2 uint8 [len]; s1, s2 int8 [n, len] (len a multiple of
// kFpAlign); idx int32 [m] rows of s1/s2. Returns (d12, d21) int32 [m].
py::tuple first_pass_refine_dots_cpu(py::array u1, py::array u2, py::array s1, py::array s2, py::array idx) {
  check_array(u1, "u1", 'u', 1, 1);
  check_array(u2, "u2", 'u', 1, 1);
  check_array(s1, "s1", 'i', 1, 2);
  check_array(s2, "s2", 'i', 1, 2);
  check_array(idx, "idx", 'i', 4, 1);
  const int64_t len = u1.shape(0), n = s1.shape(0), m = idx.shape(0);
  DRFAST_CHECK(len % drfast::kFpAlign == 0, "u1: length must be a multiple of first_pass_align");
  DRFAST_CHECK(u2.shape(0) == len && s1.shape(1) == len && s2.shape(0) == n && s2.shape(1) == len,
               "u2, s1, s2: lengths differ from u1's");
  const int32_t* ix = static_cast<const int32_t*>(idx.data());
  for (int64_t j = 0; j < m; ++j) DRFAST_CHECK(ix[j] >= 0 && ix[j] < n, "idx: row out of range");
  py::array_t<int32_t> d12(m), d21(m);
  drfast::active_first_pass().refine_dots(static_cast<const uint8_t*>(u1.data()), static_cast<const uint8_t*>(u2.data()),
                                          static_cast<const int8_t*>(s1.data()), static_cast<const int8_t*>(s2.data()),
                                          len, ix, m, len, d12.mutable_data(), d21.mutable_data());
  return py::make_tuple(d12, d21);
}

// select_band and count_above on float32 lo, hi [n]: (indices int32 [m] with lo <= x <= hi, #{lo > x}).
py::tuple first_pass_band_cpu(py::array lo, py::array hi, float x) {
  check_array(lo, "lo", 'f', 4, 1);
  check_array(hi, "hi", 'f', 4, 1);
  const int64_t n = lo.shape(0);
  DRFAST_CHECK(hi.shape(0) == n, "hi: length differs from lo's");
  const float *l = static_cast<const float*>(lo.data()), *h = static_cast<const float*>(hi.data());
  std::vector<int32_t> idx(static_cast<size_t>(n));
  const drfast::FirstPassKernels& k = drfast::active_first_pass();
  const int64_t m = k.select_band(l, h, n, x, idx.data());
  return py::make_tuple(py::array_t<int32_t>(m, idx.data()), k.count_above(l, n, x));
}
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
        py::arg("pair_weights"), py::arg("first_pass"), py::arg("work_q"), py::arg("work_p"),
        py::arg("pos_scores_in") = py::none(), py::arg("rank_depth") = 0);
  m.def("flat_score_positives", &flat_score_positives_cpu,
        "The positives' scores alone, bit-identical to flat_search's (the sharded search's owner scores)",
        py::arg("queries"), py::arg("docs"), py::arg("pos_offsets"), py::arg("pos_ids"), py::arg("pos_scores"));
  m.def("pq_score_positives", &pq_score_positives_cpu,
        "The positives' scores alone, bit-identical to pq_search's (the sharded search's owner scores)",
        py::arg("luts"), py::arg("codes"), py::arg("pos_offsets"), py::arg("pos_ids"), py::arg("pos_scores"));
  // The kernels' sizes, read by drfast.search.native (memory planning, first-pass code layout).
  m.attr("flat_block_rows") = drfast::kFlatBlockRows;
  m.attr("pq_block_rows") = drfast::kPQBlockRows;
  m.attr("first_pass_block_rows") = drfast::kFpBlockRows;
  m.attr("first_pass_align") = drfast::kFpAlign;
  m.attr("candidate_bytes") = static_cast<int64_t>(sizeof(drfast::Candidate));
  py::dict per_query, per_positive, work_columns;
  per_query["refined"] = static_cast<int64_t>(drfast::kWorkRefined);
  per_query["rescored_topk"] = static_cast<int64_t>(drfast::kWorkRescoredTopk);
  per_query["rescored_ranks"] = static_cast<int64_t>(drfast::kWorkRescoredRanks);
  per_positive["refined"] = static_cast<int64_t>(drfast::kWorkPosRefined);
  per_positive["rescored"] = static_cast<int64_t>(drfast::kWorkPosRescored);
  work_columns["per_query"] = per_query;
  work_columns["per_positive"] = per_positive;
  m.attr("work_columns") = work_columns;
  m.def("first_pass_kernels", []() { return std::string(drfast::active_first_pass().name); });
  m.def("fast_first_pass_kinds", []() { return std::string(drfast::fast_first_pass_kinds()); });
  m.def("first_pass_bounds", &first_pass_bounds_cpu, "Test hook: the active first-pass table's bounds of rows r0..r0+nb",
        py::arg("first_pass"), py::arg("d"), py::arg("r0"), py::arg("nb"));
  m.def("first_pass_refine_dots", &first_pass_refine_dots_cpu, "Test hook: the active table's refine_dots",
        py::arg("u1"), py::arg("u2"), py::arg("s1"), py::arg("s2"), py::arg("idx"));
  m.def("first_pass_band", &first_pass_band_cpu, "Test hook: the active table's select_band and count_above",
        py::arg("lo"), py::arg("hi"), py::arg("x"));
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
