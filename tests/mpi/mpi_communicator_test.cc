// SPDX-License-Identifier: Apache-2.0
// The MPI communicator under mpirun, on whatever world it is started in (CMake runs it with -np 2
// and -np 4; docs/distributed.md). A plain main, not GoogleTest: every rank runs every case, a
// failing check prints on the rank that saw it, and at the end the ranks add up their failures so
// that every rank exits nonzero when any rank failed.
//
//   attn_mpi_tests                  every case, ending with the timeout case (rank 1 skips a
//                                   collective; the others must throw within the timeout, then all
//                                   go on with a new communicator)
//   attn_mpi_tests --die-rank R     rank R calls _exit(3) before a collective: the job must end
//                                   nonzero, with no rank hanging
//   attn_mpi_tests --hang-rank R    rank R sleeps for an hour while the others end: the exit
//                                   handler must end the job (MPI_Abort) after the 3 s timeout
//                                   (tests/mpi/expect_job_failure.cmake checks both)
//   attn_mpi_tests --bench REPEATS  median latency of AllReduceSum of 4096 and 1 M floats
//
// Expected values are computed independently on every rank: each rank can compute every rank's
// input (a function of the rank), sums them in rank order 0, 1, …, W-1, the order the interface
// promises, and also runs the same all-reduce on InProcessGroup's threads: the results must be
// equal bit for bit.
#include "attn/mpi_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "attn/communicator.h"
#include "attn/error.h"

namespace attn {
namespace {

int g_rank = 0;
int g_failures = 0;

void Expect(bool ok, const std::string& what) {
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "rank %d: FAILED: %s\n", g_rank, what.c_str());
}

// Runs `call`, which must throw Error(kind) whose message contains every one of `needles`.
void ExpectError(const std::function<void()>& call, ErrorKind kind,
                 const std::vector<std::string>& needles, const std::string& what) {
  try {
    call();
  } catch (const Error& error) {
    Expect(error.kind() == kind, what + ": wrong error kind, message: " + error.what());
    for (const std::string& needle : needles) {
      Expect(std::string(error.what()).find(needle) != std::string::npos,
             what + ": message lacks \"" + needle + "\": " + error.what());
    }
    return;
  }
  Expect(false, what + ": did not throw");
}

using Seconds = std::chrono::duration<double>;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return Seconds(std::chrono::steady_clock::now() - start).count();
}

// Rank r's input to the all-reduces: values of mixed magnitude, so that the sum's rounding
// depends on the order of the additions, and -0 on every rank at every 11th position (the sum
// must start from +0, as InProcessGroup's does, and so yield +0 there).
std::vector<float> SumInput(int rank, size_t n) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    const double magnitude = std::pow(10.0, static_cast<double>(i % 7) - 3.0);
    values[i] = i % 11 == 5
                    ? -0.0f
                    : static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 1.3 * rank) *
                                         magnitude * (1.0 + 0.1 * rank));
  }
  return values;
}

// The oracle: what InProcessGroup(world) gives when rank r passes inputs[r] to `reduce`
// (one thread per rank; rank 0's result).
std::vector<float> ThreadGroupResult(const std::vector<std::vector<float>>& inputs,
                                     void (Communicator::*reduce)(std::span<float>)) {
  const int world = static_cast<int>(inputs.size());
  std::vector<std::unique_ptr<Communicator>> group = InProcessGroup(world, 30.0);
  std::vector<std::vector<float>> results = inputs;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back(
        [&, r] { ((*group[static_cast<size_t>(r)]).*reduce)(results[static_cast<size_t>(r)]); });
  }
  for (std::thread& thread : threads) thread.join();
  return results[0];
}

bool BitIdentical(std::span<const float> a, std::span<const float> b) {
  // memcmp may not be given the null pointer of an empty span.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

void TestRankAndWorld(Communicator& comm) {
  const char* env_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  const char* env_size = std::getenv("OMPI_COMM_WORLD_SIZE");
  Expect(LaunchedByMpirun(), "LaunchedByMpirun() under mpirun");
  // Without the launcher's variables the same process counts as not launched by mpirun.
  std::vector<std::pair<const char*, std::string>> saved;
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* value = std::getenv(variable); value != nullptr) {
      saved.emplace_back(variable, value);
      unsetenv(variable);
    }
  }
  Expect(!LaunchedByMpirun(), "LaunchedByMpirun() without the launcher's variables");
  for (const auto& [variable, value] : saved) setenv(variable, value.c_str(), 1);
  if (env_rank != nullptr && env_size != nullptr) {
    Expect(comm.rank() == std::atoi(env_rank), "rank() equals OMPI_COMM_WORLD_RANK");
    Expect(comm.world() == std::atoi(env_size), "world() equals OMPI_COMM_WORLD_SIZE");
  }
  Expect(std::string(comm.name()) == "mpi", "name() is \"mpi\"");
  const std::vector<int64_t> ranks = comm.AllGatherInt(comm.rank());
  Expect(ranks.size() == static_cast<size_t>(comm.world()), "AllGatherInt returns world values");
  for (size_t r = 0; r < ranks.size(); ++r) {
    Expect(ranks[r] == static_cast<int64_t>(r), "AllGatherInt of ranks is 0..W-1");
  }
}

void TestAllReduceSum(Communicator& comm) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{100003}}) {
    const std::string what = "AllReduceSum of " + std::to_string(n) + " floats";
    std::vector<float> data = SumInput(comm.rank(), n);
    comm.AllReduceSum(data);
    std::vector<float> expected(n, 0.0f);
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < comm.world(); ++r) {
      inputs.push_back(SumInput(r, n));
      for (size_t i = 0; i < n; ++i) expected[i] += inputs.back()[i];
    }
    Expect(BitIdentical(data, expected), what + " equals the rank-order sum bit for bit");
    Expect(BitIdentical(data, ThreadGroupResult(inputs, &Communicator::AllReduceSum)),
           what + " equals InProcessGroup's bit for bit");
    if (n > 5) Expect(!std::signbit(data[5]), what + ": -0 summed over ranks is +0");
    // Every rank's result, side by side: all rows must be the same bytes.
    std::vector<float> everyone(n * static_cast<size_t>(comm.world()));
    comm.AllGather(data, everyone);
    for (int r = 0; r < comm.world(); ++r) {
      Expect(BitIdentical(std::span<const float>(everyone).subspan(r * n, n), data),
             what + ": rank " + std::to_string(r) + "'s result is bit-identical to this rank's");
    }
  }
  // A rank that passes another length: every rank throws, and names the lengths.
  std::vector<float> data(comm.rank() == comm.world() - 1 ? 9 : 8, 1.0f);
  ExpectError([&] { comm.AllReduceSum(data); }, ErrorKind::kCommunication,
              {"AllReduceSum", "different lengths", "rank 0: 8",
               "rank " + std::to_string(comm.world() - 1) + ": 9"},
              "AllReduceSum with one rank's length differing");
}

// Rank r's input to the max: position i holds a finite value only on rank i % (W + 1), so some
// positions are -inf on every rank, and that value is negative on odd positions.
std::vector<float> MaxInput(int rank, int world, size_t n) {
  std::vector<float> values(n, -std::numeric_limits<float>::infinity());
  for (size_t i = 0; i < n; ++i) {
    if (i % static_cast<size_t>(world + 1) == static_cast<size_t>(rank)) {
      values[i] = (i % 2 == 1 ? -1.0f : 1.0f) * (0.5f + static_cast<float>(i));
    }
  }
  return values;
}

void TestAllReduceMax(Communicator& comm) {
  const int world = comm.world();
  const size_t n = 5 * static_cast<size_t>(world) + 3;
  std::vector<float> data = MaxInput(comm.rank(), world, n);
  comm.AllReduceMax(data);
  for (size_t i = 0; i < n; ++i) {
    const float expected = i % static_cast<size_t>(world + 1) < static_cast<size_t>(world)
                               ? (i % 2 == 1 ? -1.0f : 1.0f) * (0.5f + static_cast<float>(i))
                               : -std::numeric_limits<float>::infinity();
    Expect(data[i] == expected, "AllReduceMax at " + std::to_string(i) + ": got " +
                                    std::to_string(data[i]) + ", want " + std::to_string(expected));
  }
  // NaN on one rank and zeros of both signs: whatever InProcessGroup makes of them, bit for bit.
  auto odd_input = [](int r) {
    return std::vector<float>{r == 0 ? std::numeric_limits<float>::quiet_NaN() : 1.0f,
                              r == 1 ? std::numeric_limits<float>::quiet_NaN() : -2.0f,
                              r % 2 == 0 ? -0.0f : 0.0f, -0.0f};
  };
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < world; ++r) inputs.push_back(odd_input(r));
  std::vector<float> odd = odd_input(comm.rank());
  comm.AllReduceMax(odd);
  Expect(BitIdentical(odd, ThreadGroupResult(inputs, &Communicator::AllReduceMax)),
         "AllReduceMax with NaN and signed zeros equals InProcessGroup's bit for bit");
}

void TestAllGather(Communicator& comm) {
  // Rank r contributes (3r) % 5 values (rank 0 none), r·1000 + j.
  auto count_of = [](int r) { return static_cast<size_t>((3 * r) % 5); };
  std::vector<float> mine(count_of(comm.rank()));
  for (size_t j = 0; j < mine.size(); ++j) mine[j] = static_cast<float>(comm.rank() * 1000 + j);
  std::vector<float> expected;
  for (int r = 0; r < comm.world(); ++r) {
    for (size_t j = 0; j < count_of(r); ++j) expected.push_back(static_cast<float>(r * 1000 + j));
  }
  std::vector<float> all(expected.size(), -1.0f);
  comm.AllGather(mine, all);
  Expect(all == expected, "AllGather with a different length on every rank, in rank order");

  // Rank 0's output one too long: every rank throws and names the sizes.
  std::vector<float> wrong(expected.size() + (comm.rank() == 0 ? 1 : 0));
  ExpectError([&] { comm.AllGather(mine, wrong); }, ErrorKind::kCommunication,
              {"AllGather", std::to_string(expected.size()) + " floats",
               "rank 0's holds " + std::to_string(expected.size() + 1)},
              "AllGather with rank 0's output the wrong size");
}

void TestAllGatherInt(Communicator& comm) {
  const int64_t mine = (int64_t{1} << 40) * comm.rank() - 7;
  const std::vector<int64_t> all = comm.AllGatherInt(mine);
  Expect(all.size() == static_cast<size_t>(comm.world()), "AllGatherInt size");
  for (size_t r = 0; r < all.size(); ++r) {
    Expect(all[r] == (int64_t{1} << 40) * static_cast<int64_t>(r) - 7,
           "AllGatherInt value of rank " + std::to_string(r));
  }
}

void TestAllGatherText(Communicator& comm) {
  // Rank 0 sends an empty text; others a text of their own length with an embedded NUL.
  auto text_of = [](int r) {
    return r == 0 ? std::string()
                  : "rank " + std::to_string(r) + std::string(1, '\0') +
                        std::string(static_cast<size_t>(r) * 5, 'x');
  };
  const std::vector<std::string> all = comm.AllGatherText(text_of(comm.rank()));
  Expect(all.size() == static_cast<size_t>(comm.world()), "AllGatherText size");
  for (size_t r = 0; r < all.size(); ++r) {
    Expect(all[r] == text_of(static_cast<int>(r)), "AllGatherText of rank " + std::to_string(r));
  }
}

void TestBarrier(Communicator& comm) {
  // Rank 0 arrives 300 ms late: nobody may leave the barrier before it arrives.
  comm.Barrier();
  const auto start = std::chrono::steady_clock::now();
  if (comm.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  comm.Barrier();
  const double waited = SecondsSince(start);
  Expect(waited >= 0.29, "Barrier waited for the late rank 0 (" + std::to_string(waited) + " s)");
}

void TestCheckRanksAgree(Communicator& comm) {
  CheckRanksAgree(comm, 42, "the answer");
  const int odd_one = comm.world() - 1;
  ExpectError([&] { CheckRanksAgree(comm, comm.rank() == odd_one ? 43 : 42, "the answer"); },
              ErrorKind::kCommunication, {"the answer"}, "CheckRanksAgree with one rank differing");
}

void TestAgreeOnFailure(Communicator& comm) {
  AgreeOnFailure(comm, false, "");
  const int failing = comm.world() > 1 ? 1 : 0;
  ExpectError(
      [&] {
        AgreeOnFailure(comm, comm.rank() == failing,
                       comm.rank() == failing ? "boom on rank " + std::to_string(failing) : "");
      },
      ErrorKind::kCommunication, {"boom on rank " + std::to_string(failing)},
      "AgreeOnFailure with one rank failed");
}

// Rank 1 skips a collective that the others enter: they must throw kCommunication after the
// timeout (2 s from ATTN_COLLECTIVE_TIMEOUT, overriding the 60 s asked for), the broken
// communicator must refuse further use at once, and a new communicator must work on every rank.
void TestTimeout() {
  setenv("ATTN_COLLECTIVE_TIMEOUT", "two", 1);
  ExpectError([] { MpiWorldCommunicator(60.0); }, ErrorKind::kInvalidArgument,
              {"ATTN_COLLECTIVE_TIMEOUT", "two"}, "an invalid ATTN_COLLECTIVE_TIMEOUT");
  setenv("ATTN_COLLECTIVE_TIMEOUT", "2", 1);
  std::unique_ptr<Communicator> victim = MpiWorldCommunicator(60.0);
  unsetenv("ATTN_COLLECTIVE_TIMEOUT");
  if (victim->world() < 2) return;
  if (victim->rank() != 1) {
    const auto start = std::chrono::steady_clock::now();
    ExpectError([&] { victim->AllGatherInt(victim->rank()); }, ErrorKind::kCommunication,
                {"AllGatherInt (1 int64 per rank) on rank " + std::to_string(victim->rank()) +
                     " of " + std::to_string(victim->world()),
                 "within 2 s", "died, hung", "ATTN_COLLECTIVE_TIMEOUT"},
                "a collective rank 1 skips");
    const double waited = SecondsSince(start);
    // 2 s, plus slack for ranks oversubscribed on a small machine.
    Expect(waited >= 1.9 && waited <= 6.0,
           "the timeout took " + std::to_string(waited) + " s, want about 2 s");
    const auto again = std::chrono::steady_clock::now();
    ExpectError([&] { victim->Barrier(); }, ErrorKind::kCommunication, {"unusable", "timed out"},
                "the next call on a timed-out communicator");
    Expect(SecondsSince(again) < 0.5, "a broken communicator refuses at once");
  }
  std::unique_ptr<Communicator> fresh = MpiWorldCommunicator(30.0);
  const std::vector<int64_t> ranks = fresh->AllGatherInt(fresh->rank());
  for (size_t r = 0; r < ranks.size(); ++r) {
    Expect(ranks[r] == static_cast<int64_t>(r), "a new communicator works after the timeout");
  }
}

int RunAll() {
  std::unique_ptr<Communicator> comm = MpiWorldCommunicator(30.0);
  g_rank = comm->rank();
  const std::vector<std::pair<const char*, std::function<void(Communicator&)>>> cases = {
      {"RankAndWorld", TestRankAndWorld},
      {"AllReduceSum", TestAllReduceSum},
      {"AllReduceMax", TestAllReduceMax},
      {"AllGather", TestAllGather},
      {"AllGatherInt", TestAllGatherInt},
      {"AllGatherText", TestAllGatherText},
      {"Barrier", TestBarrier},
      {"CheckRanksAgree", TestCheckRanksAgree},
      {"AgreeOnFailure", TestAgreeOnFailure},
  };
  for (const auto& [name, run] : cases) {
    const int before = g_failures;
    try {
      run(*comm);
    } catch (const std::exception& error) {
      Expect(false, std::string(name) + ": unexpected exception: " + error.what());
    }
    if (g_rank == 0) {
      std::printf("[%s] %s\n", g_failures == before ? "  OK  " : "FAILED", name);
    }
  }
  const int before_timeout = g_failures;
  try {
    TestTimeout();
  } catch (const std::exception& error) {
    Expect(false, std::string("Timeout: unexpected exception: ") + error.what());
  }
  if (g_rank == 0)
    std::printf("[%s] Timeout\n", g_failures == before_timeout ? "  OK  " : "FAILED");
  // Every rank's failures, on a communicator of its own (the main one may be broken if a case
  // went wrong).
  int64_t total = 0;
  try {
    std::unique_ptr<Communicator> tally = MpiWorldCommunicator(30.0);
    for (int64_t f : tally->AllGatherInt(g_failures)) total += f;
  } catch (const std::exception& error) {
    Expect(false, std::string("tally: ") + error.what());
    total = g_failures;
  }
  if (g_rank == 0) {
    std::printf("%s: %lld failed checks over %d ranks\n", total == 0 ? "PASSED" : "FAILED",
                static_cast<long long>(total), comm->world());
  }
  std::fflush(stdout);
  return total == 0 ? 0 : 1;
}

// Rank `die_rank` leaves without MPI_Finalize just before an all-reduce the others enter. OpenMPI
// 4.1's mpirun notices the exit and kills the other ranks (usually before their 20 s timeout, so
// they print nothing); either way the job must end nonzero, which the CMake wrapper checks.
int RunRankDeath(int die_rank) {
  std::unique_ptr<Communicator> comm = MpiWorldCommunicator(20.0);
  comm->Barrier();
  if (comm->rank() == die_rank) {
    std::printf("rank %d: --die-rank: leaving now with _exit(3)\n", die_rank);
    std::fflush(stdout);
    _exit(3);
  }
  std::vector<float> data(1024, 1.0f);
  try {
    comm->AllReduceSum(data);
  } catch (const Error& error) {
    std::fprintf(stderr, "rank %d: %s\n", comm->rank(), error.what());
    MpiAbortAll(4);
  }
  std::fprintf(stderr, "rank %d: the all-reduce completed without rank %d\n", comm->rank(),
               die_rank);
  return 0;
}

// Rank `hang_rank` stops answering (sleeps far longer than any timeout) while the others finish
// and return from main. Their exit handler waits the 3 s timeout for every rank to reach the
// end, then ends the job with MPI_Abort, which kills the sleeping rank: the job must end nonzero
// in seconds instead of waiting inside MPI_Finalize for ever.
int RunRankHang(int hang_rank) {
  setenv("ATTN_COLLECTIVE_TIMEOUT", "3", 1);
  std::unique_ptr<Communicator> comm = MpiWorldCommunicator(60.0);
  comm->Barrier();
  if (comm->rank() == hang_rank) {
    std::printf("rank %d: --hang-rank: sleeping for an hour\n", hang_rank);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
  return 0;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median wall time of one AllReduceSum, each repetition started together after a barrier.
int RunBench(int repeats) {
  std::unique_ptr<Communicator> comm = MpiWorldCommunicator(60.0);
  for (size_t n : {size_t{4096}, size_t{1} << 20}) {
    std::vector<float> data = SumInput(comm->rank(), n);
    std::vector<double> seconds;
    for (int i = -20; i < repeats; ++i) {
      comm->Barrier();
      const auto start = std::chrono::steady_clock::now();
      comm->AllReduceSum(data);
      if (i >= 0) seconds.push_back(SecondsSince(start));
    }
    // The slowest rank's time is the collective's.
    std::vector<double> slowest = seconds;
    for (size_t i = 0; i < seconds.size(); ++i) {
      const std::vector<float> one = {static_cast<float>(seconds[i])};
      std::vector<float> all(static_cast<size_t>(comm->world()));
      comm->AllGather(one, all);
      slowest[i] = *std::max_element(all.begin(), all.end());
    }
    if (comm->rank() == 0) {
      std::vector<double> sorted = slowest;
      std::sort(sorted.begin(), sorted.end());
      std::printf(
          "AllReduceSum %zu floats, world %d, %d repeats: median %.1f us (p10 %.1f, p90 "
          "%.1f)\n",
          n, comm->world(), repeats, Median(slowest) * 1e6, sorted[sorted.size() / 10] * 1e6,
          sorted[sorted.size() * 9 / 10] * 1e6);
    }
  }
  return 0;
}

}  // namespace
}  // namespace attn

int main(int argc, char** argv) {
  try {
    if (argc == 3 && std::string(argv[1]) == "--die-rank") {
      return attn::RunRankDeath(std::atoi(argv[2]));
    }
    if (argc == 3 && std::string(argv[1]) == "--hang-rank") {
      return attn::RunRankHang(std::atoi(argv[2]));
    }
    if (argc == 3 && std::string(argv[1]) == "--bench") {
      return attn::RunBench(std::max(1, std::atoi(argv[2])));
    }
    if (argc != 1) {
      std::fprintf(stderr, "usage: %s [--die-rank R | --hang-rank R | --bench REPEATS]\n", argv[0]);
      return 2;
    }
    return attn::RunAll();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "rank %d: %s\n", attn::g_rank, error.what());
    return 1;
  }
}
