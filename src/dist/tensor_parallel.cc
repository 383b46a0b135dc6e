// SPDX-License-Identifier: Apache-2.0
// Tensor parallelism over query heads (docs/distributed.md): which rows and columns of each
// weight a rank keeps, loading only those, and the layer that sums the ranks' partial outputs.
//
// Why a split by heads is exact: the attention output is o_proj(concat over heads of O_h), and
// o_proj's input columns fall into per-head blocks, so out = Σ over ranks of
// o_proj[:, rank's columns] · concat(O_h of the rank's heads). Each rank computes its heads
// completely (queries, keys, softmax, values: no head reads another's data), so one
// all-reduce of the [rows, D] output after o_proj is the only communication per step.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/hf_weights.h"
#include "attn/parallel.h"
#include "dist/agreement.h"

namespace attn {
namespace {

// FNV-1a, 64 bit: a fixed, portable hash, so that ranks built by different compilers agree.
class ConfigHasher {
 public:
  void Bytes(const void* data, size_t count) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < count; ++i) {
      state_ ^= bytes[i];
      state_ *= 0x100000001b3ull;
    }
  }
  void Int(int64_t value) { Bytes(&value, sizeof(value)); }
  void Real(double value) { Bytes(&value, sizeof(value)); }
  void Text(const std::string& text) {
    Int(static_cast<int64_t>(text.size()));
    Bytes(text.data(), text.size());
  }
  void Flags(const std::vector<bool>& flags) {
    Int(static_cast<int64_t>(flags.size()));
    for (const bool flag : flags) Int(flag ? 1 : 0);
  }
  void Reals(const std::vector<double>& values) {
    Int(static_cast<int64_t>(values.size()));
    for (const double value : values) Real(value);
  }
  void Rope(const RopeConfig& rope) {
    Real(rope.theta);
    Int(rope.rotary_dim);
    Int(static_cast<int64_t>(rope.pairing));
    const RopeScaling& s = rope.scaling;
    Int(static_cast<int64_t>(s.type));
    for (const double value : {s.factor, s.low_freq_factor, s.high_freq_factor, s.beta_fast,
                               s.beta_slow, s.mscale, s.mscale_all_dim, s.attention_factor}) {
      Real(value);
    }
    Int(s.original_max_position_embeddings);
    Int(s.truncate ? 1 : 0);
    Reals(s.short_factor);
    Reals(s.long_factor);
  }
  int64_t value() const { return static_cast<int64_t>(state_); }

 private:
  uint64_t state_ = 0xcbf29ce484222325ull;
};

// A rank's cut of a weight, as a message: "q_proj.weight rows [64, 128)".
std::string CutText(const std::string& name, const char* axis, int64_t first, int64_t count) {
  return name + " " + axis + " [" + std::to_string(first) + ", " + std::to_string(first + count) +
         ")";
}

// fp8 block scales cover whole blocks; a rank's slice must too, or it would need scales of
// blocks split between ranks (docs/semantics.md §9).
void CheckBlockCut(const Weight& weight, const std::string& name, const char* axis, int64_t first,
                   int64_t count, int64_t extent, int64_t block) {
  if (weight.block_scales() == nullptr) return;
  const bool whole = first % block == 0 && (count % block == 0 || first + count == extent);
  Check(whole, ErrorKind::kUnsupported,
        "tensor parallel: " + CutText(name, axis, first, count) +
            " cuts through the fp8 scale blocks of " + std::to_string(block) + " " + axis +
            " (choose a world size whose head split falls on block boundaries)");
}

Weight Rows(const Weight& weight, const std::string& name, int64_t first, int64_t count) {
  CheckBlockCut(weight, name, "rows", first, count, weight.dim(0), weight.block_rows());
  return weight.RowSlice(first, count);
}

Weight Columns(const Weight& weight, const std::string& name, int64_t first, int64_t count) {
  CheckBlockCut(weight, name, "columns", first, count, weight.dim(1), weight.block_cols());
  return weight.ColumnSlice(first, count);
}

// Entries [first, first + count) of a bias or sink vector, in fp32 (the layer keeps vectors in
// fp32 whatever their stored dtype). An fp8 vector is refused as BuildAttentionLayer refuses
// it: converted here, it would reach the layer as a plausible fp32 one.
Weight Entries(const Weight& weight, const std::string& name, int64_t first, int64_t count) {
  Check(weight.dtype() != DType::kF8E4M3, ErrorKind::kInvalidArgument,
        name + ": F8_E4M3 is only read for projection matrices, not for a " +
            ShapeToString(weight.shape()) + " vector");
  const Tensor all = weight.ToF32();
  Tensor part({count});
  std::memcpy(part.data(), all.data() + first, static_cast<size_t>(count) * sizeof(float));
  return Weight(std::move(part));
}

// o_proj's input columns that belong to the rank's heads: d (GQA) or dv (MLA) per head.
std::pair<int64_t, int64_t> OProjColumns(const ModelConfig& config, const HeadShard& heads) {
  const int64_t width = config.ValueHeadDim();
  return {heads.first_head * width, heads.heads * width};
}

// The cut of one named tensor for `heads`: how many rows (or columns) each query / kv head
// owns. Returns the weight unchanged for tensors every rank holds whole.
Weight ShardOne(const ModelConfig& config, const HeadShard& heads, Shard shard,
                const std::string& name, const Weight& weight) {
  if (config.kind == AttentionKind::kGqa) {
    const int64_t d = config.gqa.head_dim;
    if (name == "q_proj.weight") return Rows(weight, name, heads.first_head * d, heads.heads * d);
    if (name == "k_proj.weight" || name == "v_proj.weight") {
      return Rows(weight, name, heads.first_kv_head * d, heads.kv_heads * d);
    }
    if (name == "q_proj.bias") return Entries(weight, name, heads.first_head * d, heads.heads * d);
    if (name == "k_proj.bias" || name == "v_proj.bias") {
      return Entries(weight, name, heads.first_kv_head * d, heads.kv_heads * d);
    }
    if (name == "sinks") return Entries(weight, name, heads.first_head, heads.heads);
    if (name == "o_proj.weight") {
      const auto [first, count] = OProjColumns(config, heads);
      return Columns(weight, name, first, count);
    }
    if (name == "o_proj.bias" && shard.rank != 0) return Weight(Tensor(weight.shape()));
    return weight;  // per-head q/k norms: the same [d] scale for every head
  }
  const MlaDims& m = config.mla;
  const int64_t qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
  if (name == "q_proj.weight" || name == "q_b_proj.weight") {
    return Rows(weight, name, heads.first_head * qk, heads.heads * qk);
  }
  if (name == "kv_b_proj.weight") {
    const int64_t per_head = m.qk_nope_head_dim + m.v_head_dim;  // W_UK rows, then W_UV rows
    return Rows(weight, name, heads.first_head * per_head, heads.heads * per_head);
  }
  if (name == "o_proj.weight") {
    const auto [first, count] = OProjColumns(config, heads);
    return Columns(weight, name, first, count);
  }
  return weight;  // q_a_proj, kv_a_proj_with_mqa and their norms: the replicated latent
}

// Drops this process's mapping of the pages wholly inside bytes [begin, end) of a read-only
// file mapping, once they have been read: without it, every page a rank touched while copying
// would stay in its resident set for the layer's life. Whole pages only, so neighbouring data
// keeps its pages; a later read simply faults them back in from the page cache. Advice only: a
// failure leaves the pages resident, which costs memory, not correctness.
void ReleaseMappedPages(const std::byte* begin, const std::byte* end) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (reinterpret_cast<uintptr_t>(begin) + page - 1) / page * page;
  const uintptr_t last = reinterpret_cast<uintptr_t>(end) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// Columns [first, first + count) of `weight` (o_proj as loaded), copied one band of about 1 MiB
// of rows at a time. When `mapped` (a view of the checkpoint's read-only mapping), each band's
// pages are released as soon as its columns are copied, so the rank's resident set never holds
// more of o_proj than its own columns and one band: the point of loading a shard (peak memory
// about 1/world of the layer's weights).
Weight CopyColumnsInBands(const Weight& weight, const std::string& name, int64_t first,
                          int64_t count, bool mapped) {
  CheckBlockCut(weight, name, "columns", first, count, weight.dim(1), weight.block_cols());
  const int64_t rows = weight.dim(0);
  const size_t element = DTypeSize(weight.dtype());
  const size_t source_row_bytes = static_cast<size_t>(weight.dim(1)) * element;
  const size_t row_bytes = static_cast<size_t>(count) * element;
  int64_t band = std::max<int64_t>(1, static_cast<int64_t>((size_t{1} << 20) / source_row_bytes));
  if (weight.block_scales() != nullptr) {
    band = (band + weight.block_rows() - 1) / weight.block_rows() * weight.block_rows();
  }
  auto bytes = std::make_shared<std::vector<std::byte>>(static_cast<size_t>(rows) * row_bytes);
  std::vector<float> scales;
  int64_t scale_cols = 0;
  const auto* source = static_cast<const std::byte*>(weight.data());
  for (int64_t r0 = 0; r0 < rows; r0 += band) {
    const int64_t n = std::min(band, rows - r0);
    const Weight piece = weight.RowSlice(r0, n).ColumnSlice(first, count);
    if (piece.data() != nullptr) {
      std::memcpy(bytes->data() + static_cast<size_t>(r0) * row_bytes, piece.data(),
                  static_cast<size_t>(n) * row_bytes);
    }
    if (piece.block_scales() != nullptr) {
      const Shape shape = piece.block_scale_shape();
      scale_cols = shape[1];
      scales.insert(scales.end(), piece.block_scales(), piece.block_scales() + shape[0] * shape[1]);
    }
    if (mapped) {
      ReleaseMappedPages(source + static_cast<size_t>(r0) * source_row_bytes,
                         source + static_cast<size_t>(r0 + n) * source_row_bytes);
    }
  }
  // Pages straddling two bands were in neither band's whole pages.
  if (mapped) ReleaseMappedPages(source, source + static_cast<size_t>(rows) * source_row_bytes);
  const void* data = bytes->empty() ? nullptr : bytes->data();
  Weight columns = Weight::View(weight.dtype(), {rows, count}, data, std::move(bytes));
  if (weight.block_scales() == nullptr) return columns;
  const auto scale_rows = static_cast<int64_t>(scales.size()) / scale_cols;
  return std::move(columns).WithBlockScales(
      Weight(Tensor({scale_rows, scale_cols}, std::move(scales))), weight.block_rows(),
      weight.block_cols(), name);
}

// The attention layer of one rank of a tensor-parallel group: its heads' local layer, whose
// partial [rows, D] output is summed across ranks after every step.
class TensorParallelLayer final : public AttentionLayer {
 public:
  TensorParallelLayer(const ModelConfig& config, std::unique_ptr<AttentionLayer> local,
                      std::shared_ptr<Communicator> comm)
      : config_(config), local_(std::move(local)), comm_(std::move(comm)) {}

  const ModelConfig& config() const override { return config_; }

  std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                  MlaForm form) const override {
    return local_->NewCache(batch, capacity, dtype, form);
  }

  std::unique_ptr<PagedKVPool> NewPagedPool(int64_t pages, int64_t page_size, DType dtype,
                                            MlaForm form) const override {
    return local_->NewPagedPool(pages, page_size, dtype, form);
  }

  // Every rank sees the same batch and a cache in the same state, so a bad input fails alike on
  // every rank before the all-reduce; no agreement round is needed per step.
  void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const override {
    local_->StepInto(batch, cache, form, out);
    comm_->AllReduceSum(out.values());
  }

  void StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                     std::span<const PagedKVPool::SequenceId> ids, MlaForm form,
                     Tensor& out) const override {
    local_->StepPagedInto(batch, pool, ids, form, out);
    comm_->AllReduceSum(out.values());
  }

 private:
  ModelConfig config_;
  std::unique_ptr<AttentionLayer> local_;
  std::shared_ptr<Communicator> comm_;
};

}  // namespace

int64_t ModelConfigHash(const ModelConfig& config) {
  ConfigHasher h;
  h.Text(config.model_type);
  h.Int(static_cast<int64_t>(config.kind));
  h.Int(config.hidden_size);
  h.Int(config.num_heads);
  h.Int(config.num_layers);
  h.Int(config.max_position_embeddings);
  const GqaDims& g = config.gqa;
  h.Int(g.num_kv_heads);
  h.Int(g.head_dim);
  h.Int(g.qkv_bias ? 1 : 0);
  h.Int(g.o_bias ? 1 : 0);
  h.Int(static_cast<int64_t>(g.qk_norm));
  h.Real(g.qk_norm_eps);
  h.Int(g.qk_norm_unit_offset ? 1 : 0);
  h.Int(g.attention_sinks ? 1 : 0);
  h.Int(g.alibi ? 1 : 0);
  const MlaDims& m = config.mla;
  for (const int64_t value :
       {m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim}) {
    h.Int(value);
  }
  h.Real(m.rms_norm_eps);
  h.Rope(config.rope);
  h.Int(config.sliding_rope_differs ? 1 : 0);
  h.Rope(config.sliding_rope);
  h.Int(config.quantization.fp8_blocks ? 1 : 0);
  h.Int(config.quantization.block_rows);
  h.Int(config.quantization.block_cols);
  h.Real(config.softmax_scale);
  h.Real(config.attn_logit_softcapping);
  h.Int(config.sliding_window);
  h.Flags(config.sliding_layers);
  h.Int(config.attention_chunk_size);
  h.Flags(config.chunked_layers);
  h.Flags(config.nope_layers);
  h.Real(config.temperature.floor_scale);
  h.Real(config.temperature.attn_scale);
  return h.value();
}

NamedWeights ShardAttentionWeights(const ModelConfig& config, NamedWeights weights, Shard shard) {
  const HeadShard heads = TensorParallelHeads(config, shard);
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    auto it = weights.find(spec.name);
    // A missing tensor is BuildAttentionLayer's to name; a misshapen one must be named here,
    // before a cut computed from the config reads past its end.
    if (it == weights.end()) continue;
    Check(it->second.shape() == spec.shape, ErrorKind::kInvalidArgument,
          spec.name + ": expected shape " + ShapeToString(spec.shape) + ", got " +
              ShapeToString(it->second.shape()));
    it->second = ShardOne(config, heads, shard, spec.name, it->second);
  }
  return weights;
}

NamedWeights LoadAttentionWeightShard(const Checkpoint& checkpoint, const ModelConfig& config,
                                      int64_t layer, Shard shard) {
  const HeadShard heads = TensorParallelHeads(config, shard);  // fails before touching a file
  // Biases, norms and sinks are scanned at load (a few KB); each matrix is scanned after its
  // cut, so a rank reads only its own rows of q/k/v (views of the mapping, never copied).
  NamedWeights loaded = LoadHfAttentionWeightsUnscanned(checkpoint, config, layer);
  const std::string prefix = HfAttentionPrefix(config, layer);
  // o_proj's column block has to read every row; it is copied band by band, releasing each
  // band's pages, unless the file format made o_proj a copy already (Falcon's dense is read
  // whole as fp32 with its fused q/k/v, then sliced: no saving there).
  auto o_proj = loaded.extract("o_proj.weight");
  NamedWeights sharded = ShardAttentionWeights(config, std::move(loaded), shard);
  if (!o_proj.empty()) {
    const std::string name = prefix + "o_proj.weight";
    // SafetensorsFile::ReadWeight maps a tensor whose offset is aligned to its element size and
    // reads any other into its own buffer, whose pages must not be released.
    const bool mapped =
        checkpoint.Contains(name) && checkpoint.FileFor(name).Get(name).offset %
                                             DTypeSize(checkpoint.FileFor(name).Get(name).dtype) ==
                                         0;
    const auto [first, count] = OProjColumns(config, heads);
    sharded.insert_or_assign("o_proj.weight",
                             CopyColumnsInBands(o_proj.mapped(), "o_proj.weight", first, count,
                                                mapped && shard.world > 1));
  }
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    if (spec.kind != WeightSpec::Kind::kMatrix) continue;
    auto it = sharded.find(spec.name);
    if (it != sharded.end()) CheckFinite(it->second, prefix + spec.name + " (this rank's slice)");
  }
  return sharded;
}

std::unique_ptr<AttentionLayer> MakeTensorParallelLayer(const ModelConfig& config, int64_t layer,
                                                        NamedWeights shard_weights,
                                                        std::shared_ptr<Communicator> comm) {
  Check(comm != nullptr, ErrorKind::kInvalidArgument, "tensor parallel: no communicator");
  CheckRanksAgree(*comm, ModelConfigHash(config), "tensor parallel: the model config");
  const Shard shard{comm->rank(), comm->world()};
  std::unique_ptr<AttentionLayer> local;
  dist::RunAgreed(*comm, [&] {
    local =
        BuildAttentionLayer(TensorParallelConfig(config, shard), layer, std::move(shard_weights));
  });
  return std::make_unique<TensorParallelLayer>(config, std::move(local), std::move(comm));
}

}  // namespace attn
