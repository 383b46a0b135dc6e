// SPDX-License-Identifier: Apache-2.0
// The communicators that need no MPI: a group of one, and a group of threads in one process
// (tests and sanitizer runs of the split layers), plus the agreement helpers every
// implementation shares (docs/distributed.md, "Failures").
#include "attn/communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "attn/error.h"

namespace attn {
namespace {

void CheckGatherSize(std::span<const float> mine, std::span<float> all, int64_t total) {
  Check(static_cast<int64_t>(all.size()) == total, ErrorKind::kCommunication,
        "all-gather: the output holds " + std::to_string(all.size()) +
            " values but the ranks sent " + std::to_string(total) + " (this rank " +
            std::to_string(mine.size()) + ")");
}

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  const char* name() const override { return "single"; }
  void AllReduceSum(std::span<float>) override {}
  void AllReduceMax(std::span<float>) override {}
  void AllGather(std::span<const float> mine, std::span<float> all) override {
    CheckGatherSize(mine, all, static_cast<int64_t>(mine.size()));
    std::copy(mine.begin(), mine.end(), all.begin());
  }
  std::vector<int64_t> AllGatherInt(int64_t mine) override { return {mine}; }
  std::vector<std::string> AllGatherText(const std::string& mine) override { return {mine}; }
  void Barrier() override {}
};

// What one rank brings to a collective: the collective's name (so that ranks on different
// paths are caught, not mixed), its data, and for all-gather the size it expects back.
struct Contribution {
  std::string collective;
  std::vector<float> values;
  int64_t expected_total = 0;
  int64_t integer = 0;
  std::string text;
};

Contribution Named(const std::string& collective) {
  Contribution c;
  c.collective = collective;
  return c;
}

// State shared by the threads of one group. A collective is two meetings: after the first every
// rank's contribution is in `slots` and each rank computes its own result from them (in rank
// order, so every rank's result is bit-identical); the second keeps the slots alive until every
// rank has read them. A meeting that times out breaks the group for good: every later collective
// on any rank throws at once, so a late rank cannot wait for peers that already gave up.
class ThreadGroupState {
 public:
  ThreadGroupState(int world, double timeout_seconds)
      : world_(world), timeout_(timeout_seconds), slots_(static_cast<size_t>(world)) {}

  int world() const { return world_; }

  // Deposits `mine` for `rank`, waits for every rank, and returns the slots of all ranks.
  const std::vector<Contribution>& Deposit(int rank, Contribution mine) {
    std::unique_lock<std::mutex> lock(mutex_);
    ThrowIfBroken(mine.collective, rank);
    const std::string collective = mine.collective;
    slots_[static_cast<size_t>(rank)] = std::move(mine);
    Meet(lock, collective, rank);
    for (int r = 0; r < world_; ++r) {
      const Contribution& other = slots_[static_cast<size_t>(r)];
      if (other.collective != collective) {
        Break("rank " + std::to_string(rank) + " entered " + collective + " while rank " +
              std::to_string(r) + " entered " + other.collective);
        cv_.notify_all();
        ThrowIfBroken(collective, rank);
      }
    }
    return slots_;
  }

  // The second meeting of a collective: after it the slots may be overwritten.
  void Release(int rank, const std::string& collective) {
    std::unique_lock<std::mutex> lock(mutex_);
    ThrowIfBroken(collective, rank);
    Meet(lock, collective, rank);
  }

 private:
  void Meet(std::unique_lock<std::mutex>& lock, const std::string& collective, int rank) {
    const int64_t generation = generation_;
    if (++arrived_ == world_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(timeout_));
    const bool met =
        cv_.wait_until(lock, deadline, [&] { return generation_ != generation || broken_; });
    if (!met) {
      Break(collective + " timed out after " + std::to_string(timeout_) + " s on rank " +
            std::to_string(rank) + ": " + std::to_string(world_ - arrived_) +
            " rank(s) never joined (a peer failed, hung or took another path)");
      cv_.notify_all();
    }
    ThrowIfBroken(collective, rank);
  }

  void Break(const std::string& reason) {
    if (!broken_) reason_ = reason;
    broken_ = true;
  }

  void ThrowIfBroken(const std::string& collective, int rank) const {
    if (broken_) {
      throw Error(ErrorKind::kCommunication, "threads communicator, rank " + std::to_string(rank) +
                                                 ", " + collective + ": " + reason_);
    }
  }

  const int world_;
  const double timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int64_t arrived_ = 0;
  int64_t generation_ = 0;
  bool broken_ = false;
  std::string reason_;
  std::vector<Contribution> slots_;
};

class ThreadRank final : public Communicator {
 public:
  ThreadRank(std::shared_ptr<ThreadGroupState> group, int rank)
      : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world() const override { return group_->world(); }
  const char* name() const override { return "threads"; }

  void AllReduceSum(std::span<float> data) override {
    Reduce(
        data, "all-reduce(sum)", [](float a, float b) { return a + b; }, 0.0f);
  }
  void AllReduceMax(std::span<float> data) override {
    Reduce(
        data, "all-reduce(max)", [](float a, float b) { return std::max(a, b); },
        -std::numeric_limits<float>::infinity());
  }

  void AllGather(std::span<const float> mine, std::span<float> all) override {
    const std::string collective = "all-gather";
    Contribution c = Named(collective);
    c.values.assign(mine.begin(), mine.end());
    c.expected_total = static_cast<int64_t>(all.size());
    const std::vector<Contribution>& slots = group_->Deposit(rank_, std::move(c));
    int64_t total = 0;
    bool sizes_agree = true;
    for (const Contribution& s : slots) total += static_cast<int64_t>(s.values.size());
    for (const Contribution& s : slots) sizes_agree = sizes_agree && s.expected_total == total;
    if (sizes_agree) {
      size_t at = 0;
      for (const Contribution& s : slots) {
        std::copy(s.values.begin(), s.values.end(), all.begin() + static_cast<ptrdiff_t>(at));
        at += s.values.size();
      }
    }
    group_->Release(rank_, collective);
    // Every rank saw the same sizes, so every rank throws here or none does.
    CheckGatherSize(mine, all, sizes_agree ? static_cast<int64_t>(all.size()) : total);
    Check(sizes_agree, ErrorKind::kCommunication,
          "all-gather: ranks expect different output sizes for " + std::to_string(total) +
              " gathered values");
  }

  std::vector<int64_t> AllGatherInt(int64_t mine) override {
    const std::string collective = "all-gather(int)";
    Contribution c = Named(collective);
    c.integer = mine;
    const std::vector<Contribution>& slots = group_->Deposit(rank_, std::move(c));
    std::vector<int64_t> out;
    for (const Contribution& s : slots) out.push_back(s.integer);
    group_->Release(rank_, collective);
    return out;
  }

  std::vector<std::string> AllGatherText(const std::string& mine) override {
    const std::string collective = "all-gather(text)";
    Contribution c = Named(collective);
    c.text = mine;
    const std::vector<Contribution>& slots = group_->Deposit(rank_, std::move(c));
    std::vector<std::string> out;
    for (const Contribution& s : slots) out.push_back(s.text);
    group_->Release(rank_, collective);
    return out;
  }

  void Barrier() override {
    group_->Deposit(rank_, Named("barrier"));
    group_->Release(rank_, "barrier");
  }

 private:
  template <typename Op>
  void Reduce(std::span<float> data, const std::string& collective, Op op, float identity) {
    Contribution c = Named(collective);
    c.values.assign(data.begin(), data.end());
    const std::vector<Contribution>& slots = group_->Deposit(rank_, std::move(c));
    bool sizes_agree = true;
    for (const Contribution& s : slots) sizes_agree = sizes_agree && s.values.size() == data.size();
    if (sizes_agree) {
      // Rank order on every rank: the same float result everywhere.
      for (size_t i = 0; i < data.size(); ++i) {
        float value = identity;
        for (const Contribution& s : slots) value = op(value, s.values[i]);
        data[i] = value;
      }
    }
    group_->Release(rank_, collective);
    Check(sizes_agree, ErrorKind::kCommunication,
          collective + ": ranks passed different sizes (this rank " + std::to_string(data.size()) +
              ")");
  }

  std::shared_ptr<ThreadGroupState> group_;
  int rank_;
};

}  // namespace

std::unique_ptr<Communicator> SingleProcessCommunicator() {
  return std::make_unique<SingleProcess>();
}

std::vector<std::unique_ptr<Communicator>> InProcessGroup(int world, double timeout_seconds) {
  Check(world >= 1, ErrorKind::kInvalidArgument,
        "InProcessGroup: world must be >= 1, got " + std::to_string(world));
  Check(timeout_seconds > 0.0, ErrorKind::kInvalidArgument,
        "InProcessGroup: timeout must be positive");
  auto state = std::make_shared<ThreadGroupState>(world, timeout_seconds);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(std::make_unique<ThreadRank>(state, r));
  return ranks;
}

void CheckRanksAgree(Communicator& comm, int64_t mine, const std::string& what) {
  const std::vector<int64_t> values = comm.AllGatherInt(mine);
  std::string differing;
  for (size_t r = 1; r < values.size(); ++r) {
    if (values[r] != values[0]) {
      differing += (differing.empty() ? "" : ", ") + std::to_string(r);
    }
  }
  Check(differing.empty(), ErrorKind::kCommunication,
        "ranks disagree on " + what + ": rank(s) " + differing + " differ from rank 0 (" +
            std::to_string(values[0]) + " on rank 0)");
}

void AgreeOnFailure(Communicator& comm, bool failed, const std::string& message) {
  const std::vector<int64_t> flags = comm.AllGatherInt(failed ? 1 : 0);
  const auto first = std::find(flags.begin(), flags.end(), 1);
  if (first == flags.end()) return;
  // Everyone knows someone failed, so everyone takes part in gathering the messages.
  const std::vector<std::string> texts = comm.AllGatherText(failed ? message.substr(0, 400) : "");
  const auto rank = static_cast<size_t>(first - flags.begin());
  throw Error(ErrorKind::kCommunication, "rank " + std::to_string(rank) + " of " +
                                             std::to_string(flags.size()) +
                                             " failed: " + texts[rank]);
}

}  // namespace attn
