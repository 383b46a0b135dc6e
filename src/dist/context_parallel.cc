// SPDX-License-Identifier: Apache-2.0
// Context-parallel attention (include/attn/context_parallel.h, docs/distributed.md). The layer's
// own step runs unchanged over a ContextShardStore, a KVStore that reports whole sequences
// (global lengths, so positions, first slots and position checks are those of one process),
// stores only this rank's tokens, and attends in two steps:
//   1. per problem, per local run of global slots [a, a + n): the kernel on the run's local
//      entries with query slots shifted by −a (causal mask, window, chunk and ALiBi only see
//      differences of slots, so they are unchanged), returning each row's log-sum-exp l_k;
//   2. across runs and ranks: M = max_k l_k (AllReduceMax), w_k = e^(l_k − M),
//      out = Σ_k w_k O_k / (Σ_k w_k + e^(sink − M)) (one AllReduceSum of [Σ w_k O_k | Σ w_k]),
//      zeros where no rank saw a key: the merge of split-key FlashAttention, across ranks.
#include "attn/context_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "attn/error.h"
#include "attn/kernels.h"
#include "layers/kv_store.h"

namespace attn {

ContextShardCache::ContextShardCache(std::unique_ptr<Cache> local, int64_t batch, int64_t capacity,
                                     int rank, int world)
    : Cache(batch, capacity, local->dtype(), local->bytes_per_token()),
      local_(std::move(local)),
      rank_(rank),
      world_(world),
      runs_(static_cast<size_t>(batch)),
      held_(static_cast<size_t>(batch * world), 0),
      last_rank_(static_cast<size_t>(batch), -1),
      last_run_(static_cast<size_t>(batch), 0) {
  ATTN_CHECK(world >= 1 && rank >= 0 && rank < world, ErrorKind::kInvalidArgument,
             "context-parallel cache: rank " + std::to_string(rank) + " of world " +
                 std::to_string(world));
  ATTN_CHECK(local_->batch() == batch && local_->capacity() >= 1, ErrorKind::kInvalidArgument,
             "context-parallel cache: the local cache must hold the batch's " +
                 std::to_string(batch) + " sequences with room for at least one token");
}

std::span<const ContextShardCache::Run> ContextShardCache::runs(int64_t sequence) const {
  length(sequence);  // range check
  return runs_[static_cast<size_t>(sequence)];
}

int64_t ContextShardCache::held(int64_t sequence, int rank) const {
  length(sequence);  // range check
  ATTN_CHECK(rank >= 0 && rank < world_, ErrorKind::kInvalidArgument,
             "rank " + std::to_string(rank) + " out of range");
  return held_[static_cast<size_t>(sequence * world_ + rank)];
}

ContextShardCache::Share ContextShardCache::ShareOf(int64_t sequence, int64_t count,
                                                    int rank) const {
  Share share;
  if (count <= 0) return share;
  if (count >= world_) {
    // world contiguous parts, the first count % world one token longer.
    const int64_t base = count / world_;
    const int64_t longer = count % world_;
    share.begin = rank * base + std::min<int64_t>(rank, longer);
    share.size = base + (rank < longer ? 1 : 0);
    return share;
  }
  if (rank == DecodeTarget(sequence)) share.size = count;
  return share;
}

int ContextShardCache::DecodeTarget(int64_t sequence) const {
  const auto b = static_cast<size_t>(sequence);
  if (last_rank_[b] >= 0 && last_run_[b] < kContextParallelRun) return last_rank_[b];
  int target = 0;
  for (int r = 1; r < world_; ++r) {
    if (held_[b * world_ + r] < held_[b * world_ + target]) target = r;
  }
  return target;
}

void ContextShardCache::Record(int64_t sequence, int64_t count, const uint8_t* keep) {
  if (count <= 0) return;
  const auto b = static_cast<size_t>(sequence);
  const int64_t global_begin = length(sequence);
  // This rank's part, when it has one: local slots are appended in order, so a part that
  // continues this rank's last run in global slots extends it.
  const Share mine = ShareOf(sequence, count, rank_);
  if (mine.size > 0) {
    std::vector<Run>& runs = runs_[b];
    const int64_t local_begin = local_->length(sequence) - mine.size;
    const int64_t begin = global_begin + mine.begin;
    if (!runs.empty() && runs.back().global_begin + runs.back().count == begin) {
      runs.back().count += mine.size;
    } else {
      runs.push_back({local_begin, begin, mine.size});
    }
  }
  // Every rank's counts and the latest run, alike on every rank.
  if (count >= world_) {
    for (int r = 0; r < world_; ++r) held_[b * world_ + r] += ShareOf(sequence, count, r).size;
    last_rank_[b] = world_ - 1;
    last_run_[b] = ShareOf(sequence, count, world_ - 1).size;
  } else {
    const int target = DecodeTarget(sequence);
    held_[b * world_ + target] += count;
    if (target == last_rank_[b]) {
      last_run_[b] += count;
    } else {
      last_rank_[b] = target;
      last_run_[b] = count;
    }
  }
  Advance(sequence, count, keep);
}

void ContextShardCache::ResetIfCleared() {
  const std::span<const int64_t> all = lengths();
  if (std::any_of(all.begin(), all.end(), [](int64_t n) { return n > 0; })) return;
  if (std::all_of(held_.begin(), held_.end(), [](int64_t n) { return n == 0; })) return;
  local_->Clear();
  for (std::vector<Run>& runs : runs_) runs.clear();
  std::fill(held_.begin(), held_.end(), 0);
  std::fill(last_rank_.begin(), last_rank_.end(), -1);
  std::fill(last_run_.begin(), last_run_.end(), 0);
}

namespace dist {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The keys `begin` … `begin + count - 1` of a contiguous view as a view of their own.
KVView Slice(const KVView& view, int64_t begin, int64_t count) {
  ATTN_CHECK(view.page_size == 0, ErrorKind::kUnsupported,
             "context-parallel attention needs contiguous local caches, not paged ones");
  KVView slice = view;
  const auto element = static_cast<int64_t>(DTypeSize(view.dtype));
  slice.keys = static_cast<const std::byte*>(view.keys) + begin * view.key_token_stride * element;
  slice.values =
      static_cast<const std::byte*>(view.values) + begin * view.value_token_stride * element;
  if (view.keep != nullptr) slice.keep = view.keep + begin;
  if (view.key_scales != nullptr) slice.key_scales = view.key_scales + begin;
  if (view.value_scales != nullptr) slice.value_scales = view.value_scales + begin;
  slice.length = count;
  return slice;
}

// A kernel problem on a run of this rank's keys, and where its rows land in the call's merge.
struct Part {
  int64_t problem;  // index into the call's problems
  int64_t s0, s1;   // the problem's query tokens it covers
  int64_t state;    // offset of its [tokens][heads] rows in the part-state buffers
};

// Per-thread buffers of one Attend call, grown and reused: no allocation per decode step once
// warm.
struct AttendScratch {
  std::vector<AttentionProblem> problems;
  std::vector<Part> parts;
  std::vector<float> part_out;    // Σ parts' rows × value_dim
  std::vector<float> part_lse;    // Σ parts' rows
  std::vector<int64_t> row_base;  // per problem: its first row in the call's merge buffers
  std::vector<float> maxima;      // call rows
  std::vector<float> sums;        // call rows × value_dim, then call rows
};

AttendScratch& ThreadScratch() {
  thread_local AttendScratch scratch;
  return scratch;
}

template <typename T>
T* Grow(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

}  // namespace

// The KVStore a layer's step runs over on one rank (file comment).
class ContextShardStore final : public layers::KVStore {
 public:
  ContextShardStore(ContextShardCache& cache, Communicator& comm, int64_t merge_floats)
      : cache_(cache), comm_(comm), merge_floats_(merge_floats) {
    heads_ = dynamic_cast<KVCache*>(cache.local_.get());
    latent_ = dynamic_cast<LatentKVCache*>(cache.local_.get());
    ATTN_CHECK(heads_ != nullptr || latent_ != nullptr, ErrorKind::kInvalidArgument,
               "context-parallel cache: the local cache is neither a KVCache nor a LatentKVCache");
    cache_.ResetIfCleared();
  }

  CacheForm form() const override {
    return heads_ != nullptr ? CacheForm::kHeads : CacheForm::kLatent;
  }
  int64_t sequences() const override { return cache_.batch(); }
  int64_t kv_heads() const override { return heads_ != nullptr ? heads_->kv_heads() : 1; }
  int64_t key_dim() const override {
    return heads_ != nullptr ? heads_->key_dim() : latent_->row_dim();
  }
  int64_t value_dim() const override {
    return heads_ != nullptr ? heads_->value_dim() : latent_->latent_dim();
  }
  int64_t length(int64_t b) const override { return cache_.length(b); }
  int64_t max_position(int64_t b) const override { return cache_.max_position(b); }
  void set_max_position(int64_t b, int64_t position) override {
    cache_.set_max_position(b, position);
  }

  // Room on every rank, agreed: a rank whose local cache is full makes every rank throw
  // Error(kCapacity) here, before any rank writes, so that none is left inside a later
  // collective alone.
  void Reserve(std::span<const int64_t> counts) override {
    std::string failure;
    try {
      cache_.CheckRoom(counts);
      std::vector<int64_t>& owned = owned_;
      owned.assign(counts.size(), 0);
      for (size_t b = 0; b < counts.size(); ++b) {
        owned[b] = cache_.ShareOf(static_cast<int64_t>(b), counts[b], cache_.rank()).size;
      }
      cache_.local_->CheckRoom(owned);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kCapacity) throw;  // the same on every rank: shapes
      failure = e.what();
    }
    const std::vector<int64_t> failed = comm_.AllGatherInt(failure.empty() ? 0 : 1);
    if (std::all_of(failed.begin(), failed.end(), [](int64_t f) { return f == 0; })) return;
    const std::vector<std::string> messages = comm_.AllGatherText(failure);
    const auto first =
        static_cast<size_t>(std::find(failed.begin(), failed.end(), 1) - failed.begin());
    throw Error(ErrorKind::kCapacity, "context-parallel cache, rank " + std::to_string(first) +
                                          " of " + std::to_string(cache_.world()) + ": " +
                                          messages[first]);
  }

  void AppendHeads(int64_t b, int64_t count, const float* keys, const float* values,
                   const uint8_t* keep) override {
    ATTN_CHECK(heads_ != nullptr, ErrorKind::kInvalidArgument,
               "this cache holds latent rows, not per-head K/V");
    const ContextShardCache::Share share = cache_.ShareOf(b, count, cache_.rank());
    if (share.size > 0) {
      const int64_t g = heads_->kv_heads();
      heads_->Append(b, share.size, keys + share.begin * g * heads_->key_dim(),
                     values + share.begin * g * heads_->value_dim(),
                     keep != nullptr ? keep + share.begin : nullptr);
    }
    cache_.Record(b, count, keep);
  }

  void AppendLatent(int64_t b, int64_t count, const float* rows, const uint8_t* keep) override {
    ATTN_CHECK(latent_ != nullptr, ErrorKind::kInvalidArgument,
               "this cache holds per-head K/V, not latent rows");
    const ContextShardCache::Share share = cache_.ShareOf(b, count, cache_.rank());
    if (share.size > 0) {
      latent_->Append(b, share.size, rows + share.begin * latent_->row_dim(),
                      keep != nullptr ? keep + share.begin : nullptr);
    }
    cache_.Record(b, count, keep);
  }

  // This rank's entries of sequence b: only for the layer to fill AttentionProblem::kv, which
  // Attend() then recognises by its key pointer.
  KVView View(int64_t b) const override {
    return heads_ != nullptr ? heads_->View(b) : latent_->View(b);
  }

  void ReadRows(int64_t /*b*/, float* /*out*/) const override {
    throw Error(ErrorKind::kUnsupported,
                "context parallelism cannot read a sequence's cached rows: each rank holds only "
                "its share (MLA's decompress-then-attend form is not available; auto runs "
                "absorbed)");
  }

  void Attend(AttentionProblem* problems, int64_t count) override;
  // Attend() for problems merged at once.
  void AttendBlock(AttentionProblem* problems, int64_t count);

 private:
  // The sequence whose local view `kv` is (Attend's problems carry View(b) unchanged).
  int64_t SequenceOf(const KVView& kv) const {
    for (int64_t b = 0; b < cache_.batch(); ++b) {
      if (View(b).keys == kv.keys) return b;
    }
    throw Error(ErrorKind::kInvalidArgument,
                "context-parallel attention: a problem's keys are not one of this cache's "
                "sequences");
  }
  // Where transformers' chunked mask starts counting blocks: the first kept global slot
  // (layers::FirstKeptSlot of the whole sequence).
  int64_t FirstKeptGlobalSlot(int64_t b) const {
    const uint8_t* keep = cache_.global_keep(b);
    for (int64_t t = 0; t < cache_.length(b); ++t) {
      if (keep[t] != 0) return t;
    }
    return 0;
  }
  // Appends the parts of problem `index` (sequence b) to the scratch list.
  void PlanParts(const AttentionProblem& problem, int64_t index, int64_t b, AttendScratch& scratch,
                 int64_t& states) const;

  ContextShardCache& cache_;
  Communicator& comm_;
  int64_t merge_floats_;
  KVCache* heads_ = nullptr;
  LatentKVCache* latent_ = nullptr;
  std::vector<int64_t> owned_;
};

void ContextShardStore::PlanParts(const AttentionProblem& problem, int64_t index, int64_t b,
                                  AttendScratch& scratch, int64_t& states) const {
  const Visibility& visibility = problem.visibility;
  const int64_t tokens = problem.queries.tokens;
  const int64_t first = visibility.first_query_slot;
  const std::span<const ContextShardCache::Run> runs = cache_.runs(b);
  if (tokens == 0 || runs.empty()) return;
  const KVView local = View(b);
  auto add = [&](int64_t s0, int64_t s1, const KVView& kv, const Visibility& shifted) {
    if (s0 >= s1) return;
    AttentionProblem part = problem;
    part.queries.data = problem.queries.data + s0 * problem.queries.heads * problem.queries.dim;
    part.queries.tokens = s1 - s0;
    part.kv = kv;
    part.visibility = shifted;
    part.sinks = nullptr;  // joins once, in the merge
    scratch.problems.push_back(part);
    scratch.parts.push_back({index, s0, s1, states});
    states += (s1 - s0) * problem.queries.heads;
  };
  // Every query sees every local key (a decode step, or a prompt past this rank's keys, without
  // window, chunk or ALiBi): one problem over the whole local cache, queries after its last key.
  const int64_t last_key = runs.back().global_begin + runs.back().count - 1;
  const bool plain = problem.alibi_slopes == nullptr && visibility.chunk == 0;
  if (plain && (!visibility.causal || (visibility.window == 0 && first >= last_key))) {
    Visibility shifted = visibility;
    shifted.first_query_slot = local.length - 1;
    add(0, tokens, local, shifted);
    return;
  }
  const int64_t chunk_origin = visibility.chunk > 0 ? FirstKeptGlobalSlot(b) : 0;
  for (const ContextShardCache::Run& run : runs) {
    // Causal queries before the run see none of it; with a window, queries whose window has
    // passed the run's last key see none of it either.
    int64_t s0 = 0;
    int64_t s1 = tokens;
    if (visibility.causal) {
      s0 = std::clamp<int64_t>(run.global_begin - first, 0, tokens);
      if (visibility.window > 0) {
        s1 = std::clamp<int64_t>(run.global_begin + run.count - 1 + visibility.window - first, 0,
                                 tokens);
      }
    }
    Visibility shifted = visibility;
    shifted.first_query_slot = first + s0 - run.global_begin;
    shifted.chunk_origin = chunk_origin - run.global_begin;
    add(s0, s1, Slice(local, run.local_begin, run.count), shifted);
  }
}

// Merging partial states takes rows·H·(Dv + 1) floats per rank several times over (each run's
// part, the sums, and the all-reduce's gather of every rank's sums): a whole prefill chunk of
// an MLA model (128 heads × 513 per row) would be gigabytes. So a call whose merge would exceed
// ContextParallelOptions::merge_floats is attended in blocks of query tokens, each merged on its
// own; every rank cuts the same blocks, since every rank sees the call's whole shape. Decode
// stays one block.
void ContextShardStore::Attend(AttentionProblem* problems, int64_t count) {
  int64_t floats = 0;
  int64_t per_token = 1;  // the widest problem's floats per query token
  for (int64_t i = 0; i < count; ++i) {
    const AttentionProblem& p = problems[i];
    const int64_t token = p.queries.heads * (p.kv.value_dim + 1);
    floats += p.queries.tokens * token;
    per_token = std::max(per_token, token);
  }
  if (floats <= merge_floats_) {
    AttendBlock(problems, count);
    return;
  }
  const int64_t block = std::max<int64_t>(1, merge_floats_ / per_token);
  for (int64_t i = 0; i < count; ++i) {
    const AttentionProblem& whole = problems[i];
    // A problem with no query tokens still takes part: the merge's collectives are per block.
    for (int64_t t0 = 0; t0 < std::max<int64_t>(whole.queries.tokens, 1); t0 += block) {
      AttentionProblem part = whole;
      const int64_t tokens = std::min(block, whole.queries.tokens - t0);
      const int64_t heads = whole.queries.heads;
      part.queries.data = whole.queries.data + t0 * heads * whole.queries.dim;
      part.queries.tokens = std::max<int64_t>(tokens, 0);
      part.out = whole.out + t0 * heads * whole.kv.value_dim;
      part.visibility.first_query_slot = whole.visibility.first_query_slot + t0;
      AttendBlock(&part, 1);
    }
  }
}

void ContextShardStore::AttendBlock(AttentionProblem* problems, int64_t count) {
  AttendScratch& scratch = ThreadScratch();
  scratch.problems.clear();
  scratch.parts.clear();
  int64_t* row_base = Grow(scratch.row_base, count + 1);
  int64_t states = 0;
  int64_t rows = 0;  // query rows of the whole call: the same on every rank
  int64_t widest = 0;
  for (int64_t i = 0; i < count; ++i) {
    const AttentionProblem& problem = problems[i];
    row_base[i] = rows;
    rows += problem.queries.tokens * problem.queries.heads;
    widest = std::max(widest, problem.kv.value_dim);
    if (problem.queries.tokens > 0) PlanParts(problem, i, SequenceOf(problem.kv), scratch, states);
  }
  row_base[count] = rows;

  // 1. This rank's partial states: one kernel call for every part of every problem.
  float* part_out = Grow(scratch.part_out, states * widest);
  float* part_lse = Grow(scratch.part_lse, states);
  for (size_t k = 0; k < scratch.parts.size(); ++k) {
    const Part& part = scratch.parts[k];
    scratch.problems[k].out = part_out + part.state * widest;
    scratch.problems[k].lse = part_lse + part.state;
  }
  if (!scratch.problems.empty()) {
    DefaultBackend().attend_batch(scratch.problems.data(),
                                  static_cast<int64_t>(scratch.problems.size()));
  }
  if (rows == 0) return;  // every rank: the row count is the call's shape

  // 2. The largest log-sum-exp of every row over all parts of all ranks.
  float* maxima = Grow(scratch.maxima, rows);
  std::fill(maxima, maxima + rows, kNegInf);
  for (size_t k = 0; k < scratch.parts.size(); ++k) {
    const Part& part = scratch.parts[k];
    const int64_t heads = problems[part.problem].queries.heads;
    const int64_t first_row = row_base[part.problem] + part.s0 * heads;
    for (int64_t r = 0; r < (part.s1 - part.s0) * heads; ++r) {
      maxima[first_row + r] = std::max(maxima[first_row + r], part_lse[part.state + r]);
    }
  }
  comm_.AllReduceMax({maxima, static_cast<size_t>(rows)});

  // 3. [Σ w O | Σ w] with w = e^(lse − M), M also covering the sink so that a sink far above
  // every score cannot overflow; summed over ranks.
  auto top_of = [&](int64_t problem, int64_t row) {
    const float m = maxima[row_base[problem] + row];
    const AttentionProblem& p = problems[problem];
    if (m == kNegInf || p.sinks == nullptr) return m;
    return std::max(m, p.sinks[row % p.queries.heads]);
  };
  float* sums = Grow(scratch.sums, rows * (widest + 1));
  float* weights = sums + rows * widest;
  std::fill(sums, sums + rows * (widest + 1), 0.0f);
  for (size_t k = 0; k < scratch.parts.size(); ++k) {
    const Part& part = scratch.parts[k];
    const AttentionProblem& p = problems[part.problem];
    const int64_t heads = p.queries.heads;
    const int64_t dv = p.kv.value_dim;
    for (int64_t r = 0; r < (part.s1 - part.s0) * heads; ++r) {
      const float lse = part_lse[part.state + r];
      if (lse == kNegInf) continue;
      const int64_t row = part.s0 * heads + r;
      const float w = std::exp(lse - top_of(part.problem, row));
      const int64_t at = row_base[part.problem] + row;
      weights[at] += w;
      const float* o = part_out + part.state * widest + r * dv;  // [rows][dv] from there
      float* sum = sums + at * widest;
      for (int64_t d = 0; d < dv; ++d) sum[d] += w * o[d];
    }
  }
  comm_.AllReduceSum({sums, static_cast<size_t>(rows * (widest + 1))});

  // 4. out = Σ w O / (Σ w + e^(sink − M)), zeros where no rank saw a key.
  for (int64_t i = 0; i < count; ++i) {
    const AttentionProblem& p = problems[i];
    const int64_t dv = p.kv.value_dim;
    for (int64_t row = 0; row < p.queries.tokens * p.queries.heads; ++row) {
      const int64_t at = row_base[i] + row;
      float* out = p.out + row * dv;
      if (maxima[at] == kNegInf) {
        std::fill(out, out + dv, 0.0f);
        continue;
      }
      const float top = top_of(i, row);
      const float sink = p.sinks != nullptr ? std::exp(p.sinks[row % p.queries.heads] - top) : 0.0f;
      const float inverse = 1.0f / (weights[at] + sink);
      for (int64_t d = 0; d < dv; ++d) out[d] = sums[at * widest + d] * inverse;
    }
  }
}

namespace {

class ContextParallelLayer final : public AttentionLayer {
 public:
  ContextParallelLayer(std::unique_ptr<AttentionLayer> layer, std::shared_ptr<Communicator> comm,
                       ContextParallelOptions options)
      : layer_(std::move(layer)), comm_(std::move(comm)), options_(options) {
    ATTN_CHECK(layer_ != nullptr && comm_ != nullptr, ErrorKind::kInvalidArgument,
               "MakeContextParallelLayer needs a layer and a communicator");
    ATTN_CHECK(options_.local_capacity >= 0, ErrorKind::kInvalidArgument,
               "context parallel: local_capacity must be >= 0 (0: automatic)");
    ATTN_CHECK(options_.merge_floats >= 1, ErrorKind::kInvalidArgument,
               "context parallel: merge_floats must be >= 1");
  }

  const ModelConfig& config() const override { return layer_->config(); }

  std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                  MlaForm form) const override {
    ATTN_CHECK(capacity >= 1, ErrorKind::kInvalidArgument,
               "context-parallel cache: capacity must be >= 1");
    const int64_t world = comm_->world();
    const int64_t local =
        options_.local_capacity > 0
            ? options_.local_capacity
            : std::min(capacity, (capacity + world - 1) / world + kContextParallelRun);
    return std::make_unique<ContextShardCache>(layer_->NewCache(batch, local, dtype, form), batch,
                                               capacity, comm_->rank(), comm_->world());
  }

  void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const override {
    auto* shard = dynamic_cast<ContextShardCache*>(&cache);
    ATTN_CHECK(
        shard != nullptr && shard->world() == comm_->world() && shard->rank() == comm_->rank(),
        ErrorKind::kInvalidArgument,
        "cache does not match this layer (need the ContextShardCache of this rank from its "
        "NewCache)");
    // MLA's auto form would decompress long prefills from every cached row, which no rank
    // holds: context parallelism runs it absorbed, over the same latent cache.
    const MlaForm run_form =
        config().kind == AttentionKind::kMla && form == MlaForm::kAuto ? MlaForm::kAbsorbed : form;
    ContextShardStore store(*shard, *comm_, options_.merge_floats);
    layer_->StepWithStore(batch, store, run_form, out);
  }

  void StepPagedInto(const TokenBatch& /*batch*/, PagedKVPool& /*pool*/,
                     std::span<const PagedKVPool::SequenceId> /*ids*/, MlaForm /*form*/,
                     Tensor& /*out*/) const override {
    throw Error(ErrorKind::kUnsupported,
                "context parallelism does not take paged pools: use NewCache()'s contiguous cache");
  }

 private:
  std::unique_ptr<AttentionLayer> layer_;
  std::shared_ptr<Communicator> comm_;
  ContextParallelOptions options_;
};

}  // namespace
}  // namespace dist

std::unique_ptr<AttentionLayer> MakeContextParallelLayer(std::unique_ptr<AttentionLayer> layer,
                                                         std::shared_ptr<Communicator> comm,
                                                         ContextParallelOptions options) {
  return std::make_unique<dist::ContextParallelLayer>(std::move(layer), std::move(comm), options);
}

}  // namespace attn
