// SPDX-License-Identifier: Apache-2.0
// attn.Attention, attn.Cache and attn.PagedCache: one checkpoint layer and its KV caches, thin
// over attn::AttentionLayer. Hidden states are copied once into an attn::Tensor (the layer API
// takes an owning fp32 Tensor); positions and padding flags are read in place when they already
// are row-major int64 / uint8 / bool; outputs are returned without a copy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "attn/checkpoint.h"
#include "attn/error.h"
#include "attn/hf_config.h"
#include "attn/hf_weights.h"
#include "attn/kv_cache.h"
#include "attn/layer.h"
#include "attn/layer_weights.h"
#include "attn/megatron.h"
#include "attn/paged_kv_cache.h"
#include "attn/parallel.h"
#include "attn/safetensors.h"
#include "bindings.h"

namespace attn::python {
namespace {

std::string PathText(py::handle object) {
  return py::str(py::module_::import("os").attr("fspath")(object)).cast<std::string>();
}

const char* StorageName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kF8E4M3:
      return "fp8";
    case DType::kI8:
      return "int8";
    default:
      return DTypeName(dtype);
  }
}

const char* RopeScalingName(RopeScalingType type) {
  switch (type) {
    case RopeScalingType::kNone:
      return "none";
    case RopeScalingType::kLinear:
      return "linear";
    case RopeScalingType::kLlama3:
      return "llama3";
    case RopeScalingType::kYarn:
      return "yarn";
    case RopeScalingType::kDynamic:
      return "dynamic";
    case RopeScalingType::kLongrope:
      return "longrope";
  }
  return "?";
}

void CheckLayerIndex(const ModelConfig& config, int64_t layer) {
  Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
        "layer " + std::to_string(layer) + " out of range (model has " +
            std::to_string(config.num_layers) + " layers)");
}

// The MLA form named by `mla`; GQA-family layers accept only the default, "auto".
MlaForm FormFor(const ModelConfig& config, const std::string& mla) {
  const MlaForm form = MlaFormFromString(mla);
  Check(config.kind == AttentionKind::kMla || form == MlaForm::kAuto, ErrorKind::kInvalidArgument,
        "mla='" + mla + "' applies only to MLA models; '" + config.model_type + "' is GQA-family");
  return form;
}

// Tensors of a dict under HF names of `layer` (the family's prefix, or model.layers.{i}.self_attn.
// as attn.random_weights writes them, stripped) or short names; fused checkpoint projections
// (Falcon, Phi-3) are split. Other keys of an HF state dict ("model.…", "transformer.…",
// "lm_head.…") are ignored; anything else is passed on as a short name so that
// BuildAttentionLayer rejects it by name.
NamedTensors WeightsFromDict(const py::dict& weights, const ModelConfig& config, int64_t layer) {
  const std::string family_prefix = HfAttentionPrefix(config, layer);
  const std::string prefix = HfAttentionPrefix(layer);
  NamedTensors named;
  std::map<std::string, std::string> given_as;
  for (const auto& item : weights) {
    const std::string key = py::str(item.first).cast<std::string>();
    std::string short_name;
    if (key.starts_with(family_prefix)) {
      short_name = key.substr(family_prefix.size());
    } else if (key.starts_with(prefix)) {
      short_name = key.substr(prefix.size());
    } else if (key.starts_with("model.") || key.starts_with("lm_head.") ||
               key.starts_with("transformer.")) {
      continue;
    } else {
      short_name = key;
    }
    Check(!named.contains(short_name), ErrorKind::kInvalidArgument,
          "weights: '" + short_name + "' given twice (as '" + given_as[short_name] + "' and '" +
              key + "')");
    Tensor tensor = ToTensor(ViewArray(item.second, key));
    CheckFinite(tensor, key);
    named.emplace(short_name, std::move(tensor));
    given_as[short_name] = key;
  }
  return UnfuseAttentionTensors(config, std::move(named));
}

py::dict ConfigDict(const ModelConfig& config, int64_t layer) {
  py::dict out;
  out["model_type"] = config.model_type;
  out["kind"] = config.kind == AttentionKind::kMla ? "mla" : "gqa";
  out["hidden_size"] = config.hidden_size;
  out["num_heads"] = config.num_heads;
  out["num_layers"] = config.num_layers;
  out["max_position_embeddings"] = config.max_position_embeddings;
  out["sliding_window"] = config.WindowForLayer(layer);
  out["softmax_scale"] = SoftmaxScale(config);
  out["qk_head_dim"] = config.QueryKeyHeadDim();
  out["v_head_dim"] = config.ValueHeadDim();
  out["rope_theta"] = config.rope.theta;
  out["rotary_dim"] = config.rope.rotary_dim;
  out["rope_pairing"] =
      config.rope.pairing == RopePairing::kInterleaved ? "interleaved" : "rotate_half";
  out["rope_scaling"] = RopeScalingName(config.rope.scaling.type);
  out["rope_scaling_factor"] = config.rope.scaling.factor;
  if (config.kind == AttentionKind::kGqa) {
    out["num_kv_heads"] = config.gqa.num_kv_heads;
    out["head_dim"] = config.gqa.head_dim;
    out["qkv_bias"] = config.gqa.qkv_bias;
    out["o_bias"] = config.gqa.o_bias;
  } else {
    out["q_lora_rank"] = config.mla.q_lora_rank;
    out["kv_lora_rank"] = config.mla.kv_lora_rank;
    out["qk_nope_head_dim"] = config.mla.qk_nope_head_dim;
    out["qk_rope_head_dim"] = config.mla.qk_rope_head_dim;
  }
  return out;
}

// A KV cache and the MLA form it was laid out for. The mutex serialises calls that use the same
// cache from several threads (each waits for the previous step to finish).
class PyCache {
 public:
  PyCache(std::unique_ptr<Cache> cache, MlaForm form, bool is_mla)
      : cache_(std::move(cache)), form_(form), is_mla_(is_mla) {}

  Cache& cache() { return *cache_; }
  MlaForm form() const { return form_; }
  std::mutex& mutex() { return mutex_; }

  size_t nbytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cache_->bytes();
  }
  py::array_t<int64_t> lengths() {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::span<const int64_t> lengths = cache_->lengths();
    // The shape-vector constructor: the count constructor of pybind11 < 2.12 takes the item
    // size from the NumPy 1.x dtype struct, which is wrong under NumPy 2.
    py::array_t<int64_t> out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(lengths.size())});
    std::memcpy(out.mutable_data(), lengths.data(), lengths.size_bytes());
    return out;
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    cache_->Clear();
  }
  py::object MlaName() const {
    if (!is_mla_) return py::none();
    return py::str(MlaFormName(form_));
  }
  std::string Repr() {
    std::lock_guard<std::mutex> lock(mutex_);
    return "attn.Cache(batch=" + std::to_string(cache_->batch()) +
           ", capacity=" + std::to_string(cache_->capacity()) + ", dtype='" +
           StorageName(cache_->dtype()) + "'" +
           (is_mla_ ? std::string(", mla='") + MlaFormName(form_) + "'" : std::string()) +
           ", nbytes=" + std::to_string(cache_->bytes()) + ")";
  }

 private:
  std::unique_ptr<Cache> cache_;
  MlaForm form_;
  bool is_mla_;
  std::mutex mutex_;
};

// One call's tokens, converted for the library. Views stay alive (and must be destroyed) with
// the GIL held; the TokenBatch is used with the GIL released.
struct PreparedTokens {
  Tensor hidden;
  ArrayView positions_holder;
  ArrayView keep_holder;
  ArrayView lengths_holder;
  std::span<const int64_t> positions;
  std::span<const uint8_t> keep;
  std::span<const int64_t> lengths;
  bool as_torch = false;
  Element element = Element::kF32;  // hidden_states' dtype, which the output gets
  bool squeeze = false;             // decode input was [B, D]: the output is [B, D] too
  int64_t batch = 0;
  int64_t tokens = 0;

  TokenBatch Batch() const { return TokenBatch{&hidden, positions, keep, lengths}; }
};

// An optional [B, S] grid; a [B] vector is accepted when S = 1.
ArrayView TokenGrid(py::handle object, const std::string& name, int64_t batch, int64_t tokens) {
  ArrayView view = ViewArray(object, name);
  if (view.rank() == 1 && tokens == 1) {
    view.shape.push_back(1);
    view.strides.push_back(0);
  }
  Check(view.shape == Shape{batch, tokens}, ErrorKind::kInvalidArgument,
        name + ": expected shape " + ShapeToString({batch, tokens}) +
            " to match hidden_states, got " + ShapeToString(view.shape));
  return view;
}

enum class CallKind { kForward, kPrefill, kDecode };

PreparedTokens PrepareTokens(const ModelConfig& config, CallKind kind, py::handle hidden_states,
                             py::handle position_ids, py::handle attention_mask,
                             py::handle lengths) {
  PreparedTokens p;
  ArrayView x = ViewArray(hidden_states, "hidden_states");
  p.as_torch = x.from_torch;
  p.element = x.element;
  const int64_t width = config.hidden_size;
  const std::string d = std::to_string(width);
  if (kind == CallKind::kDecode) {
    p.squeeze = x.rank() == 2;
    if (p.squeeze) {
      x.shape.insert(x.shape.begin() + 1, 1);
      x.strides.insert(x.strides.begin() + 1, 0);
    }
    Check(x.rank() == 3 && x.shape[0] > 0 && x.shape[1] == 1 && x.shape[2] == width,
          ErrorKind::kInvalidArgument,
          "hidden_states: decode takes one token per sequence, shape [B, " + d + "] or [B, 1, " +
              d + "], got " + ShapeToString(x.shape));
  } else {
    Check(x.rank() == 3 && x.shape[0] > 0 && x.shape[1] > 0 && x.shape[2] == width,
          ErrorKind::kInvalidArgument,
          "hidden_states: expected shape [B, S, " + d + "], got " + ShapeToString(x.shape));
  }
  p.batch = x.shape[0];
  p.tokens = x.shape[1];
  p.hidden = ToTensor(x);
  CheckFinite(p.hidden, "hidden_states");
  if (!position_ids.is_none()) {
    p.positions =
        AsInt64(TokenGrid(position_ids, "position_ids", p.batch, p.tokens), p.positions_holder);
  }
  if (!attention_mask.is_none()) {
    p.keep =
        AsKeepFlags(TokenGrid(attention_mask, "attention_mask", p.batch, p.tokens), p.keep_holder);
  }
  if (!lengths.is_none()) {
    const ArrayView view = ViewArray(lengths, "lengths");
    Check(view.shape == Shape{p.batch}, ErrorKind::kInvalidArgument,
          "lengths: expected shape " + ShapeToString({p.batch}) + ", got " +
              ShapeToString(view.shape));
    p.lengths = AsInt64(view, p.lengths_holder);
  }
  return p;
}

// A non-finite output (from weights or an overflow; the inputs were checked) is an error naming
// the layer and the first bad token, never a silent NaN handed to the caller.
py::object WrapOutput(Tensor out, const PreparedTokens& p, int64_t layer) {
  CheckFinite(out, "layer " + std::to_string(layer) + " output");
  if (p.element == Element::kF16) {
    // Beyond ±65504 a half is ±inf: an error, as a non-finite fp32 output is.
    for (const float value : out.values()) {
      Check(std::fabs(value) < 65520.0f, ErrorKind::kInvalidArgument,
            "layer " + std::to_string(layer) + " output: value " + std::to_string(value) +
                " overflows float16, the dtype of hidden_states (pass float32 to get it)");
    }
  }
  py::object result = WrapTensorAs(std::move(out), p.element, p.as_torch);
  if (p.squeeze) result = result.attr("reshape")(p.batch, result.attr("shape")[py::int_(2)]);
  return result;
}

// A page pool (attn::PagedKVPool) and what it was made for: the layer kind (MLA or GQA family)
// and the MLA form, which every step over it uses. Calls on one pool from several threads are
// serialised by the mutex, as for PyCache.
class PyPagedCache {
 public:
  PyPagedCache(std::unique_ptr<PagedKVPool> pool, MlaForm form, bool is_mla)
      : pool_(std::move(pool)), form_(form), is_mla_(is_mla) {}

  PagedKVPool& pool() { return *pool_; }
  MlaForm form() const { return form_; }
  bool is_mla() const { return is_mla_; }
  std::mutex& mutex() { return mutex_; }

  int64_t Add() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_->Add();
  }
  int64_t Fork(int64_t parent) {
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_->Fork(parent);
  }
  void Free(int64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    pool_->Free(id);
  }
  // `id in pool`: false for anything that is not a live sequence id (other types included).
  bool Contains(py::handle id) {
    if (py::isinstance<py::bool_>(id) || !py::hasattr(id, "__index__")) return false;
    int64_t value = 0;
    try {
      value = py::int_(id.attr("__index__")()).cast<int64_t>();
    } catch (const py::cast_error&) {
      return false;  // beyond int64: never an id
    }
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_->Contains(value);
  }
  py::list Lengths(py::handle seqs) {
    ArrayView holder;
    const std::span<const int64_t> ids = SequenceIds(seqs, holder);
    std::vector<int64_t> lengths;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const int64_t id : ids) lengths.push_back(pool_->length(id));
    }
    py::list out;
    for (const int64_t length : lengths) out.append(length);
    return out;
  }
  int64_t FreePages() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_->free_pages();
  }
  py::object MlaName() const {
    if (!is_mla_) return py::none();
    return py::str(MlaFormName(form_));
  }
  std::string Repr() {
    std::lock_guard<std::mutex> lock(mutex_);
    return "attn.PagedCache(pages=" + std::to_string(pool_->pages()) +
           ", page_size=" + std::to_string(pool_->page_size()) + ", dtype='" +
           StorageName(pool_->dtype()) + "'" +
           (is_mla_ ? std::string(", mla='") + MlaFormName(form_) + "'" : std::string()) +
           ", free_pages=" + std::to_string(pool_->free_pages()) +
           ", nbytes=" + std::to_string(pool_->nbytes()) + ")";
  }

  // A 1-D list or array of sequence ids (integers) as int64; empty when it has no entries.
  static std::span<const int64_t> SequenceIds(py::handle seqs, ArrayView& holder) {
    const ArrayView view = ViewArray(seqs, "seqs");
    Check(view.rank() == 1, ErrorKind::kInvalidArgument,
          "seqs: expected a 1-D list of sequence ids, got shape " + ShapeToString(view.shape));
    if (view.size() == 0) return {};
    return AsInt64(view, holder);
  }

 private:
  std::unique_ptr<PagedKVPool> pool_;
  MlaForm form_;
  bool is_mla_;
  std::mutex mutex_;
};

// A packed call's tokens: hidden_states [N, D], position_ids and attention_mask [N], and the
// rows of each sequence (`counts`, one per id of `ids`: non-negative, summing to N).
struct PreparedPacked {
  PreparedTokens tokens;
  ArrayView ids_holder;
  std::span<const int64_t> ids;
};

PreparedPacked PreparePacked(const ModelConfig& config, py::handle hidden_states, py::handle seqs,
                             py::handle counts, py::handle position_ids,
                             py::handle attention_mask) {
  PreparedPacked packed;
  PreparedTokens& p = packed.tokens;
  const ArrayView x = ViewArray(hidden_states, "hidden_states");
  p.as_torch = x.from_torch;
  p.element = x.element;
  const std::string d = std::to_string(config.hidden_size);
  Check(x.rank() == 2 && x.shape[0] > 0 && x.shape[1] == config.hidden_size,
        ErrorKind::kInvalidArgument,
        "hidden_states: step takes packed tokens [N, " + d +
            "] (each sequence's rows in turn, counts[b] of them), got " + ShapeToString(x.shape));
  const int64_t rows = x.shape[0];
  p.batch = rows;
  p.tokens = 1;

  packed.ids = PyPagedCache::SequenceIds(seqs, packed.ids_holder);
  const auto batch = static_cast<int64_t>(packed.ids.size());
  Check(batch > 0, ErrorKind::kInvalidArgument, "seqs: expected at least one sequence id");
  for (size_t i = 0; i < packed.ids.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      Check(packed.ids[j] != packed.ids[i], ErrorKind::kInvalidArgument,
            "seqs: sequence " + std::to_string(packed.ids[i]) + " appears twice");
    }
  }
  const ArrayView counts_view = ViewArray(counts, "counts");
  Check(counts_view.shape == Shape{batch}, ErrorKind::kInvalidArgument,
        "counts: expected one per sequence, shape " + ShapeToString({batch}) + ", got " +
            ShapeToString(counts_view.shape));
  p.lengths = AsInt64(counts_view, p.lengths_holder);
  int64_t total = 0;
  for (size_t b = 0; b < p.lengths.size(); ++b) {
    const int64_t n = p.lengths[b];
    Check(n >= 0 && n <= rows, ErrorKind::kInvalidArgument,
          "counts: each must lie in [0, " + std::to_string(rows) + "] (the rows of " +
              "hidden_states), got " + std::to_string(n) + " for sequence " +
              std::to_string(packed.ids[b]));
    total += n;
  }
  Check(total == rows, ErrorKind::kInvalidArgument,
        "counts: sum to " + std::to_string(total) + " but hidden_states has " +
            std::to_string(rows) + " rows");

  const auto per_row = [&](py::handle object, const std::string& name) {
    ArrayView view = ViewArray(object, name);
    Check(view.shape == Shape{rows}, ErrorKind::kInvalidArgument,
          name + ": expected shape " + ShapeToString({rows}) +
              " (one per row of hidden_states), got " + ShapeToString(view.shape));
    return view;
  };
  if (!position_ids.is_none()) {
    p.positions = AsInt64(per_row(position_ids, "position_ids"), p.positions_holder);
  }
  if (!attention_mask.is_none()) {
    p.keep = AsKeepFlags(per_row(attention_mask, "attention_mask"), p.keep_holder);
  }
  p.hidden = ToTensor(x);
  CheckFinite(p.hidden, "hidden_states");
  return packed;
}

// `shard`: None, or (rank, world) of tensor parallelism (attn/parallel.h). Anything else, and a
// rank outside [0, world), is a ValueError.
std::optional<Shard> ShardFromArg(py::handle shard) {
  if (shard.is_none()) return std::nullopt;
  const bool pair =
      (py::isinstance<py::tuple>(shard) || py::isinstance<py::list>(shard)) && py::len(shard) == 2;
  const auto is_int = [](py::handle item) {
    return py::isinstance<py::int_>(item) && !py::isinstance<py::bool_>(item);
  };
  Check(
      pair && is_int(shard[py::int_(0)]) && is_int(shard[py::int_(1)]), ErrorKind::kInvalidArgument,
      "shard: expected None or (rank, world) integers, got " + py::repr(shard).cast<std::string>());
  const auto rank = shard[py::int_(0)].cast<int64_t>();
  const auto world = shard[py::int_(1)].cast<int64_t>();
  Check(world >= 1 && rank >= 0 && rank < world && world <= (int64_t{1} << 20),
        ErrorKind::kInvalidArgument,
        "shard: rank " + std::to_string(rank) + " of world " + std::to_string(world) +
            " is not a rank of that world");
  return Shard{static_cast<int>(rank), static_cast<int>(world)};
}

// The whole layer, or with `shard` the rank's tensor-parallel slice of it (its heads).
std::unique_ptr<AttentionLayer> BuildLayer(const ModelConfig& config, int64_t layer,
                                           NamedWeights weights, std::optional<Shard> shard) {
  if (!shard) return BuildAttentionLayer(config, layer, std::move(weights));
  return BuildAttentionLayer(TensorParallelConfig(config, *shard), layer,
                             ShardAttentionWeights(config, std::move(weights), *shard));
}

// A layer from a checkpoint; when sharded, from the rank's slice only, so that a rank maps and
// scans its own rows (LoadAttentionWeightShard).
std::unique_ptr<AttentionLayer> BuildFromCheckpoint(const Checkpoint& checkpoint,
                                                    const ModelConfig& config, int64_t layer,
                                                    std::optional<Shard> shard) {
  if (!shard) {
    return BuildAttentionLayer(config, layer, LoadHfAttentionWeights(checkpoint, config, layer));
  }
  return BuildAttentionLayer(TensorParallelConfig(config, *shard), layer,
                             LoadAttentionWeightShard(checkpoint, config, layer, *shard));
}

class PyAttention {
 public:
  PyAttention(ModelConfig config, int64_t layer, std::unique_ptr<AttentionLayer> impl,
              std::optional<Shard> shard = std::nullopt)
      : config_(std::move(config)), layer_(layer), impl_(std::move(impl)), shard_(shard) {}

  static std::unique_ptr<PyAttention> FromConfig(py::handle config_arg, py::handle weights,
                                                 int64_t layer, py::handle shard_arg) {
    ModelConfig config = ResolveConfig(config_arg);
    CheckLayerIndex(config, layer);
    const std::optional<Shard> shard = ShardFromArg(shard_arg);
    if (shard) TensorParallelHeads(config, *shard);  // a config heads cannot split fails first
    std::unique_ptr<AttentionLayer> impl;
    if (py::isinstance<py::dict>(weights)) {
      NamedTensors named = WeightsFromDict(weights.cast<py::dict>(), config, layer);
      ComputeScope release;
      impl = BuildLayer(config, layer, ToNamedWeights(std::move(named)), shard);
    } else if (py::isinstance<py::str>(weights) || py::hasattr(weights, "__fspath__")) {
      const std::string path = PathText(weights);
      ComputeScope release;
      const Checkpoint checkpoint = Checkpoint::Open(path);
      impl = BuildFromCheckpoint(checkpoint, config, layer, shard);
    } else {
      throw py::type_error(
          "weights: expected a safetensors path or a dict of arrays, got " +
          py::str(py::type::handle_of(weights).attr("__name__")).cast<std::string>());
    }
    return std::make_unique<PyAttention>(std::move(config), layer, std::move(impl), shard);
  }

  // Layers `layers` (all when empty) of the model in `directory` (config.json and its
  // safetensors, sharded or not): the checkpoint is opened once and each file mapped once, the
  // layers' weights sharing the mappings.
  static std::vector<std::unique_ptr<PyAttention>> FromPretrained(const std::string& directory,
                                                                  std::vector<int64_t> layers,
                                                                  py::handle shard_arg) {
    const std::optional<Shard> shard = ShardFromArg(shard_arg);
    const ModelConfig config =
        LoadHfConfig((std::filesystem::path(directory) / "config.json").string());
    if (layers.empty()) {
      for (int64_t i = 0; i < config.num_layers; ++i) layers.push_back(i);
    }
    for (const int64_t layer : layers) CheckLayerIndex(config, layer);
    if (shard) TensorParallelHeads(config, *shard);
    std::vector<std::unique_ptr<PyAttention>> built;
    ComputeScope release;
    const Checkpoint checkpoint = Checkpoint::Open(directory);
    for (const int64_t layer : layers) {
      built.push_back(std::make_unique<PyAttention>(
          config, layer, BuildFromCheckpoint(checkpoint, config, layer, shard), shard));
    }
    return built;
  }

  static std::unique_ptr<PyAttention> Random(py::handle config_arg, uint64_t seed, int64_t layer,
                                             py::handle shard_arg) {
    ModelConfig config = ResolveConfig(config_arg);
    CheckLayerIndex(config, layer);
    const std::optional<Shard> shard = ShardFromArg(shard_arg);
    if (shard) TensorParallelHeads(config, *shard);
    ComputeScope release;
    std::unique_ptr<AttentionLayer> impl =
        BuildLayer(config, layer, ToNamedWeights(RandomAttentionWeights(config, seed)), shard);
    return std::make_unique<PyAttention>(std::move(config), layer, std::move(impl), shard);
  }

  py::object Forward(py::handle hidden_states, py::handle position_ids, py::handle attention_mask,
                     const std::string& mla, py::handle lengths) const {
    const MlaForm form = FormFor(config_, mla);
    PreparedTokens p = PrepareTokens(config_, CallKind::kForward, hidden_states, position_ids,
                                     attention_mask, lengths);
    Tensor out;
    {
      ComputeScope release;
      out = impl_->Forward(p.Batch(), form);
    }
    return WrapOutput(std::move(out), p, layer_);
  }

  py::object PrefillThenDecode(py::handle hidden_states, int64_t prefill_tokens,
                               py::handle position_ids, py::handle attention_mask,
                               const std::string& mla, const std::string& cache_dtype) const {
    const MlaForm form = FormFor(config_, mla);
    const DType dtype = StorageDTypeFromString(cache_dtype);
    PreparedTokens p = PrepareTokens(config_, CallKind::kForward, hidden_states, position_ids,
                                     attention_mask, py::none());
    Tensor out;
    {
      ComputeScope release;
      out = impl_->PrefillThenDecode(p.Batch(), prefill_tokens, form, dtype);
    }
    return WrapOutput(std::move(out), p, layer_);
  }

  std::unique_ptr<PyCache> NewCache(int64_t batch, int64_t capacity, const std::string& dtype,
                                    const std::string& mla) const {
    const MlaForm form = FormFor(config_, mla);
    Check(batch > 0 && capacity > 0, ErrorKind::kInvalidArgument,
          "new_cache: batch and capacity must be positive, got batch=" + std::to_string(batch) +
              ", capacity=" + std::to_string(capacity));
    return std::make_unique<PyCache>(
        impl_->NewCache(batch, capacity, StorageDTypeFromString(dtype), form), form,
        config_.kind == AttentionKind::kMla);
  }

  py::object Step(CallKind kind, py::handle hidden_states, PyCache& cache, py::handle position_ids,
                  py::handle attention_mask, py::handle lengths) const {
    PreparedTokens p =
        PrepareTokens(config_, kind, hidden_states, position_ids, attention_mask, lengths);
    Tensor out;
    {
      ComputeScope release;
      std::lock_guard<std::mutex> lock(cache.mutex());
      out = impl_->Step(p.Batch(), cache.cache(), cache.form());
    }
    return WrapOutput(std::move(out), p, layer_);
  }

  std::unique_ptr<PyPagedCache> NewPagedCache(int64_t pages, int64_t page_size,
                                              const std::string& dtype,
                                              const std::string& mla) const {
    const MlaForm form = FormFor(config_, mla);
    return std::make_unique<PyPagedCache>(
        impl_->NewPagedPool(pages, page_size,
                            StorageDTypeFromString(dtype, /*allow_quantized=*/true), form),
        form, config_.kind == AttentionKind::kMla);
  }

  py::object StepPaged(py::handle hidden_states, PyPagedCache& cache, py::handle seqs,
                       py::handle counts, py::handle position_ids,
                       py::handle attention_mask) const {
    const bool is_mla = config_.kind == AttentionKind::kMla;
    Check(cache.is_mla() == is_mla, ErrorKind::kInvalidArgument,
          std::string("cache: this paged cache was made by ") +
              (cache.is_mla() ? "an MLA layer" : "a GQA-family layer") + ", and this layer ('" +
              config_.model_type + "') is " + (is_mla ? "MLA" : "GQA-family"));
    PreparedPacked packed =
        PreparePacked(config_, hidden_states, seqs, counts, position_ids, attention_mask);
    Tensor out;
    {
      ComputeScope release;
      std::lock_guard<std::mutex> lock(cache.mutex());
      for (const int64_t id : packed.ids) {
        Check(cache.pool().Contains(id), ErrorKind::kInvalidArgument,
              "seqs: sequence " + std::to_string(id) +
                  " is not live in this cache (freed, or never added to it)");
      }
      impl_->StepPagedInto(packed.tokens.Batch(), cache.pool(), packed.ids, cache.form(), out);
    }
    return WrapOutput(std::move(out), packed.tokens, layer_);
  }

  size_t KvBytesPerToken(const std::string& dtype, const std::string& mla) const {
    const MlaForm form = FormFor(config_, mla);
    const CacheForm cache_form = config_.kind == AttentionKind::kMla && form != MlaForm::kNaive
                                     ? CacheForm::kLatent
                                     : CacheForm::kHeads;
    // The local layer's config: a shard caches its own heads only.
    return CacheBytesPerToken(impl_->config(), cache_form, StorageDTypeFromString(dtype));
  }

  py::dict Config() const { return ConfigDict(config_, layer_); }
  int64_t layer() const { return layer_; }
  py::object ShardTuple() const {
    if (!shard_) return py::none();
    return py::make_tuple(shard_->rank, shard_->world);
  }
  std::string Repr() const {
    return "attn.Attention(model_type='" + config_.model_type + "', kind='" +
           (config_.kind == AttentionKind::kMla ? "mla" : "gqa") +
           "', hidden_size=" + std::to_string(config_.hidden_size) +
           ", num_heads=" + std::to_string(config_.num_heads) +
           ", layer=" + std::to_string(layer_) +
           (shard_ ? ", shard=(" + std::to_string(shard_->rank) + ", " +
                         std::to_string(shard_->world) + ")"
                   : std::string()) +
           ")";
  }

 private:
  ModelConfig config_;
  int64_t layer_;
  std::unique_ptr<AttentionLayer> impl_;
  std::optional<Shard> shard_;
};

py::dict RandomWeights(py::handle config_arg, uint64_t seed, int64_t layer) {
  const ModelConfig config = ResolveConfig(config_arg);
  CheckLayerIndex(config, layer);
  NamedTensors weights;
  {
    ComputeScope release;
    weights = RandomAttentionWeights(config, seed);
  }
  const std::string prefix = HfAttentionPrefix(layer);
  py::dict out;
  for (auto& [name, tensor] : weights)
    out[py::str(prefix + name)] = WrapTensor(std::move(tensor), false);
  return out;
}

// What `attn random-weights` writes (the same library calls): a layer's random weights stored as
// `dtype` ("f32", "f16", "bf16", "fp8": DeepSeek's layout), and optionally its config.json.
void SaveRandomWeights(py::handle path_arg, py::handle config_arg, uint64_t seed, int64_t layer,
                       const std::string& dtype_name, py::handle config_output) {
  ModelConfig config = ResolveConfig(config_arg);
  CheckLayerIndex(config, layer);
  const DType dtype = WeightDTypeFromString(dtype_name, /*allow_fp8=*/true);
  if (dtype == DType::kF8E4M3) config.quantization.fp8_blocks = true;
  const std::string path = PathText(path_arg);
  const std::string config_path = config_output.is_none() ? "" : PathText(config_output);
  ComputeScope release;
  if (!config_path.empty()) HfConfigJson(config);  // a config HF cannot spell fails before writing
  SafetensorsWriter writer;
  AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, seed), layer, dtype);
  writer.SetMetadata("format", "pt");
  writer.Write(path);
  if (!config_path.empty()) WriteHfConfigFile(config_path, config);
}

py::dict LoadSafetensors(py::handle path_arg) {
  const SafetensorsFile file = SafetensorsFile::Open(PathText(path_arg));
  py::dict out;
  for (const std::string& name : file.Names()) {
    const DType dtype = file.Get(name).dtype;
    if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
        dtype == DType::kF64) {
      out[py::str(name)] = WrapTensor(file.ReadF32(name), false);
    } else {
      Shape shape;
      const std::vector<int64_t> values = file.ReadI64(name, &shape);
      py::array_t<int64_t> array(std::vector<py::ssize_t>(shape.begin(), shape.end()));
      if (!values.empty()) std::memcpy(array.mutable_data(), values.data(), values.size() * 8);
      out[py::str(name)] = std::move(array);
    }
  }
  return out;
}

}  // namespace

ModelConfig ResolveConfig(py::handle config) {
  if (py::isinstance<py::dict>(config)) {
    return ParseHfConfig(py::module_::import("json").attr("dumps")(config).cast<std::string>());
  }
  const bool path_like = py::hasattr(config, "__fspath__");
  if (!py::isinstance<py::str>(config) && !path_like) {
    throw py::type_error(
        "config: expected a dict, JSON text, a config.json path or a preset name, got " +
        py::str(py::type::handle_of(config).attr("__name__")).cast<std::string>());
  }
  const std::string text = PathText(config);
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (!path_like && first != std::string::npos && text[first] == '{') return ParseHfConfig(text);
  std::error_code error;
  if (std::filesystem::is_directory(text, error)) {
    return LoadHfConfig((std::filesystem::path(text) / "config.json").string());
  }
  if (path_like || std::filesystem::exists(text, error) || text.find('/') != std::string::npos ||
      text.ends_with(".json")) {
    return LoadHfConfig(text);
  }
  return PresetConfig(text);
}

void BindLayers(py::module_& module) {
  py::class_<PyCache>(module, "Cache", R"doc(
A KV cache for one layer: `batch` sequences of up to `capacity` tokens each, stored as
f32, f16 or bf16, in the layout the layer's form needs (GQA: per-head K/V; MLA naive: per-head
K/V; MLA absorbed/auto: the latent row of kv_lora_rank + qk_rope_head_dim values per token).
Made by Attention.new_cache(); filled by Attention.prefill() and Attention.decode().
Calls from several threads on one cache are serialised.)doc")
      .def_property_readonly("nbytes", &PyCache::nbytes,
                             "Bytes of K/V storage (batch * capacity * bytes per token); padding "
                             "flags and lengths are not counted.")
      .def_property_readonly("lengths", &PyCache::lengths,
                             "Tokens held by each sequence: a new int64 array of shape [batch].")
      .def_property_readonly(
          "batch", [](PyCache& cache) { return cache.cache().batch(); }, "Number of sequences.")
      .def_property_readonly(
          "capacity", [](PyCache& cache) { return cache.cache().capacity(); },
          "Tokens each sequence can hold.")
      .def_property_readonly(
          "dtype", [](PyCache& cache) { return StorageName(cache.cache().dtype()); },
          "Storage dtype: 'f32', 'f16' or 'bf16'.")
      .def_property_readonly("mla", &PyCache::MlaName,
                             "MLA form the cache serves ('naive', 'absorbed', 'auto'); None for "
                             "GQA-family layers.")
      .def_property_readonly(
          "bytes_per_token", [](PyCache& cache) { return cache.cache().bytes_per_token(); },
          "Bytes of K/V storage per token.")
      .def("clear", &PyCache::Clear, "Forgets every token; capacity and storage are kept.")
      .def("__repr__", &PyCache::Repr);

  py::class_<PyPagedCache>(module, "PagedCache", R"doc(
A paged KV cache for one layer: a pool of `pages` fixed-size pages of `page_size` tokens,
shared by any number of sequences, each identified by an int id (never reused). A sequence takes
pages as it grows; fork() shares its parent's full pages and copies the partial last one; free()
returns pages once their last owner is gone. Stored as f32, f16 or bf16, in the layout of the
layer kind and MLA form it was made for (per-head K/V, or MLA latent rows).
Made by Attention.new_paged_cache(); filled by Attention.step().
Calls from several threads on one cache are serialised.)doc")
      .def("add", &PyPagedCache::Add, "A new empty sequence; returns its id.")
      .def("fork", &PyPagedCache::Fork, py::arg("seq"), R"doc(
A new sequence holding the tokens of sequence `seq`; returns its id. Full pages are shared,
the partial last page is copied; later steps of either never change the other's tokens.
Raises ValueError for a sequence not in the cache, or when no page is free for the copy.)doc")
      .def("free", &PyPagedCache::Free, py::arg("seq"), R"doc(
Ends sequence `seq`: its pages return to the pool (shared ones when their last owner goes).
Its id is never used again; a later use of it raises ValueError.)doc")
      .def("lengths", &PyPagedCache::Lengths, py::arg("seqs"),
           "Tokens held by each sequence of `seqs` (a list or 1-D array of ids), as a list of "
           "ints. Raises ValueError for an id not in the cache.")
      .def("__contains__", &PyPagedCache::Contains, py::arg("seq"))
      .def_property_readonly("free_pages", &PyPagedCache::FreePages, "Pages no sequence holds.")
      .def_property_readonly(
          "pages", [](PyPagedCache& cache) { return cache.pool().pages(); }, "Pages in the pool.")
      .def_property_readonly(
          "page_size", [](PyPagedCache& cache) { return cache.pool().page_size(); },
          "Tokens per page.")
      .def_property_readonly(
          "nbytes", [](PyPagedCache& cache) { return cache.pool().nbytes(); },
          "Bytes of page storage (pages * page_size * bytes per token); padding flags and "
          "block tables are not counted.")
      .def_property_readonly(
          "dtype", [](PyPagedCache& cache) { return StorageName(cache.pool().dtype()); },
          "Storage dtype: 'f32', 'f16' or 'bf16'.")
      .def_property_readonly("mla", &PyPagedCache::MlaName,
                             "MLA form the cache serves ('naive', 'absorbed', 'auto'); None for "
                             "GQA-family layers.")
      .def("__repr__", &PyPagedCache::Repr);

  py::class_<PyAttention>(module, "Attention", R"doc(
One attention layer of a checkpoint (Llama, Mistral, Qwen2: MHA/GQA/MQA; DeepSeek-V2/V3: MLA),
computing exactly what the Hugging Face model computes for `self_attn` of that layer.

Make one with Attention.from_config(config, weights, layer) or Attention.random(config, seed).
Inputs are NumPy arrays or PyTorch CPU tensors; outputs have the dtype of hidden_states
(float32, float64, float16 NumPy arrays, or torch tensors of those and bfloat16 when
hidden_states is a torch tensor), computed in float32. The GIL is released while a layer
computes. Projection weights read from files stay in their stored dtype (float32, bfloat16,
float16, fp8 E4M3 with block scales), memory-mapped.

Shapes: hidden_states [B, S, hidden_size] (any float dtype; copied once to float32),
position_ids [B, S] integers (default: each sequence continues from its cache length),
attention_mask [B, S] of 0 (padding) / 1 (keep) in any integer, bool or float dtype; it masks
keys only: a padded token still gets an output row. Non-finite hidden_states raise ValueError.

Tensor parallelism: the factories take shard=(rank, world) to hold only that rank's slice of
the layer (its world-th of the query heads with their kv heads; MLA: its heads, the latent
whole). forward, prefill, decode, step and prefill_then_decode then return the rank's PARTIAL
output; the sum over the ranks' partial outputs (torch.distributed.all_reduce with SUM) is the
layer's output. o_proj's bias is added by rank 0 only. Caches hold the rank's heads only.
shard=None (the default) is the whole layer.)doc")
      .def_static("from_config", &PyAttention::FromConfig, py::arg("config"), py::arg("weights"),
                  py::arg("layer") = 0, py::arg("shard") = py::none(), R"doc(
Builds layer `layer` of a checkpoint.

config: a dict (a parsed config.json), JSON text, a path to config.json or to the directory
    holding it, or a preset name (attn.presets()).
weights: a safetensors path, a sharded model's model.safetensors.index.json or the directory
    holding it (tensors under model.layers.{layer}.self_attn.*, read in their stored dtype:
    float32, bfloat16, float16, or fp8 E4M3 with its weight_scale_inv block scales), or a dict of
    arrays/tensors keyed by those HF names or by the short names ("q_proj.weight",
    "kv_b_proj.weight", ...; converted to float32). Other "model.*" / "lm_head.*" keys of a
    state dict are ignored.
shard: None (the whole layer) or (rank, world): tensor parallelism, the layer holds only that
    rank's heads and returns its partial output (see Attention). From a file only the rank's
    rows are read. ValueError when world does not divide the heads, for a rank outside
    [0, world), for models a split by heads cannot compute (OLMo 2's whole-projection q/k norm,
    ALiBi) and for fp8 weights whose block scales the split would cut.

Raises KeyError naming a missing tensor, ValueError for a misshapen or unexpected one (or
unsupported config values), OSError for files that cannot be read or are corrupt.)doc")
      .def_static(
          "from_pretrained",
          [](py::handle directory, int64_t layer, py::handle shard) {
            std::vector<std::unique_ptr<PyAttention>> built =
                PyAttention::FromPretrained(PathText(directory), {layer}, shard);
            return std::move(built.front());
          },
          py::arg("directory"), py::arg("layer") = 0, py::arg("shard") = py::none(), R"doc(
Layer `layer` of the Hugging Face model in `directory`: its config.json, and its weights from
model.safetensors.index.json (sharded) or model.safetensors. Projection weights stay in their
stored dtype (float32, bfloat16, float16, or DeepSeek's fp8 E4M3 with block scales) and are
memory-mapped, not copied; the files must not be truncated while the layer lives.
shard: None or (rank, world), as for from_config: only that rank's rows are read.)doc")
      .def_static("random", &PyAttention::Random, py::arg("config"), py::arg("seed") = 0,
                  py::arg("layer") = 0, py::arg("shard") = py::none(), R"doc(
A layer with deterministic random weights (the same as `attn random-weights --seed`):
matrices uniform in +-1/sqrt(in), biases in +-0.1, norm scales in 1 +- 0.25.
shard: None or (rank, world), as for from_config: the rank's slice of those same weights.)doc")
      .def("forward", &PyAttention::Forward, py::arg("hidden_states"),
           py::arg("position_ids") = py::none(), py::arg("attention_mask") = py::none(),
           py::arg("mla") = "auto", py::arg("lengths") = py::none(), R"doc(
Full prefill of [B, S, hidden_size] hidden states through a fresh float32 cache; returns the
attention output [B, S, hidden_size].

mla: 'naive', 'absorbed' or 'auto' for MLA layers (same numbers up to rounding); GQA-family
    layers accept only 'auto'.
lengths: optional [B] integers, tokens each sequence contributes (ragged batch); rows past a
    sequence's length give zeros.)doc")
      .def("prefill_then_decode", &PyAttention::PrefillThenDecode, py::arg("hidden_states"),
           py::arg("prefill_tokens"), py::arg("position_ids") = py::none(),
           py::arg("attention_mask") = py::none(), py::arg("mla") = "auto",
           py::arg("cache_dtype") = "f32", R"doc(
The first `prefill_tokens` tokens as one prefill, then one decode step per remaining token,
through a fresh cache of `cache_dtype` ('f32', 'f16', 'bf16'): what `attn forward --prefill N`
runs. Returns the outputs of all S tokens, equal to forward() up to rounding.)doc")
      .def("new_cache", &PyAttention::NewCache, py::arg("batch"), py::arg("capacity"),
           py::arg("dtype") = "bf16", py::arg("mla") = "auto", R"doc(
An empty KV cache for `batch` sequences of up to `capacity` tokens, stored as `dtype`
('f32', 'f16', 'bf16'). For MLA layers `mla` picks the form the cache serves: 'naive' caches
per-head K and V, 'absorbed' and 'auto' the latent row.)doc")
      .def(
          "prefill",
          [](const PyAttention& self, py::handle x, PyCache& cache, py::handle position_ids,
             py::handle attention_mask, py::handle lengths) {
            return self.Step(CallKind::kPrefill, x, cache, position_ids, attention_mask, lengths);
          },
          py::arg("hidden_states"), py::arg("cache"), py::arg("position_ids") = py::none(),
          py::arg("attention_mask") = py::none(), py::arg("lengths") = py::none(), R"doc(
Appends [B, S, hidden_size] tokens to `cache` and returns their attention output
[B, S, hidden_size]; the tokens attend to everything the cache holds (chunked prefill is just
several calls). Raises ValueError if a sequence would overflow the cache's capacity (nothing is
written then).)doc")
      .def(
          "decode",
          [](const PyAttention& self, py::handle x, PyCache& cache, py::handle position_ids,
             py::handle attention_mask) {
            return self.Step(CallKind::kDecode, x, cache, position_ids, attention_mask, py::none());
          },
          py::arg("hidden_states"), py::arg("cache"), py::arg("position_ids") = py::none(),
          py::arg("attention_mask") = py::none(), R"doc(
One decode step: hidden_states [B, hidden_size] or [B, 1, hidden_size], position_ids and
attention_mask [B] or [B, 1]. Returns the output in the same shape as hidden_states.)doc")
      .def("new_paged_cache", &PyAttention::NewPagedCache, py::arg("pages"),
           py::arg("page_size") = 64, py::arg("dtype") = "bf16", py::arg("mla") = "auto", R"doc(
An empty paged KV cache (PagedCache): `pages` pages of `page_size` tokens (a multiple of 16
in [16, 256]) shared by any number of sequences, stored as `dtype` ('f32', 'f16', 'bf16', or
'fp8' (E4M3) / 'int8' with one fp32 scale per token and kv head, dequantized inside the
kernels). For MLA layers `mla` picks the
form every step over the cache uses ('naive': per-head K/V pages; 'absorbed', 'auto': latent
rows); GQA-family layers accept only 'auto'. The cache serves layers of this kind and form.)doc")
      .def("step", &PyAttention::StepPaged, py::arg("hidden_states"), py::arg("cache"),
           py::arg("seqs"), py::arg("counts"), py::arg("position_ids") = py::none(),
           py::arg("attention_mask") = py::none(), R"doc(
One call over sequences of a PagedCache, packed: hidden_states [N, hidden_size] holds counts[0]
rows of sequence seqs[0], then counts[1] rows of seqs[1], and so on (prefill chunks and single
decode tokens mix freely; a count may be 0). Appends them to their sequences and returns their
attention output [N, hidden_size] in the dtype of hidden_states.

seqs: distinct live sequence ids of `cache`; counts: one non-negative integer per id, summing
to N. position_ids, attention_mask: optional [N], as for prefill(). The pages the call needs
are taken before anything is written: a bad argument, an unknown or freed id, or too few free
pages raise ValueError and leave every sequence unchanged.)doc")
      .def("kv_bytes_per_token", &PyAttention::KvBytesPerToken, py::arg("dtype") = "bf16",
           py::arg("mla") = "auto",
           "Bytes one token occupies in a cache of `dtype` for the form `mla`.")
      .def_property_readonly("config", &PyAttention::Config,
                             "The attention-relevant config values (a new dict).")
      .def_property_readonly("layer", &PyAttention::layer, "The layer index.")
      .def_property_readonly("shard", &PyAttention::ShardTuple,
                             "(rank, world) of a tensor-parallel slice, or None.")
      .def("__repr__", &PyAttention::Repr);

  module.def(
      "load_attention_layers",
      [](py::handle directory, py::object layers, py::handle shard) {
        std::vector<int64_t> wanted;
        if (!layers.is_none()) {
          for (const py::handle item : layers) wanted.push_back(item.cast<int64_t>());
        }
        py::list out;
        for (auto& layer :
             PyAttention::FromPretrained(PathText(directory), std::move(wanted), shard)) {
          out.append(py::cast(std::move(layer)));
        }
        return out;
      },
      py::arg("directory"), py::arg("layers") = py::none(), py::arg("shard") = py::none(), R"doc(
Every attention layer of the model in `directory` (or those listed in `layers`), as a list of
Attention: one checkpoint opened once, each safetensors file mapped once and shared by the
layers, weights in their stored dtype (see Attention.from_pretrained). shard: None or
(rank, world): each layer holds that rank's tensor-parallel slice (see Attention).)doc");
  module.def("random_weights", &RandomWeights, py::arg("config"), py::arg("seed") = 0,
             py::arg("layer") = 0, R"doc(
The random weights Attention.random(config, seed, layer) uses, as a dict of float32 NumPy
arrays under HF names (model.layers.{layer}.self_attn.*).)doc");
  module.def("save_random_weights", &SaveRandomWeights, py::arg("path"), py::arg("config"),
             py::arg("seed") = 0, py::arg("layer") = 0, py::arg("dtype") = "f32",
             py::arg("config_output") = py::none(), R"doc(
Writes the layer's random weights (those of random_weights()) to a safetensors file, as
`attn random-weights` does: stored as dtype 'f32', 'f16', 'bf16', or 'fp8' (DeepSeek's layout:
F8_E4M3 matrices with F32 weight_scale_inv block scales, norms in bf16). config_output: also
write the model's config.json there (with its quantization_config for fp8). Files are written
atomically.)doc");
  module.def("load_safetensors", &LoadSafetensors, py::arg("path"), R"doc(
Every tensor of a safetensors file, read by attn's validating reader: float tensors
(F32/F16/BF16/F64) as float32 NumPy arrays, integer and bool tensors as int64.
Raises OSError for a file that cannot be read or is corrupt.)doc");
}

}  // namespace attn::python
