// SPDX-License-Identifier: Apache-2.0
// Context-parallel attention (docs/distributed.md, issue 14): each rank of a Communicator group
// holds a slice of every sequence's cached keys and values, attends every query of a call to its
// own slice, and the partial softmax states (output, log-sum-exp) are merged exactly across ranks,
// so every rank ends with the whole layer's output.
//
// What is split is the cache and the attention over it, which is what grows with the context.
// The weights are whole on every rank, and the projections (q/k/v, MLA's latent and absorb
// steps, o_proj) run for every token on every rank: they cost the same at any context length,
// and replicating them keeps each rank's step the unchanged single-process step.
//
// Which rank stores which tokens (every rank derives it alike, from the call's shape alone):
//   a call that adds n >= world tokens to a sequence cuts them into world contiguous parts as
//   equal as possible (the first n % world parts one longer), part r to rank r;
//   a call adding fewer (decode) appends them to the rank of the sequence's last run while that
//   run holds fewer than kContextParallelRun tokens, else to the rank holding the fewest of the
//   sequence's tokens (the lowest such rank).
// So each rank's entries of a sequence form a few runs of consecutive global slots.
#ifndef ATTN_CONTEXT_PARALLEL_H_
#define ATTN_CONTEXT_PARALLEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "attn/communicator.h"
#include "attn/kv_cache.h"
#include "attn/layer.h"

namespace attn {
namespace dist {
class ContextShardStore;
}  // namespace dist

// Decode tokens extend a sequence's last run up to this many tokens before moving to the rank
// holding the fewest.
constexpr int64_t kContextParallelRun = 256;

struct ContextParallelOptions {
  // Slots per sequence of this rank's local cache. 0: ⌈capacity / world⌉ + kContextParallelRun
  // (the deal above keeps ranks within about one run of each other), at most the capacity.
  int64_t local_capacity = 0;
  // The most floats of partial softmax state one merge handles (rows · H · (Dv + 1)): a call
  // needing more is attended and merged in blocks of query tokens, which bounds the memory a
  // long prefill takes (src/dist/context_parallel.cc). The same on every rank.
  int64_t merge_floats = int64_t{1} << 22;
};

// One rank's part of a context-parallel cache. The Cache interface (length, lengths, keep,
// max_position) describes the whole sequences, identically on every rank; capacity() is the
// global capacity, bytes() is what a whole cache of that capacity would take, and local() holds
// this rank's entries. Clear() forgets every token: the next step starts the local part afresh.
class ContextShardCache : public Cache {
 public:
  // A run of consecutive global slots this rank holds at consecutive local slots.
  struct Run {
    int64_t local_begin;
    int64_t global_begin;
    int64_t count;
  };

  ContextShardCache(std::unique_ptr<Cache> local, int64_t batch, int64_t capacity, int rank,
                    int world);

  const Cache& local() const { return *local_; }
  size_t held_bytes() const override { return local_->held_bytes(); }
  int rank() const { return rank_; }
  int world() const { return world_; }
  // This rank's runs of sequence b, in slot order.
  std::span<const Run> runs(int64_t sequence) const;
  // Tokens of sequence b that rank r holds (every rank knows every rank's count).
  int64_t held(int64_t sequence, int rank) const;

 private:
  friend class dist::ContextShardStore;
  // The tokens of a call adding `count` tokens to `sequence` that `rank` stores: [begin, begin +
  // size) of the call's tokens (size 0: none).
  struct Share {
    int64_t begin = 0;
    int64_t size = 0;
  };
  Share ShareOf(int64_t sequence, int64_t count, int rank) const;
  // The rank a call of fewer than world tokens goes to (the deal above).
  int DecodeTarget(int64_t sequence) const;
  // Records a call's `count` tokens of `sequence` (already in the local cache where owned).
  void Record(int64_t sequence, int64_t count, const uint8_t* keep);
  // Forgets the local part when Clear() emptied the whole cache.
  void ResetIfCleared();
  const uint8_t* global_keep(int64_t sequence) const { return keep(sequence); }

  std::unique_ptr<Cache> local_;
  int rank_;
  int world_;
  std::vector<std::vector<Run>> runs_;  // [batch], this rank's
  std::vector<int64_t> held_;           // [batch][world]
  std::vector<int> last_rank_;          // [batch]: the rank of the latest run, -1: none
  std::vector<int64_t> last_run_;       // [batch]: that run's tokens
};

// `layer` (a GqaAttention or MlaAttention, whole weights) as rank comm->rank() of a
// context-parallel group: NewCache() returns a ContextShardCache holding this rank's share, and
// StepInto() (every rank calling it with the same batch) attends over all ranks' shares and writes
// the whole output on every rank. MLA's auto form runs absorbed (decompress-then-attend would
// read every cached row, which no rank has). Not supported: paged pools (StepPagedInto throws
// Error(kUnsupported)). A sequence that would overflow a rank's local cache makes the step throw
// Error(kCapacity) on every rank before anything is written.
std::unique_ptr<AttentionLayer> MakeContextParallelLayer(std::unique_ptr<AttentionLayer> layer,
                                                         std::shared_ptr<Communicator> comm,
                                                         ContextParallelOptions options = {});

}  // namespace attn

#endif  // ATTN_CONTEXT_PARALLEL_H_
