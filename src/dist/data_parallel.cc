// SPDX-License-Identifier: Apache-2.0
// Data parallelism over a batch's sequences (docs/distributed.md): every rank holds the whole
// layer, runs its own contiguous block of sequences through its own cache, and the output rows
// are gathered. Blocks are contiguous and in rank order, so the gathered rows are already in
// batch order: one AllGather, no reordering.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/parallel.h"
#include "dist/agreement.h"

namespace attn {
namespace {

// The batch's bookkeeping on every rank (lengths and padding flags of all B sequences, so every
// rank refuses an overflow alike, before any collective), and the rank's own cache for its
// sequences, or none when it has none (a cache of zero sequences is not a valid cache).
class DataParallelCache final : public Cache {
 public:
  DataParallelCache(int64_t batch, int64_t capacity, DType dtype, size_t bytes_per_token,
                    SequenceRange mine, std::unique_ptr<Cache> local)
      : Cache(batch, capacity, dtype, bytes_per_token), mine_(mine), local_(std::move(local)) {}

  SequenceRange mine() const { return mine_; }
  Cache* local() const { return local_.get(); }
  size_t held_bytes() const override { return local_ ? local_->held_bytes() : 0; }
  // Records a step's tokens of sequence `sequence` after every rank's step succeeded.
  void Record(int64_t sequence, int64_t count, const uint8_t* keep) {
    Advance(sequence, count, keep);
  }

 private:
  SequenceRange mine_;
  std::unique_ptr<Cache> local_;
};

class DataParallelLayer final : public AttentionLayer {
 public:
  DataParallelLayer(std::unique_ptr<AttentionLayer> layer, std::shared_ptr<Communicator> comm)
      : layer_(std::move(layer)), comm_(std::move(comm)) {}

  const ModelConfig& config() const override { return layer_->config(); }

  std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                  MlaForm form) const override {
    Check(batch > 0, ErrorKind::kInvalidArgument,
          "KV cache needs batch > 0, got " + std::to_string(batch));
    const SequenceRange mine = DataParallelSequences(batch, Shard{comm_->rank(), comm_->world()});
    // A rank without sequences still validates dtype, form and capacity as its peers do, with a
    // one-token cache it then drops.
    std::unique_ptr<Cache> local = layer_->NewCache(mine.count > 0 ? mine.count : 1,
                                                    mine.count > 0 ? capacity : 1, dtype, form);
    const size_t bytes_per_token = local->bytes_per_token();
    if (mine.count == 0) local.reset();
    return std::make_unique<DataParallelCache>(batch, capacity, dtype, bytes_per_token, mine,
                                               std::move(local));
  }

  void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const override {
    auto* split = dynamic_cast<DataParallelCache*>(&cache);
    Check(split != nullptr, ErrorKind::kInvalidArgument,
          "data parallel: the cache was not made by this layer's NewCache");
    Check(batch.hidden_states != nullptr, ErrorKind::kInvalidArgument,
          "hidden_states: missing tensor");
    const Tensor& x = *batch.hidden_states;
    const bool packed = x.rank() == 2;
    Check(x.rank() == 3 || (packed && !batch.lengths.empty()), ErrorKind::kInvalidArgument,
          "hidden_states: expected shape [B, S, D], or [N, D] with lengths");
    const int64_t width = x.dim(x.rank() - 1);
    // Checked here, not only by the local layer: a rank with no rows this step runs no layer.
    Check(width == config().hidden_size, ErrorKind::kInvalidArgument,
          "hidden_states: expected width " + std::to_string(config().hidden_size) + ", got " +
              std::to_string(width));
    const int64_t b_count = packed ? static_cast<int64_t>(batch.lengths.size()) : x.dim(0);
    const int64_t s_count = packed ? 0 : x.dim(1);
    Check(b_count == split->batch(), ErrorKind::kInvalidArgument,
          "data parallel: a batch of " + std::to_string(b_count) + " sequences for a cache of " +
              std::to_string(split->batch()));
    Check(batch.lengths.empty() || static_cast<int64_t>(batch.lengths.size()) == b_count,
          ErrorKind::kInvalidArgument, "lengths: expected one entry per sequence");
    // Tokens each sequence adds and the first row of each (padded: b·S; packed: Σ lengths).
    std::vector<int64_t> counts(static_cast<size_t>(b_count));
    std::vector<int64_t> first_row(static_cast<size_t>(b_count) + 1, 0);
    for (int64_t b = 0; b < b_count; ++b) {
      const int64_t count = batch.lengths.empty() ? s_count : batch.lengths[b];
      Check(count >= 0 && (packed || count <= s_count), ErrorKind::kInvalidArgument,
            "lengths[" + std::to_string(b) + "] = " + std::to_string(count) + " is outside [0, " +
                (packed ? std::string("N") : std::to_string(s_count)) + "]");
      counts[static_cast<size_t>(b)] = count;
      first_row[static_cast<size_t>(b) + 1] =
          first_row[static_cast<size_t>(b)] + (packed ? count : s_count);
    }
    const int64_t rows = first_row.back();
    Check(x.size() == rows * width, ErrorKind::kInvalidArgument,
          "hidden_states: packed rows do not match the sum of lengths");
    Check(batch.positions.empty() || static_cast<int64_t>(batch.positions.size()) == rows,
          ErrorKind::kInvalidArgument, "positions: expected one entry per token row");
    Check(batch.keep.empty() || static_cast<int64_t>(batch.keep.size()) == rows,
          ErrorKind::kInvalidArgument, "keep: expected one entry per token row");
    split->CheckRoom(counts);  // the same bookkeeping on every rank: all refuse, or none

    // This rank's sub-batch: rows [row0, row1) of the input are its sequences'.
    const SequenceRange mine = split->mine();
    const auto row0 = static_cast<size_t>(first_row[static_cast<size_t>(mine.first)]);
    const auto row1 = static_cast<size_t>(first_row[static_cast<size_t>(mine.first + mine.count)]);
    const int64_t my_rows = static_cast<int64_t>(row1 - row0);
    Tensor my_out;
    if (my_rows > 0) {
      dist::RunAgreed(*comm_, [&] {
        Tensor sub = packed ? Tensor({my_rows, width}) : Tensor({mine.count, s_count, width});
        std::copy_n(x.data() + row0 * static_cast<size_t>(width), my_rows * width, sub.data());
        TokenBatch local;
        local.hidden_states = &sub;
        if (!batch.positions.empty()) local.positions = batch.positions.subspan(row0, row1 - row0);
        if (!batch.keep.empty()) local.keep = batch.keep.subspan(row0, row1 - row0);
        if (!batch.lengths.empty()) {
          local.lengths = batch.lengths.subspan(static_cast<size_t>(mine.first),
                                                static_cast<size_t>(mine.count));
        }
        layer_->StepInto(local, *split->local(), form, my_out);
      });
    } else {
      // No tokens here (no sequences, or all of them idle this step): nothing to append, but
      // the agreement round is collective.
      dist::RunAgreed(*comm_, [] {});
    }

    const int64_t d = config().hidden_size;
    if (packed) {
      out.Reshape({rows, d});
    } else {
      out.Reshape({b_count, s_count, d});
    }
    comm_->AllGather(std::span<const float>(my_out.data(), static_cast<size_t>(my_rows * d)),
                     out.values());
    for (int64_t b = 0; b < b_count; ++b) {
      const uint8_t* keep =
          batch.keep.empty() ? nullptr : batch.keep.data() + first_row[static_cast<size_t>(b)];
      split->Record(b, counts[static_cast<size_t>(b)], keep);
    }
  }

  void StepPagedInto(const TokenBatch& /*batch*/, PagedKVPool& /*pool*/,
                     std::span<const PagedKVPool::SequenceId> /*ids*/, MlaForm /*form*/,
                     Tensor& /*out*/) const override {
    throw Error(ErrorKind::kUnsupported,
                "data parallel: paged pools are per rank; page each rank's sequences with its "
                "own layer and pool (a pool shared by the group is not implemented)");
  }

 private:
  std::unique_ptr<AttentionLayer> layer_;
  std::shared_ptr<Communicator> comm_;
};

}  // namespace

SequenceRange DataParallelSequences(int64_t batch, Shard shard) {
  Check(shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world,
        ErrorKind::kInvalidArgument,
        "shard: rank " + std::to_string(shard.rank) + " of world " + std::to_string(shard.world) +
            " is not a rank of that world");
  Check(batch >= 0, ErrorKind::kInvalidArgument,
        "data parallel: batch " + std::to_string(batch) + " is negative");
  const int64_t base = batch / shard.world;
  const int64_t extra = batch % shard.world;
  SequenceRange range;
  range.first = shard.rank * base + std::min<int64_t>(shard.rank, extra);
  range.count = base + (shard.rank < extra ? 1 : 0);
  return range;
}

std::unique_ptr<AttentionLayer> MakeDataParallelLayer(std::unique_ptr<AttentionLayer> layer,
                                                      std::shared_ptr<Communicator> comm) {
  Check(layer != nullptr && comm != nullptr, ErrorKind::kInvalidArgument,
        "data parallel: needs a layer and a communicator");
  CheckRanksAgree(*comm, ModelConfigHash(layer->config()), "data parallel: the model config");
  return std::make_unique<DataParallelLayer>(std::move(layer), std::move(comm));
}

}  // namespace attn
