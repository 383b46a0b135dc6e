// SPDX-License-Identifier: Apache-2.0
// Communicator over MPI (include/attn/mpi_communicator.h, docs/distributed.md).
//
// Every collective is started nonblocking (MPI_Iallgather, MPI_Iallgatherv, MPI_Ibarrier,
// MPI_Comm_idup) and completed by polling MPI_Test against a deadline, so a rank never waits
// forever for a peer that died, hangs, or called a different collective. MPI cannot cancel or
// free a started collective, so one that timed out keeps its request and buffers (MPI may still
// read or write them if the peer ever arrives) in a list that lives until the process ends, and
// the communicator refuses every later call: the next collective would be matched with the
// abandoned one.
//
// Every buffer MPI sees is owned here, never the caller's span: an abandoned collective must not
// write into memory the caller has since freed.
#include "attn/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "attn/error.h"

namespace attn {
namespace {

using Clock = std::chrono::steady_clock;

// What MPI may still touch while a collective runs: the send and receive buffers, and the counts
// and displacements of an Iallgatherv (MPI reads those until completion too). A communicator
// keeps one set and reuses it, so that a repeated collective (one all-reduce per layer and step)
// neither allocates nor page-faults in fresh memory; it holds the largest collective's size
// (W·n floats for an all-reduce of n).
struct CollectiveBuffers {
  std::vector<float> send_floats;
  std::vector<float> receive_floats;
  std::vector<int64_t> send_ints;
  std::vector<int64_t> receive_ints;
  std::vector<char> send_chars;
  std::vector<char> receive_chars;
  std::vector<int> counts;
  std::vector<int> displacements;
  MPI_Comm new_comm = MPI_COMM_NULL;  // MPI_Comm_idup's output
};

struct AbandonedCollective {
  MPI_Request request;
  std::unique_ptr<CollectiveBuffers> buffers;
};

// Process-wide MPI state, used from the atexit handler too, so it is never destroyed (a function
// static would be destroyed before or after that handler depending on construction order).
struct MpiProcessState {
  bool initialised_by_attn = false;
  // The longest timeout any communicator was made with: how long the exit handler waits for
  // every rank to reach the end.
  double exit_timeout_seconds = 0.0;
  // An MPI_Comm_idup of the world timed out: the world's collectives no longer match across
  // ranks, so no new communicator can be made and the exit handler cannot wait on the world.
  bool world_broken = false;
  std::vector<AbandonedCollective> abandoned;
};

MpiProcessState& ProcessState() {
  static auto* const state = new MpiProcessState;
  return *state;
}

std::string MpiErrorText(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return "MPI error code " + std::to_string(code);
  }
  return std::string(text, static_cast<size_t>(length));
}

void CheckMpi(int code, const char* call) {
  if (code != MPI_SUCCESS) {
    throw Error(ErrorKind::kCommunication,
                std::string("MPI: ") + call + " failed: " + MpiErrorText(code));
  }
}

bool MpiIsInitialised() {
  int initialised = 0;
  int finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  return initialised != 0 && finalised == 0;
}

enum class PollResult { kDone, kTimedOut, kFailed };

// Drives `request` to completion (MPI progresses nonblocking collectives only inside MPI calls,
// so it must be polled: a large all-gather goes through many rounds of fragments, each needing a
// poll) or until `deadline`. For the first 10 ms (an all-reduce of 1 M floats over 2 ranks on one
// 2-core machine measured 1.6-5 ms: `attn_mpi_tests --bench`) it polls back to back, yielding the
// core between polls to any other runnable process (ranks are often oversubscribed on one machine);
// after that the peer is evidently slow, and it sleeps between polls, doubling the pause from 10 µs
// up to 200 µs, so that a rank waiting for a slow peer takes a few percent of a core, not all of
// it.
PollResult Poll(MPI_Request* request, Clock::time_point deadline, int* mpi_error) {
  constexpr auto kBusy = std::chrono::milliseconds(10);
  constexpr auto kShortestPause = std::chrono::microseconds(10);
  constexpr auto kLongestPause = std::chrono::microseconds(200);
  const Clock::time_point start = Clock::now();
  std::chrono::microseconds pause{0};
  while (true) {
    int done = 0;
    const int code = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS) {
      *mpi_error = code;
      return PollResult::kFailed;
    }
    if (done != 0) return PollResult::kDone;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return PollResult::kTimedOut;
    if (now - start < kBusy) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(pause);
      pause = std::min(std::max(pause * 2, kShortestPause), kLongestPause);
    }
  }
}

Clock::time_point DeadlineAfter(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string SecondsText(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g s", seconds);
  return text;
}

// The collective's timeout: ATTN_COLLECTIVE_TIMEOUT when set, else the caller's.
double ResolveTimeout(double timeout_seconds) {
  if (const char* text = std::getenv("ATTN_COLLECTIVE_TIMEOUT"); text != nullptr) {
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(text, &end);
    Check(end != text && *end == '\0' && errno == 0 && std::isfinite(value) && value > 0.0,
          ErrorKind::kInvalidArgument,
          std::string("ATTN_COLLECTIVE_TIMEOUT must be a positive number of seconds, got \"") +
              text + "\"");
    return value;
  }
  Check(std::isfinite(timeout_seconds) && timeout_seconds > 0.0, ErrorKind::kInvalidArgument,
        "MPI collective timeout must be a positive number of seconds, got " +
            std::to_string(timeout_seconds));
  return timeout_seconds;
}

// At process exit: wait (bounded) for every rank to get here, then MPI_Finalize. MPI_Finalize
// itself waits for every rank without a bound, so a rank whose peer is stuck would hang in it;
// MPI_Abort ends the whole job instead, and mpirun then exits nonzero.
void FinalizeAtExit() {
  if (!MpiIsInitialised()) return;
  MpiProcessState& state = ProcessState();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (state.world_broken) {
    std::fprintf(stderr,
                 "attn: rank %d: creating an MPI communicator timed out earlier; ending the "
                 "whole job (MPI_Abort)\n",
                 rank);
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  int mpi_error = MPI_SUCCESS;
  PollResult result = PollResult::kFailed;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &request) == MPI_SUCCESS) {
    result = Poll(&request, DeadlineAfter(state.exit_timeout_seconds), &mpi_error);
  }
  if (result != PollResult::kDone) {
    std::fprintf(stderr,
                 "attn: rank %d: not every rank reached the end of the program within %s (a "
                 "peer rank died, hung or took a different path); ending the whole job "
                 "(MPI_Abort)\n",
                 rank, SecondsText(state.exit_timeout_seconds).c_str());
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
}

// Initialises MPI on first use; only the calling thread will make MPI calls, which is what
// MPI_THREAD_FUNNELED promises (the layers' worker threads never communicate).
void EnsureMpiInitialised() {
  int finalised = 0;
  MPI_Finalized(&finalised);
  Check(finalised == 0, ErrorKind::kCommunication,
        "MPI: cannot make a communicator after MPI was finalised");
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (initialised == 0) {
    int provided = MPI_THREAD_SINGLE;
    const int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    CheckMpi(code, "MPI_Init_thread");
    ProcessState().initialised_by_attn = true;
    std::atexit(FinalizeAtExit);
    Check(provided >= MPI_THREAD_FUNNELED, ErrorKind::kCommunication,
          "MPI: the library provides thread level " + std::to_string(provided) +
              ", below MPI_THREAD_FUNNELED");
  }
  // Failures come back as return codes (turned into Error) instead of aborting the job.
  CheckMpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, double timeout_seconds)
      : comm_(comm), timeout_(timeout_seconds), buffers_(std::make_unique<CollectiveBuffers>()) {
    CheckMpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    CheckMpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    CheckMpi(MPI_Comm_size(comm_, &world_), "MPI_Comm_size");
  }

  ~MpiCommunicator() override {
    // A broken communicator still has an abandoned collective on it; it is left to the process's
    // end. After MPI_Finalize (this object outlived the exit handler) nothing may be freed.
    if (broken_.empty() && MpiIsInitialised()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  const char* name() const override { return "mpi"; }

  // An all-gather of every rank's data, then on every rank a local sum in rank order
  // 0 + x₀ + x₁ + … + x_{W-1}, exactly the order InProcessGroup uses (src/dist/communicator.cc;
  // the leading 0 matters: it turns -0 into +0): bit-identical on every rank and to the thread
  // group, which a tree or ring MPI_Allreduce would not be (its association depends on the rank).
  // The cost: each rank receives (W-1)·n·4 bytes instead of a ring all-reduce's
  // 2·(W-1)/W·n·4, and the W·n floats stay allocated in the communicator for reuse.
  void AllReduceSum(std::span<float> data) override {
    GatherEqualFloats("AllReduceSum", data);
    const size_t n = data.size();
    const float* gathered = buffers_->receive_floats.data();
    // Block by block, so that a block of the result stays in L1 while every rank's row is added
    // to it (one pass over memory instead of W); the order of the additions per element is the
    // same.
    constexpr size_t kBlock = 2048;
    for (size_t begin = 0; begin < n; begin += kBlock) {
      const size_t end = std::min(n, begin + kBlock);
      for (size_t i = begin; i < end; ++i) data[i] = 0.0f + gathered[i];
      for (int r = 1; r < world_; ++r) {
        const float* row = gathered + static_cast<size_t>(r) * n;
        for (size_t i = begin; i < end; ++i) data[i] += row[i];
      }
    }
  }

  // The same gather, then on every rank std::max(…std::max(-inf, x₀)…, x_{W-1}) in rank order,
  // as InProcessGroup does; like it, a NaN is never picked (std::max keeps its first argument
  // when the comparison is false).
  void AllReduceMax(std::span<float> data) override {
    GatherEqualFloats("AllReduceMax", data);
    const size_t n = data.size();
    const float* gathered = buffers_->receive_floats.data();
    std::fill(data.begin(), data.end(), -std::numeric_limits<float>::infinity());
    for (int r = 0; r < world_; ++r) {
      const float* row = gathered + static_cast<size_t>(r) * n;
      for (size_t i = 0; i < n; ++i) data[i] = std::max(data[i], row[i]);
    }
  }

  void AllGather(std::span<const float> mine, std::span<float> all) override {
    ThrowIfBroken("AllGather");
    // Every rank learns every rank's input and output length, so that all ranks agree on whether
    // the sizes fit and throw together.
    const int64_t sizes[2] = {static_cast<int64_t>(mine.size()), static_cast<int64_t>(all.size())};
    const std::vector<int64_t> everyone = GatherInts("AllGather (sizes)", sizes);
    std::vector<int64_t> counts(static_cast<size_t>(world_));
    int64_t total = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      counts[r] = everyone[2 * r];
      total += counts[r];
    }
    std::string mismatch;
    for (size_t r = 0; r < counts.size(); ++r) {
      if (everyone[2 * r + 1] != total) {
        mismatch += (mismatch.empty() ? "rank " : ", rank ") + std::to_string(r) + "'s holds " +
                    std::to_string(everyone[2 * r + 1]);
      }
    }
    if (!mismatch.empty()) {
      throw Error(ErrorKind::kCommunication,
                  "MPI AllGather: the output must hold the sum of every rank's input (" +
                      std::to_string(total) + " floats; inputs " + RankList(counts) + "), but " +
                      mismatch);
    }
    CheckIntCount("AllGather", total);
    CollectiveBuffers& b = *buffers_;
    b.send_floats.assign(mine.begin(), mine.end());
    b.receive_floats.resize(all.size());
    SetCountsAndDisplacements(counts);
    // MPI may not be handed a null pointer for an empty buffer on every implementation.
    b.send_floats.reserve(1);
    b.receive_floats.reserve(1);
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgatherv(b.send_floats.data(), static_cast<int>(mine.size()), MPI_FLOAT,
                             b.receive_floats.data(), b.counts.data(), b.displacements.data(),
                             MPI_FLOAT, comm_, &request),
             "MPI_Iallgatherv");
    Complete(request, "AllGather", std::to_string(total) + " floats in all");
    std::copy(buffers_->receive_floats.begin(), buffers_->receive_floats.end(), all.begin());
  }

  std::vector<int64_t> AllGatherInt(int64_t mine) override {
    ThrowIfBroken("AllGatherInt");
    return GatherInts("AllGatherInt", std::span<const int64_t>(&mine, 1));
  }

  // The lengths first, then the bytes.
  std::vector<std::string> AllGatherText(const std::string& mine) override {
    ThrowIfBroken("AllGatherText");
    const int64_t length = static_cast<int64_t>(mine.size());
    const std::vector<int64_t> lengths =
        GatherInts("AllGatherText (lengths)", std::span<const int64_t>(&length, 1));
    int64_t total = 0;
    for (int64_t l : lengths) total += l;
    CheckIntCount("AllGatherText", total);
    CollectiveBuffers& b = *buffers_;
    b.send_chars.assign(mine.begin(), mine.end());
    b.receive_chars.resize(static_cast<size_t>(total));
    SetCountsAndDisplacements(lengths);
    b.send_chars.reserve(1);
    b.receive_chars.reserve(1);
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgatherv(b.send_chars.data(), static_cast<int>(length), MPI_CHAR,
                             b.receive_chars.data(), b.counts.data(), b.displacements.data(),
                             MPI_CHAR, comm_, &request),
             "MPI_Iallgatherv");
    Complete(request, "AllGatherText", std::to_string(total) + " bytes in all");
    std::vector<std::string> texts;
    texts.reserve(lengths.size());
    const char* next = buffers_->receive_chars.data();
    for (int64_t l : lengths) {
      texts.emplace_back(next, static_cast<size_t>(l));
      next += l;
    }
    return texts;
  }

  void Barrier() override {
    ThrowIfBroken("Barrier");
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier");
    Complete(request, "Barrier", "no data");
  }

 private:
  void ThrowIfBroken(const char* collective) const {
    ATTN_CHECK(broken_.empty(), ErrorKind::kCommunication,
               std::string("MPI ") + collective + " on rank " + std::to_string(rank_) +
                   ": this communicator is unusable since " + broken_ +
                   " (MPI cannot cancel a started collective); make a new one");
    int is_main = 0;
    MPI_Is_thread_main(&is_main);
    ATTN_CHECK(is_main != 0, ErrorKind::kInvalidArgument,
               std::string("MPI ") + collective +
                   ": called from a thread other than the one that initialised MPI "
                   "(MPI_THREAD_FUNNELED)");
  }

  // Waits for `request`, which uses buffers_. On timeout or failure hands the request and
  // buffers_ to the process's abandoned list (MPI may still touch them), marks this
  // communicator broken and throws Error(kCommunication).
  void Complete(MPI_Request request, const char* collective, const std::string& size) {
    int mpi_error = MPI_SUCCESS;
    const PollResult result = Poll(&request, DeadlineAfter(timeout_), &mpi_error);
    if (result == PollResult::kDone) return;
    ProcessState().abandoned.push_back({request, std::move(buffers_)});
    const std::string where = std::string(collective) + " (" + size + ") on rank " +
                              std::to_string(rank_) + " of " + std::to_string(world_);
    if (result == PollResult::kFailed) {
      broken_ = "its " + where + " failed";
      throw Error(ErrorKind::kCommunication,
                  "MPI " + where + " failed: " + MpiErrorText(mpi_error));
    }
    broken_ = "its " + where + " timed out";
    throw Error(ErrorKind::kCommunication,
                "MPI " + where + " did not complete within " + SecondsText(timeout_) +
                    ": a peer rank died, hung or took a different path (called another "
                    "collective or none); ATTN_COLLECTIVE_TIMEOUT sets the limit");
  }

  // mine.size() values from every rank, in rank order (every rank passes as many).
  std::vector<int64_t> GatherInts(const char* collective, std::span<const int64_t> mine) {
    CollectiveBuffers& b = *buffers_;
    b.send_ints.assign(mine.begin(), mine.end());
    b.receive_ints.resize(mine.size() * static_cast<size_t>(world_));
    const int count = static_cast<int>(mine.size());
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgather(b.send_ints.data(), count, MPI_INT64_T, b.receive_ints.data(), count,
                            MPI_INT64_T, comm_, &request),
             "MPI_Iallgather");
    Complete(request, collective, std::to_string(count) + " int64 per rank");
    return buffers_->receive_ints;
  }

  // Every rank's `data` (the same length on every rank, checked first), rank after rank, into
  // buffers_->receive_floats.
  void GatherEqualFloats(const char* collective, std::span<const float> data) {
    ThrowIfBroken(collective);
    // Checking the lengths costs one more small collective, but a mismatch would otherwise be
    // garbage or a hang inside MPI.
    const int64_t length = static_cast<int64_t>(data.size());
    const std::vector<int64_t> lengths =
        GatherInts(collective, std::span<const int64_t>(&length, 1));
    if (std::any_of(lengths.begin(), lengths.end(), [&](int64_t l) { return l != length; })) {
      throw Error(ErrorKind::kCommunication, std::string("MPI ") + collective +
                                                 ": ranks pass different lengths (" +
                                                 RankList(lengths) + ")");
    }
    CheckIntCount(collective, length);
    CollectiveBuffers& b = *buffers_;
    b.receive_floats.resize(data.size() * static_cast<size_t>(world_));
    if (data.empty()) return;
    b.send_floats.assign(data.begin(), data.end());
    const int count = static_cast<int>(length);
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgather(b.send_floats.data(), count, MPI_FLOAT, b.receive_floats.data(), count,
                            MPI_FLOAT, comm_, &request),
             "MPI_Iallgather");
    Complete(request, collective, std::to_string(count) + " floats per rank");
  }

  // Iallgatherv's counts and displacements (in elements) for per-rank `counts` whose total
  // CheckIntCount allowed.
  void SetCountsAndDisplacements(const std::vector<int64_t>& counts) {
    CollectiveBuffers& b = *buffers_;
    b.counts.resize(counts.size());
    b.displacements.resize(counts.size());
    int offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      b.counts[r] = static_cast<int>(counts[r]);
      b.displacements[r] = offset;
      offset += b.counts[r];
    }
  }

  static void CheckIntCount(const char* collective, int64_t elements) {
    Check(elements <= INT_MAX, ErrorKind::kInvalidArgument,
          std::string("MPI ") + collective + ": " + std::to_string(elements) +
              " elements exceed MPI's int count");
  }

  // "rank 0: 8, rank 1: 9".
  static std::string RankList(const std::vector<int64_t>& values) {
    std::string listed;
    for (size_t r = 0; r < values.size(); ++r) {
      listed +=
          (r == 0 ? "rank " : ", rank ") + std::to_string(r) + ": " + std::to_string(values[r]);
    }
    return listed;
  }

  MPI_Comm comm_;
  double timeout_;
  std::unique_ptr<CollectiveBuffers> buffers_;
  int rank_ = 0;
  int world_ = 1;
  // Empty while usable; once a collective timed out or failed, which one (for later errors).
  std::string broken_;
};

}  // namespace

std::unique_ptr<Communicator> MpiWorldCommunicator(double timeout_seconds) {
  const double timeout = ResolveTimeout(timeout_seconds);
  EnsureMpiInitialised();
  MpiProcessState& state = ProcessState();
  Check(!state.world_broken, ErrorKind::kCommunication,
        "MPI: cannot make a communicator: an earlier one timed out while being created");
  state.exit_timeout_seconds = std::max(state.exit_timeout_seconds, timeout);
  int rank = 0;
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // A private duplicate of the world (its own matching context), made with the nonblocking
  // MPI_Comm_idup so that a rank that never makes its communicator cannot hang the others.
  auto buffers = std::make_unique<CollectiveBuffers>();
  MPI_Request request = MPI_REQUEST_NULL;
  CheckMpi(MPI_Comm_idup(MPI_COMM_WORLD, &buffers->new_comm, &request), "MPI_Comm_idup");
  int mpi_error = MPI_SUCCESS;
  const PollResult result = Poll(&request, DeadlineAfter(timeout), &mpi_error);
  if (result != PollResult::kDone) {
    state.world_broken = true;
    state.abandoned.push_back({request, std::move(buffers)});
    const std::string where = "MPI_Comm_idup of the world on rank " + std::to_string(rank) +
                              " of " + std::to_string(world);
    if (result == PollResult::kFailed) {
      throw Error(ErrorKind::kCommunication, where + " failed: " + MpiErrorText(mpi_error));
    }
    throw Error(ErrorKind::kCommunication,
                where + " did not complete within " + SecondsText(timeout) +
                    ": a peer rank died, hung or took a different path (did not make its "
                    "communicator); ATTN_COLLECTIVE_TIMEOUT sets the limit");
  }
  return std::make_unique<MpiCommunicator>(buffers->new_comm, timeout);
}

bool LaunchedByMpirun() {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (std::getenv(variable) != nullptr) return true;
  }
  return false;
}

void MpiAbortAll(int exit_code) {
  std::fflush(nullptr);
  if (MpiIsInitialised()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace attn
