// SPDX-License-Identifier: Apache-2.0
// The in-process communicator group and the agreement helpers (include/attn/communicator.h):
// results against sums computed here, bit-identical across ranks, and failures that reach
// every rank instead of leaving one waiting.
#include "attn/communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "attn/error.h"
#include "rank_threads.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::RethrowFirst;
using testing::RunOnRanks;

// A value no two ranks or indices share, with a fractional part so that the order of the
// float sum matters.
float Value(int rank, size_t i) { return 0.1f * static_cast<float>(rank + 1) + 1e-3f * i; }

TEST(CommunicatorTest, SingleProcessIsTheIdentity) {
  std::unique_ptr<Communicator> comm = SingleProcessCommunicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world(), 1);
  std::vector<float> data = {1.5f, -2.0f};
  comm->AllReduceSum(data);
  comm->AllReduceMax(data);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f}));
  std::vector<float> all(2);
  comm->AllGather(data, all);
  EXPECT_EQ(all, data);
  EXPECT_EQ(comm->AllGatherInt(7), std::vector<int64_t>{7});
  std::vector<float> wrong(3);
  testing::ExpectError([&] { comm->AllGather(data, wrong); }, ErrorKind::kCommunication,
                       {"all-gather", "3"});
}

TEST(CommunicatorTest, AllReduceSumsInRankOrderOnEveryRank) {
  for (const int world : {1, 2, 3, 4}) {
    std::vector<std::vector<float>> results(static_cast<size_t>(world));
    RethrowFirst(RunOnRanks(world, [&](std::shared_ptr<Communicator> comm) {
      std::vector<float> data(1000);
      for (size_t i = 0; i < data.size(); ++i) data[i] = Value(comm->rank(), i);
      comm->AllReduceSum(data);
      results[static_cast<size_t>(comm->rank())] = data;
    }));
    for (size_t i = 0; i < 1000; ++i) {
      float expected = 0.0f;
      for (int r = 0; r < world; ++r) expected += Value(r, i);
      EXPECT_EQ(results[0][i], expected) << "world " << world << " index " << i;
    }
    for (int r = 1; r < world; ++r) EXPECT_EQ(results[static_cast<size_t>(r)], results[0]);
  }
}

TEST(CommunicatorTest, AllReduceMaxTreatsMinusInfinityAsEmpty) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> results(3);
  RethrowFirst(RunOnRanks(3, [&](std::shared_ptr<Communicator> comm) {
    const int r = comm->rank();
    std::vector<float> data = {static_cast<float>(r), -inf, r == 1 ? 5.0f : -inf};
    comm->AllReduceMax(data);
    results[static_cast<size_t>(r)] = data;
  }));
  for (const std::vector<float>& result : results) {
    EXPECT_EQ(result, (std::vector<float>{2.0f, -inf, 5.0f}));
  }
}

TEST(CommunicatorTest, AllGatherConcatenatesUnequalPartsInRankOrder) {
  const int world = 4;
  std::vector<std::vector<float>> results(world);
  RethrowFirst(RunOnRanks(world, [&](std::shared_ptr<Communicator> comm) {
    const int r = comm->rank();
    std::vector<float> mine(static_cast<size_t>(r));  // rank 0 sends nothing
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = Value(r, i);
    std::vector<float> all(0 + 1 + 2 + 3);
    comm->AllGather(mine, all);
    results[static_cast<size_t>(r)] = all;
  }));
  const std::vector<float> expected = {Value(1, 0), Value(2, 0), Value(2, 1),
                                       Value(3, 0), Value(3, 1), Value(3, 2)};
  for (const std::vector<float>& result : results) EXPECT_EQ(result, expected);
}

TEST(CommunicatorTest, AllGatherOfIntegersAndText) {
  std::vector<std::vector<int64_t>> ints(3);
  std::vector<std::vector<std::string>> texts(3);
  RethrowFirst(RunOnRanks(3, [&](std::shared_ptr<Communicator> comm) {
    const int r = comm->rank();
    ints[static_cast<size_t>(r)] = comm->AllGatherInt(10 * r - 1);
    texts[static_cast<size_t>(r)] = comm->AllGatherText(std::string(static_cast<size_t>(r), 'x'));
    comm->Barrier();
  }));
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(ints[static_cast<size_t>(r)], (std::vector<int64_t>{-1, 9, 19}));
    EXPECT_EQ(texts[static_cast<size_t>(r)], (std::vector<std::string>{"", "x", "xx"}));
  }
}

TEST(CommunicatorTest, MismatchedSizesFailOnEveryRank) {
  const auto errors = RunOnRanks(2, [](std::shared_ptr<Communicator> comm) {
    std::vector<float> data(comm->rank() == 0 ? 4 : 5);
    comm->AllReduceSum(data);
  });
  for (const std::exception_ptr& error : errors) {
    testing::ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                         {"all-reduce(sum)", "different sizes"});
  }
  const auto gather_errors = RunOnRanks(2, [](std::shared_ptr<Communicator> comm) {
    std::vector<float> mine(2);
    std::vector<float> all(comm->rank() == 0 ? 4 : 3);
    comm->AllGather(mine, all);
  });
  for (const std::exception_ptr& error : gather_errors) {
    testing::ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                         {"all-gather"});
  }
}

TEST(CommunicatorTest, RanksOnDifferentCollectivesFailOnEveryRank) {
  const auto errors = RunOnRanks(2, [](std::shared_ptr<Communicator> comm) {
    std::vector<float> data(4);
    if (comm->rank() == 0) {
      comm->AllReduceSum(data);
    } else {
      comm->AllReduceMax(data);
    }
  });
  for (const std::exception_ptr& error : errors) {
    testing::ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                         {"all-reduce(sum)", "all-reduce(max)"});
  }
}

TEST(CommunicatorTest, ARankThatNeverJoinsTimesOutTheOthersAndTheGroupStaysBroken) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> messages(3);
  const auto errors = RunOnRanks(
      3,
      [&](std::shared_ptr<Communicator> comm) {
        std::vector<float> data(8);
        if (comm->rank() == 2) {
          // This rank "dies" before the collective, then comes back late: it must not wait.
          std::this_thread::sleep_for(std::chrono::milliseconds(600));
        } else {
          comm->AllReduceSum(data);
        }
        comm->Barrier();
      },
      /*timeout_seconds=*/0.3);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " did not fail";
    testing::ExpectError([&] { std::rethrow_exception(errors[static_cast<size_t>(r)]); },
                         ErrorKind::kCommunication, {"timed out", "never joined"});
  }
}

TEST(CommunicatorTest, CheckRanksAgreeNamesTheRanksThatDiffer) {
  RethrowFirst(RunOnRanks(
      3, [](std::shared_ptr<Communicator> comm) { CheckRanksAgree(*comm, 42, "the config"); }));
  const auto errors = RunOnRanks(3, [](std::shared_ptr<Communicator> comm) {
    CheckRanksAgree(*comm, comm->rank() == 2 ? 43 : 42, "the config");
  });
  for (const std::exception_ptr& error : errors) {
    testing::ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                         {"disagree on the config", "rank(s) 2"});
  }
}

TEST(CommunicatorTest, AgreeOnFailureTurnsOneRanksErrorIntoEveryRanks) {
  RethrowFirst(RunOnRanks(2, [](std::shared_ptr<Communicator> comm) {
    AgreeOnFailure(*comm, false, "");
    comm->Barrier();  // still usable after a round with no failure
  }));
  const auto errors = RunOnRanks(4, [](std::shared_ptr<Communicator> comm) {
    AgreeOnFailure(*comm, comm->rank() >= 2, "cache full on rank " + std::to_string(comm->rank()));
  });
  for (const std::exception_ptr& error : errors) {
    testing::ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                         {"rank 2 of 4 failed", "cache full on rank 2"});
  }
}

}  // namespace
}  // namespace attn
