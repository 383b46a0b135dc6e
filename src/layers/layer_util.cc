// SPDX-License-Identifier: Apache-2.0
#include "layers/layer_util.h"

#include <algorithm>
#include <cmath>

#include "attn/error.h"
#include "attn/kernels.h"
#include "layers/kv_store.h"

namespace attn::layers {

const ModelConfig& Validated(const ModelConfig& config) {
  ValidateConfig(config);
  return config;
}

namespace {

// hidden_states [N, hidden] with lengths [B] summing to N: the packed layout.
BatchShape CheckPackedBatch(const TokenBatch& batch, int64_t hidden_size) {
  const Tensor& x = *batch.hidden_states;
  ATTN_CHECK(x.dim(1) == hidden_size && x.dim(0) > 0, ErrorKind::kInvalidArgument,
             "hidden_states: expected packed [N, " + std::to_string(hidden_size) +
                 "] with N > 0, got " + ShapeToString(x.shape()));
  ATTN_CHECK(!batch.lengths.empty(), ErrorKind::kInvalidArgument,
             "packed hidden_states [N, D] need lengths: the rows of each sequence");
  BatchShape shape{static_cast<int64_t>(batch.lengths.size()), 0, {}, {}, x.dim(0), true};
  int64_t* counts = IndexScratch(IndexSlot::kCounts, shape.batch);
  int64_t* starts = IndexScratch(IndexSlot::kStarts, shape.batch);
  int64_t total = 0;
  for (int64_t b = 0; b < shape.batch; ++b) {
    const int64_t n = batch.lengths[static_cast<size_t>(b)];
    ATTN_CHECK(n >= 0 && n <= shape.rows, ErrorKind::kInvalidArgument,
               "lengths: each must lie in [0, " + std::to_string(shape.rows) + "], got " +
                   std::to_string(n));
    counts[b] = n;
    starts[b] = total;
    total += n;
    shape.tokens = std::max(shape.tokens, n);
  }
  ATTN_CHECK(total == shape.rows, ErrorKind::kInvalidArgument,
             "lengths sum to " + std::to_string(total) + " but the packed hidden_states have " +
                 std::to_string(shape.rows) + " rows");
  const size_t rows = static_cast<size_t>(shape.rows);
  ATTN_CHECK(batch.positions.empty() || batch.positions.size() == rows, ErrorKind::kInvalidArgument,
             "position_ids: expected " + std::to_string(rows) +
                 " values (one per packed row), got " + std::to_string(batch.positions.size()));
  for (int64_t p : batch.positions) {
    ATTN_CHECK(p >= 0, ErrorKind::kInvalidArgument,
               "position_ids: positions must be >= 0, got " + std::to_string(p));
  }
  ATTN_CHECK(batch.keep.empty() || batch.keep.size() == rows, ErrorKind::kInvalidArgument,
             "attention_mask: expected " + std::to_string(rows) +
                 " values (one per packed row), got " + std::to_string(batch.keep.size()));
  for (uint8_t k : batch.keep) {
    ATTN_CHECK(k <= 1, ErrorKind::kInvalidArgument, "attention_mask: values must be 0 or 1");
  }
  shape.counts = {counts, static_cast<size_t>(shape.batch)};
  shape.starts = {starts, static_cast<size_t>(shape.batch)};
  return shape;
}

}  // namespace

BatchShape CheckTokenBatch(const TokenBatch& batch, int64_t hidden_size) {
  ATTN_CHECK(batch.hidden_states != nullptr, ErrorKind::kInvalidArgument,
             "hidden_states is missing");
  const Tensor& x = *batch.hidden_states;
  if (x.rank() == 2) return CheckPackedBatch(batch, hidden_size);
  ATTN_CHECK(x.rank() == 3 && x.dim(2) == hidden_size && x.dim(0) > 0 && x.dim(1) > 0,
             ErrorKind::kInvalidArgument,
             "hidden_states: expected shape [B, S, " + std::to_string(hidden_size) +
                 "] with B, S > 0, or packed [N, " + std::to_string(hidden_size) +
                 "] with lengths, got " + ShapeToString(x.shape()));
  BatchShape shape{x.dim(0), x.dim(1), {}, {}, x.dim(0) * x.dim(1), false};
  const size_t tokens = static_cast<size_t>(shape.batch * shape.tokens);
  ATTN_CHECK(batch.positions.empty() || batch.positions.size() == tokens,
             ErrorKind::kInvalidArgument,
             "position_ids: expected " + std::to_string(tokens) + " values ([B, S] = [" +
                 std::to_string(shape.batch) + ", " + std::to_string(shape.tokens) + "]), got " +
                 std::to_string(batch.positions.size()));
  for (int64_t p : batch.positions) {
    ATTN_CHECK(p >= 0, ErrorKind::kInvalidArgument,
               "position_ids: positions must be >= 0, got " + std::to_string(p));
  }
  ATTN_CHECK(batch.keep.empty() || batch.keep.size() == tokens, ErrorKind::kInvalidArgument,
             "attention_mask: expected " + std::to_string(tokens) + " values ([B, S] = [" +
                 std::to_string(shape.batch) + ", " + std::to_string(shape.tokens) + "]), got " +
                 std::to_string(batch.keep.size()));
  for (uint8_t k : batch.keep) {
    ATTN_CHECK(k <= 1, ErrorKind::kInvalidArgument, "attention_mask: values must be 0 or 1");
  }
  int64_t* counts = IndexScratch(IndexSlot::kCounts, shape.batch);
  if (batch.lengths.empty()) {
    std::fill(counts, counts + shape.batch, shape.tokens);
  } else {
    ATTN_CHECK(static_cast<int64_t>(batch.lengths.size()) == shape.batch,
               ErrorKind::kInvalidArgument,
               "lengths: expected " + std::to_string(shape.batch) +
                   " values (one per sequence), got " + std::to_string(batch.lengths.size()));
    for (int64_t n : batch.lengths) {
      ATTN_CHECK(n >= 0 && n <= shape.tokens, ErrorKind::kInvalidArgument,
                 "lengths: each must lie in [0, " + std::to_string(shape.tokens) + "], got " +
                     std::to_string(n));
    }
    std::copy(batch.lengths.begin(), batch.lengths.end(), counts);
  }
  shape.counts = {counts, static_cast<size_t>(shape.batch)};
  int64_t* starts = IndexScratch(IndexSlot::kStarts, shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) starts[b] = b * shape.tokens;
  shape.starts = {starts, static_cast<size_t>(shape.batch)};
  return shape;
}

std::span<const int64_t> ResolvePositions(const TokenBatch& batch, const BatchShape& shape,
                                          std::span<const int64_t> lengths) {
  if (!batch.positions.empty()) return batch.positions;
  const int64_t total = shape.rows;
  int64_t* positions = IndexScratch(IndexSlot::kPositions, total);
  for (int64_t b = 0; b < shape.batch; ++b) {
    const int64_t rows = shape.packed ? shape.counts[static_cast<size_t>(b)] : shape.tokens;
    for (int64_t s = 0; s < rows; ++s) {
      positions[shape.start(b) + s] = lengths[static_cast<size_t>(b)] + s;
    }
  }
  return {positions, static_cast<size_t>(total)};
}

float* Scratch(Slot slot, int64_t size) {
  thread_local std::vector<float> buffers[static_cast<int>(Slot::kCount)];
  std::vector<float>& buffer = buffers[static_cast<int>(slot)];
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

int64_t* IndexScratch(IndexSlot slot, int64_t size) {
  thread_local std::vector<int64_t> buffers[static_cast<int>(IndexSlot::kCount)];
  std::vector<int64_t>& buffer = buffers[static_cast<int>(slot)];
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

std::vector<AttentionProblem>& BatchProblems(int64_t count) {
  thread_local std::vector<AttentionProblem> problems;
  if (static_cast<int64_t>(problems.size()) < count) problems.resize(static_cast<size_t>(count));
  return problems;
}

void CheckPositionsAdvance(const TokenBatch& batch, const BatchShape& shape,
                           std::span<const int64_t> positions, const KVStore& store) {
  for (int64_t b = 0; b < shape.batch; ++b) {
    const uint8_t* keep = KeepFlags(batch, shape, b);
    const int64_t cached = store.max_position(b);
    const int64_t count = shape.counts[static_cast<size_t>(b)];
    for (int64_t s = 0; s < count; ++s) {
      if (keep != nullptr && keep[s] == 0) continue;
      const int64_t position = positions[static_cast<size_t>(shape.start(b) + s)];
      ATTN_CHECK(position > cached, ErrorKind::kInvalidArgument,
                 "position_ids go backwards: sequence " + std::to_string(b) + ", token " +
                     std::to_string(s) + " has position " + std::to_string(position) +
                     ", not after position " + std::to_string(cached) +
                     " already in its cache; new tokens must come after the cached ones");
    }
  }
}

void RecordMaxPositions(const TokenBatch& batch, const BatchShape& shape,
                        std::span<const int64_t> positions, KVStore& store) {
  for (int64_t b = 0; b < shape.batch; ++b) {
    const uint8_t* keep = KeepFlags(batch, shape, b);
    int64_t largest = store.max_position(b);
    const int64_t count = shape.counts[static_cast<size_t>(b)];
    for (int64_t s = 0; s < count; ++s) {
      if (keep != nullptr && keep[s] == 0) continue;
      largest = std::max(largest, positions[static_cast<size_t>(shape.start(b) + s)]);
    }
    store.set_max_position(b, largest);
  }
}

const uint8_t* KeepFlags(const TokenBatch& batch, const BatchShape& shape, int64_t sequence) {
  if (batch.keep.empty()) return nullptr;
  return batch.keep.data() + shape.start(sequence);
}

void Project(const float* x, int64_t rows, const Weight& w, const Tensor& bias, float* y) {
  DefaultBackend().linear(
      MakeLinearProblem(x, rows, w, bias.size() > 0 ? bias.data() : nullptr, y));
}

int64_t FirstKeptSlot(const KVView& kv) {
  if (kv.keep == nullptr) return 0;
  for (int64_t t = 0; t < kv.length; ++t) {
    if (kv.keep[KeepOffset(kv, t)] != 0) return t;
  }
  return 0;
}

void ReshapeOutput(const BatchShape& shape, int64_t width, Tensor& out) {
  if (shape.packed) {
    out.Reshape({shape.rows, width});
  } else {
    out.Reshape({shape.batch, shape.tokens, width});
  }
}

void ZeroUnusedRows(const BatchShape& shape, int64_t width, float* out) {
  if (shape.packed) return;
  for (int64_t b = 0; b < shape.batch; ++b) {
    const int64_t used = shape.counts[static_cast<size_t>(b)];
    std::fill(out + (b * shape.tokens + used) * width, out + (b + 1) * shape.tokens * width, 0.0f);
  }
}

const RotaryEmbedding& RopeForCall(const RotaryEmbedding& rope, std::span<const int64_t> positions,
                                   const BatchShape& shape,
                                   std::optional<RotaryEmbedding>& storage) {
  if (!rope.varies_per_call()) return rope;
  // Dynamic NTK / longrope (docs/semantics.md §2): the frequencies of the largest position of
  // the call's used rows (rows past a sequence's count hold no token).
  int64_t largest = -1;
  for (int64_t b = 0; b < shape.batch; ++b) {
    const int64_t count = shape.counts[static_cast<size_t>(b)];
    for (int64_t s = 0; s < count; ++s) {
      largest = std::max(largest, positions[static_cast<size_t>(shape.start(b) + s)]);
    }
  }
  return storage.emplace(rope.ForCall(largest));
}

void RotateHeads(const RotaryEmbedding& rope, std::span<const int64_t> positions, float* data,
                 int64_t token_stride, int64_t offset, int64_t heads, int64_t stride) {
  thread_local std::vector<float> cos, sin;
  cos.resize(static_cast<size_t>(rope.rotary_dim() / 2));
  sin.resize(cos.size());
  for (size_t n = 0; n < positions.size(); ++n) {
    rope.Angles(positions[n], cos, sin);
    rope.Rotate(cos, sin, data + static_cast<int64_t>(n) * token_stride + offset, heads, stride);
  }
}

void RmsNormRows(float* x, int64_t rows, int64_t stride, const Tensor& weight, double eps) {
  const int64_t width = weight.size();
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * stride;
    double sum_squares = 0.0;
    for (int64_t i = 0; i < width; ++i) sum_squares += static_cast<double>(row[i]) * row[i];
    const float inverse_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(width) + eps));
    for (int64_t i = 0; i < width; ++i) row[i] = row[i] * inverse_rms * weight.data()[i];
  }
}

void UnweightedRmsNormRows(float* x, int64_t rows, int64_t width, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * width;
    double sum_squares = 0.0;
    for (int64_t i = 0; i < width; ++i) sum_squares += static_cast<double>(row[i]) * row[i];
    const float inverse_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(width) + eps));
    for (int64_t i = 0; i < width; ++i) row[i] *= inverse_rms;
  }
}

void CheckWeight(const Tensor& tensor, const Shape& expected, const std::string& name) {
  ATTN_CHECK(tensor.shape() == expected, ErrorKind::kInvalidArgument,
             name + ": expected shape " + ShapeToString(expected) + ", got " +
                 ShapeToString(tensor.shape()));
}

void CheckWeight(const Weight& weight, const Shape& expected, const std::string& name) {
  ATTN_CHECK(weight.shape() == expected, ErrorKind::kInvalidArgument,
             name + ": expected shape " + ShapeToString(expected) + ", got " +
                 ShapeToString(weight.shape()));
  // An fp8 matrix means nothing without its scales (docs/semantics.md §9).
  ATTN_CHECK(weight.dtype() != DType::kF8E4M3 || weight.block_scales() != nullptr,
             ErrorKind::kInvalidArgument, name + ": F8_E4M3 weight without its block scales");
}

void ContiguousHeads::AppendLatent(int64_t, int64_t, const float*, const uint8_t*) {
  throw Error(ErrorKind::kInvalidArgument, "latent rows appended to a per-head cache");
}
void ContiguousHeads::ReadRows(int64_t, float*) const {
  throw Error(ErrorKind::kInvalidArgument, "latent rows read from a per-head cache");
}
void ContiguousLatent::AppendHeads(int64_t, int64_t, const float*, const float*, const uint8_t*) {
  throw Error(ErrorKind::kInvalidArgument, "per-head K/V appended to a latent cache");
}

}  // namespace attn::layers
