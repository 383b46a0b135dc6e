// SPDX-License-Identifier: Apache-2.0
// One attention-kernel benchmark case: its shape, the work it implies (FLOPs, unique K/V bytes),
// where it sits on a roofline, and the buffers that feed DefaultBackend().attend() exactly the
// way the library's caches do. Shared by `attn bench kernel`, the Google Benchmark suite and the
// tests, so that every number the project reports is counted by the same formulas.
#ifndef ATTN_BENCH_KERNEL_CASE_H_
#define ATTN_BENCH_KERNEL_CASE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/kernels.h"

namespace attn::bench {

enum class Variant {
  kGqa,  // MHA/GQA/MQA: per-head K and V, head-major [G][T][D] like KVCache or token-major
  kMla,  // absorbed MLA: one latent row [T][D] per token, values = first DV entries of the row
};
// "gqa" | "mla"; anything else throws Error(kInvalidArgument).
Variant VariantFromString(const std::string& name);
const char* VariantName(Variant variant);

struct KernelShape {
  Variant variant = Variant::kGqa;
  int64_t heads = 0;      // H query heads
  int64_t kv_heads = 0;   // G (always 1 for MLA)
  int64_t head_dim = 0;   // D: query/key width
  int64_t value_dim = 0;  // DV
  int64_t q_len = 0;      // S queries, the last S slots of the sequence
  int64_t kv_len = 0;     // T keys
  // Causal: query s (slot T-S+s) sees keys 0 … T-S+s. Otherwise every query sees all T keys.
  bool causal = false;
  DType dtype = DType::kF32;  // K/V storage; queries are always fp32
  // Sequences attended in one attend_batch call. Sequence b holds T_b = T - ⌊b·T / (2B)⌋ keys
  // (ragged: from T down to just over T/2, as in a served batch), each with S queries.
  int64_t batch = 1;
  // GQA K/V as [T][G][D] per sequence (PyTorch's [B, T, G, D]) instead of KVCache's [G][T][D].
  bool token_major = false;
  // > 0: K/V in pages of this many tokens laid out as PagedKVPool's (GQA: keys [G][P][D] then
  // values [G][P][DV] per page; MLA: rows [P][D]), every sequence's pages drawn in random order
  // from one pool the whole batch shares, read through block tables. 0: contiguous.
  int64_t page_size = 0;
};

// T_b of every sequence of the batch.
std::vector<int64_t> SequenceLengths(const KernelShape& shape);

// The shape with MLA defaults applied (D 576, DV 512, G 1) and every field checked; throws
// Error(kInvalidArgument) naming the offending flag.
KernelShape NormalizeKernelShape(KernelShape shape);

// (query, key) pairs that are visible, summed over the batch: S·T_b, or S·T_b − S(S−1)/2 when
// causal.
int64_t VisiblePairs(const KernelShape& shape);
// 2·H·(D+DV) per visible pair: one multiply-add per element of q·k and of p·v.
double KernelFlops(const KernelShape& shape);
// K/V bytes the kernel must read at least once: Σ_b T_b·G·(D+DV)·size for GQA, Σ_b T_b·D·size
// for MLA (values are the same bytes as the keys).
double KernelKvBytes(const KernelShape& shape);

// A case's place under the roofs min(compute, intensity · bandwidth).
struct RooflinePoint {
  double intensity = 0.0;     // FLOPs per unique K/V byte
  double roof_gflops = 0.0;   // the binding roof at this intensity
  bool memory_bound = false;  // bandwidth roof is the lower one
  double fraction = 0.0;      // achieved GFLOP/s over roof_gflops
};
RooflinePoint PlaceOnRoofline(double flops, double bytes, double seconds, double peak_gflops,
                              double peak_gbps);

// Owns random queries, K/V storage and the outputs of one case (every sequence of its batch),
// and the AttentionProblems that point into them.
class KernelCase {
 public:
  KernelCase(const KernelShape& shape, uint64_t seed);
  KernelCase(const KernelCase&) = delete;
  KernelCase& operator=(const KernelCase&) = delete;

  const KernelShape& shape() const { return shape_; }
  // Sequence 0's problem, and all of them.
  const AttentionProblem& problem() const { return problems_.front(); }
  const std::vector<AttentionProblem>& problems() const { return problems_; }
  void Run(const KernelBackend& backend) const {
    backend.attend_batch(problems_.data(), static_cast<int64_t>(problems_.size()));
  }
  // The output of the last Run() for sequence b, [S][H][DV].
  const std::vector<float>& output(size_t b = 0) const { return outputs_[b]; }

 private:
  struct Sequence {
    std::vector<float> queries;
    std::vector<std::byte> keys;
    std::vector<std::byte> values;  // empty for MLA: values alias keys
    std::vector<int32_t> table;     // paged: the sequence's pages
  };
  KernelShape shape_;
  std::vector<std::byte> pages_;  // paged: every sequence's pages
  // fp8/int8 pages: per-token scales [pages][G][page_size], for keys and for values.
  std::vector<float> key_scales_, value_scales_;
  std::vector<Sequence> sequences_;
  mutable std::vector<std::vector<float>> outputs_;
  std::vector<AttentionProblem> problems_;
};

// Median of `samples` (which it reorders); 0 for none.
double Median(std::vector<double> samples);

}  // namespace attn::bench

#endif  // ATTN_BENCH_KERNEL_CASE_H_
