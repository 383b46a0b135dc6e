// SPDX-License-Identifier: Apache-2.0
#include "attn/layer.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "attn/error.h"

namespace attn {

MlaForm MlaFormFromString(const std::string& name) {
  if (name == "naive") return MlaForm::kNaive;
  if (name == "absorbed") return MlaForm::kAbsorbed;
  if (name == "auto") return MlaForm::kAuto;
  throw Error(ErrorKind::kInvalidArgument,
              "unknown MLA form '" + name + "' (expected naive, absorbed or auto)");
}

const char* MlaFormName(MlaForm form) {
  switch (form) {
    case MlaForm::kNaive:
      return "naive";
    case MlaForm::kAbsorbed:
      return "absorbed";
    case MlaForm::kAuto:
      return "auto";
  }
  return "?";
}

std::unique_ptr<PagedKVPool> AttentionLayer::NewPagedPool(int64_t pages, int64_t page_size,
                                                          DType dtype, MlaForm form) const {
  const ModelConfig& c = config();
  if (c.kind == AttentionKind::kGqa) {
    ATTN_CHECK(form == MlaForm::kAuto, ErrorKind::kInvalidArgument,
               "an MLA form applies only to MLA models, not '" + c.model_type + "'");
    return std::make_unique<PagedKVPool>(PagedKVPool::ForHeads(
        pages, page_size, c.gqa.num_kv_heads, c.gqa.head_dim, c.gqa.head_dim, dtype));
  }
  const MlaDims& m = c.mla;
  if (form == MlaForm::kNaive) {
    return std::make_unique<PagedKVPool>(
        PagedKVPool::ForHeads(pages, page_size, c.num_heads,
                              m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim, dtype));
  }
  return std::make_unique<PagedKVPool>(
      PagedKVPool::ForLatent(pages, page_size, m.kv_lora_rank, m.qk_rope_head_dim, dtype));
}

void AttentionLayer::StepWithStore(const TokenBatch& /*batch*/, layers::KVStore& /*store*/,
                                   MlaForm /*form*/, Tensor& /*out*/) const {
  throw Error(ErrorKind::kUnsupported, "this attention layer ('" + config().model_type +
                                           "') does not run its step over a custom KV store");
}

Tensor AttentionLayer::Forward(const TokenBatch& batch, MlaForm form) const {
  ATTN_CHECK(batch.hidden_states != nullptr && batch.hidden_states->rank() == 3,
             ErrorKind::kInvalidArgument, "hidden_states: expected shape [B, S, D]");
  const Tensor& x = *batch.hidden_states;
  std::unique_ptr<Cache> cache = NewCache(x.dim(0), x.dim(1), DType::kF32, form);
  return Step(batch, *cache, form);
}

Tensor AttentionLayer::PrefillThenDecode(const TokenBatch& batch, int64_t prefill_tokens,
                                         MlaForm form, DType cache_dtype, Timings* timings) const {
  ATTN_CHECK(batch.hidden_states != nullptr && batch.hidden_states->rank() == 3,
             ErrorKind::kInvalidArgument, "hidden_states: expected shape [B, S, D]");
  ATTN_CHECK(batch.lengths.empty(), ErrorKind::kInvalidArgument,
             "PrefillThenDecode runs whole sequences: lengths must be empty");
  const Tensor& x = *batch.hidden_states;
  const int64_t b_count = x.dim(0);
  const int64_t s_count = x.dim(1);
  const int64_t width = x.dim(2);
  ATTN_CHECK(prefill_tokens >= 1 && prefill_tokens <= s_count, ErrorKind::kInvalidArgument,
             "prefill length " + std::to_string(prefill_tokens) + " must lie in [1, " +
                 std::to_string(s_count) + "]");
  std::unique_ptr<Cache> cache = NewCache(b_count, s_count, cache_dtype, form);
  Tensor out({b_count, s_count, config().hidden_size});

  // Runs tokens [begin, end) of every sequence as one step and scatters the outputs. The
  // buffers live across steps (reserved for the prefill, the largest chunk), so the decode
  // steps measured by `timings` allocate nothing here.
  Tensor chunk;
  Tensor y;
  std::vector<int64_t> positions;
  std::vector<uint8_t> keep;
  positions.reserve(static_cast<size_t>(b_count * prefill_tokens));
  keep.reserve(static_cast<size_t>(b_count * prefill_tokens));
  auto run_chunk = [&](int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    chunk.Reshape({b_count, n, width});
    positions.clear();
    keep.clear();
    for (int64_t b = 0; b < b_count; ++b) {
      const int64_t row = b * s_count + begin;
      std::copy_n(x.data() + row * width, n * width, chunk.data() + b * n * width);
      if (!batch.positions.empty()) {
        positions.insert(positions.end(), batch.positions.begin() + row,
                         batch.positions.begin() + row + n);
      }
      if (!batch.keep.empty()) {
        keep.insert(keep.end(), batch.keep.begin() + row, batch.keep.begin() + row + n);
      }
    }
    StepInto(TokenBatch{&chunk, positions, keep}, *cache, form, y);
    const int64_t d = config().hidden_size;
    for (int64_t b = 0; b < b_count; ++b) {
      std::copy_n(y.data() + b * n * d, n * d, out.data() + (b * s_count + begin) * d);
    }
  };
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  run_chunk(0, prefill_tokens);
  const Clock::time_point prefilled = Clock::now();
  for (int64_t s = prefill_tokens; s < s_count; ++s) run_chunk(s, s + 1);
  if (timings != nullptr) {
    timings->prefill_seconds = std::chrono::duration<double>(prefilled - start).count();
    timings->decode_seconds = std::chrono::duration<double>(Clock::now() - prefilled).count();
    timings->decode_steps = s_count - prefill_tokens;
  }
  return out;
}

}  // namespace attn
