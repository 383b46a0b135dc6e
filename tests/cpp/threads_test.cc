// SPDX-License-Identifier: Apache-2.0
// The thread pool: every task runs exactly once with a valid thread index, across resizes;
// each thread serves a job with at least as many tasks as threads; exceptions reach the
// caller; nested calls run inline.
#include "attn/threads.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <stdexcept>
#include <vector>

#include "attn/error.h"

namespace attn {
namespace {

class ThreadsTest : public ::testing::Test {
 protected:
  void TearDown() override { SetNumThreads(saved_); }
  int saved_ = NumThreads();
};

TEST_F(ThreadsTest, EveryTaskRunsOnceAcrossResizes) {
  for (int threads : {3, 1, 2, 4, 2}) {
    SetNumThreads(threads);
    ASSERT_EQ(NumThreads(), threads);
    for (int64_t tasks : {0, 1, 2, 7, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(tasks));
      std::atomic<bool> bad_thread{false};
      ParallelFor(tasks, [&](int64_t task, int thread) {
        runs[static_cast<size_t>(task)].fetch_add(1);
        if (thread < 0 || thread >= threads) bad_thread = true;
      });
      for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(runs[static_cast<size_t>(t)].load(), 1);
      EXPECT_FALSE(bad_thread.load());
    }
  }
}

// With as many tasks as threads, each thread runs one (its own first task), whatever the
// timing: per-thread scratch is then warm after a single call.
TEST_F(ThreadsTest, EachThreadServesAJobWithEnoughTasks) {
  SetNumThreads(3);
  for (int repeat = 0; repeat < 50; ++repeat) {
    std::vector<std::atomic<int>> by_thread(3);
    ParallelFor(3, [&](int64_t, int thread) { by_thread[static_cast<size_t>(thread)]++; });
    for (auto& count : by_thread) ASSERT_EQ(count.load(), 1);
  }
}

TEST_F(ThreadsTest, ExceptionsReachTheCallerAndNestedCallsRunInline) {
  SetNumThreads(2);
  EXPECT_THROW(ParallelFor(10,
                           [](int64_t task, int) {
                             if (task == 7) throw std::runtime_error("task 7");
                           }),
               std::runtime_error);
  std::atomic<int> inner{0};
  ParallelFor(4, [&](int64_t, int) { ParallelFor(3, [&](int64_t, int) { inner++; }); });
  EXPECT_EQ(inner.load(), 12);
  EXPECT_THROW(SetNumThreads(0), Error);
}

}  // namespace
}  // namespace attn
