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

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// What MPI may still touch while a collective runs: the send and receive bytes, and the counts
// and displacements of an Iallgatherv (MPI reads those until completion too).
struct CollectiveBuffers {
  std::vector<std::byte> send;
  std::vector<std::byte> receive;
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
// so it must be polled) or until `deadline`. Spins for the first 50 µs, which covers a small
// collective between ranks on one node, then sleeps between polls, doubling the pause up to 1 ms,
// so that a rank waiting for a slow peer does not take a core from it (ranks are often
// oversubscribed on one machine).
PollResult Poll(MPI_Request* request, Clock::time_point deadline, int* mpi_error) {
  constexpr auto kSpin = std::chrono::microseconds(50);
  constexpr auto kShortestPause = std::chrono::microseconds(10);
  constexpr auto kLongestPause = std::chrono::microseconds(1000);
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
    if (now - start >= kSpin) {
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
  MpiCommunicator(MPI_Comm comm, double timeout_seconds) : comm_(comm), timeout_(timeout_seconds) {
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

  // An all-gather of every rank's data, then a local sum in rank order 0, 1, …, W-1 on every
  // rank: bit-identical on every rank and equal to InProcessGroup's sum, which a tree or ring
  // MPI_Allreduce would not be (its association depends on the rank). The cost: each rank
  // receives (W-1)·n·4 bytes instead of a ring all-reduce's 2·(W-1)/W·n·4.
  void AllReduceSum(std::span<float> data) override {
    const std::vector<float> gathered = GatherEqualFloats("AllReduceSum", data);
    const size_t n = data.size();
    if (n == 0) return;
    std::copy(gathered.begin(), gathered.begin() + static_cast<ptrdiff_t>(n), data.begin());
    for (int r = 1; r < world_; ++r) {
      const float* row = gathered.data() + static_cast<size_t>(r) * n;
      for (size_t i = 0; i < n; ++i) data[i] += row[i];
    }
  }

  // Same gather, then the maximum in rank order, so that NaNs resolve identically everywhere.
  void AllReduceMax(std::span<float> data) override {
    const std::vector<float> gathered = GatherEqualFloats("AllReduceMax", data);
    const size_t n = data.size();
    if (n == 0) return;
    std::copy(gathered.begin(), gathered.begin() + static_cast<ptrdiff_t>(n), data.begin());
    for (int r = 1; r < world_; ++r) {
      const float* row = gathered.data() + static_cast<size_t>(r) * n;
      for (size_t i = 0; i < n; ++i) data[i] = row[i] > data[i] ? row[i] : data[i];
    }
  }

  void AllGather(std::span<const float> mine, std::span<float> all) override {
    ThrowIfBroken("AllGather");
    // Every rank learns every rank's input and output length, so that all ranks agree on whether
    // the sizes fit and throw together.
    const int64_t sizes[2] = {static_cast<int64_t>(mine.size()), static_cast<int64_t>(all.size())};
    const std::vector<int64_t> everyone = GatherInts("AllGather (sizes)", sizes);
    int64_t total = 0;
    for (int r = 0; r < world_; ++r) total += everyone[2 * static_cast<size_t>(r)];
    std::string mismatch;
    for (int r = 0; r < world_; ++r) {
      if (everyone[2 * static_cast<size_t>(r) + 1] != total) {
        mismatch += (mismatch.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) +
                    "'s holds " + std::to_string(everyone[2 * static_cast<size_t>(r) + 1]);
      }
    }
    if (!mismatch.empty()) {
      std::string inputs;
      for (int r = 0; r < world_; ++r) {
        inputs += (r == 0 ? "" : ", ") + std::string("rank ") + std::to_string(r) + ": " +
                  std::to_string(everyone[2 * static_cast<size_t>(r)]);
      }
      throw Error(ErrorKind::kCommunication,
                  "MPI AllGather: the output must hold the sum of every rank's input (" +
                      std::to_string(total) + " floats; inputs " + inputs + "), but " + mismatch);
    }
    std::vector<int64_t> counts(static_cast<size_t>(world_));
    for (int r = 0; r < world_; ++r) counts[static_cast<size_t>(r)] = everyone[2 * r];
    GatherVarying("AllGather", std::as_bytes(mine), counts, MPI_FLOAT, sizeof(float),
                  std::as_writable_bytes(all));
  }

  std::vector<int64_t> AllGatherInt(int64_t mine) override {
    ThrowIfBroken("AllGatherInt");
    return GatherInts("AllGatherInt", std::span<const int64_t>(&mine, 1));
  }

  std::vector<std::string> AllGatherText(const std::string& mine) override {
    ThrowIfBroken("AllGatherText");
    const int64_t length = static_cast<int64_t>(mine.size());
    const std::vector<int64_t> lengths =
        GatherInts("AllGatherText (lengths)", std::span<const int64_t>(&length, 1));
    int64_t total = 0;
    for (int64_t l : lengths) total += l;
    std::string joined(static_cast<size_t>(total), '\0');
    GatherVarying("AllGatherText", std::as_bytes(std::span(mine.data(), mine.size())), lengths,
                  MPI_CHAR, 1, std::as_writable_bytes(std::span(joined.data(), joined.size())));
    std::vector<std::string> texts;
    texts.reserve(static_cast<size_t>(world_));
    size_t offset = 0;
    for (int64_t l : lengths) {
      texts.push_back(joined.substr(offset, static_cast<size_t>(l)));
      offset += static_cast<size_t>(l);
    }
    return texts;
  }

  void Barrier() override {
    ThrowIfBroken("Barrier");
    auto buffers = std::make_unique<CollectiveBuffers>();
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier");
    Complete(request, std::move(buffers), "Barrier", "no data");
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

  // Waits for `request`; on timeout or failure keeps it and its buffers alive for the rest of the
  // process, marks this communicator broken and throws Error(kCommunication).
  std::unique_ptr<CollectiveBuffers> Complete(MPI_Request request,
                                              std::unique_ptr<CollectiveBuffers> buffers,
                                              const char* collective, const std::string& size) {
    int mpi_error = MPI_SUCCESS;
    const PollResult result = Poll(&request, DeadlineAfter(timeout_), &mpi_error);
    if (result == PollResult::kDone) return buffers;
    ProcessState().abandoned.push_back({request, std::move(buffers)});
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

  // `count` values from every rank, in rank order (every rank passes the same count).
  std::vector<int64_t> GatherInts(const char* collective, std::span<const int64_t> mine) {
    auto buffers = std::make_unique<CollectiveBuffers>();
    buffers->send.resize(mine.size_bytes());
    std::memcpy(buffers->send.data(), mine.data(), mine.size_bytes());
    buffers->receive.resize(mine.size_bytes() * static_cast<size_t>(world_));
    const int count = static_cast<int>(mine.size());
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgather(buffers->send.data(), count, MPI_INT64_T, buffers->receive.data(),
                            count, MPI_INT64_T, comm_, &request),
             "MPI_Iallgather");
    buffers = Complete(request, std::move(buffers), collective,
                       std::to_string(count) + " int64 per rank");
    std::vector<int64_t> values(mine.size() * static_cast<size_t>(world_));
    std::memcpy(values.data(), buffers->receive.data(), buffers->receive.size());
    return values;
  }

  // Every rank's `data` (the same length on every rank, checked first), rank after rank.
  std::vector<float> GatherEqualFloats(const char* collective, std::span<const float> data) {
    ThrowIfBroken(collective);
    // Checking the lengths costs one more small collective, but a mismatch would otherwise be
    // silent garbage or a hang inside MPI.
    const int64_t length = static_cast<int64_t>(data.size());
    const std::vector<int64_t> lengths =
        GatherInts(collective, std::span<const int64_t>(&length, 1));
    if (std::any_of(lengths.begin(), lengths.end(), [&](int64_t l) { return l != length; })) {
      std::string listed;
      for (int r = 0; r < world_; ++r) {
        listed += (r == 0 ? "" : ", ") + std::string("rank ") + std::to_string(r) + ": " +
                  std::to_string(lengths[static_cast<size_t>(r)]);
      }
      throw Error(ErrorKind::kCommunication, std::string("MPI ") + collective +
                                                 ": ranks pass different lengths (" + listed + ")");
    }
    Check(length <= INT_MAX, ErrorKind::kInvalidArgument,
          std::string("MPI ") + collective + ": " + std::to_string(length) +
              " floats exceed MPI's int count");
    std::vector<float> gathered(data.size() * static_cast<size_t>(world_));
    if (data.empty()) return gathered;
    auto buffers = std::make_unique<CollectiveBuffers>();
    buffers->send.resize(data.size_bytes());
    std::memcpy(buffers->send.data(), data.data(), data.size_bytes());
    buffers->receive.resize(gathered.size() * sizeof(float));
    const int count = static_cast<int>(length);
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgather(buffers->send.data(), count, MPI_FLOAT, buffers->receive.data(), count,
                            MPI_FLOAT, comm_, &request),
             "MPI_Iallgather");
    buffers = Complete(request, std::move(buffers), collective,
                       std::to_string(count) + " floats per rank");
    std::memcpy(gathered.data(), buffers->receive.data(), buffers->receive.size());
    return gathered;
  }

  // Rank r contributes counts[r] elements of `type` (`element_bytes` each); `all` receives them
  // in rank order. The counts come from a gather, so every rank passes the same ones.
  void GatherVarying(const char* collective, std::span<const std::byte> mine,
                     const std::vector<int64_t>& counts, MPI_Datatype type, size_t element_bytes,
                     std::span<std::byte> all) {
    int64_t total = 0;
    for (int64_t c : counts) total += c;
    Check(total <= INT_MAX, ErrorKind::kInvalidArgument,
          std::string("MPI ") + collective + ": " + std::to_string(total) +
              " elements in all exceed MPI's int count");
    auto buffers = std::make_unique<CollectiveBuffers>();
    buffers->send.assign(mine.begin(), mine.end());
    buffers->receive.resize(all.size());
    buffers->counts.resize(counts.size());
    buffers->displacements.resize(counts.size());
    int offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      buffers->counts[r] = static_cast<int>(counts[r]);
      buffers->displacements[r] = offset;
      offset += buffers->counts[r];
    }
    // MPI may not be handed a null pointer for an empty buffer on every implementation.
    buffers->send.reserve(1);
    buffers->receive.reserve(1);
    MPI_Request request = MPI_REQUEST_NULL;
    CheckMpi(MPI_Iallgatherv(buffers->send.data(), static_cast<int>(mine.size() / element_bytes),
                             type, buffers->receive.data(), buffers->counts.data(),
                             buffers->displacements.data(), type, comm_, &request),
             "MPI_Iallgatherv");
    buffers = Complete(request, std::move(buffers), collective,
                       std::to_string(total) + " elements in all");
    std::copy(buffers->receive.begin(), buffers->receive.end(), all.begin());
  }

  MPI_Comm comm_;
  double timeout_;
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
