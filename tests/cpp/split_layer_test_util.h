// SPDX-License-Identifier: Apache-2.0
// Running one test body per rank of an InProcessGroup, one std::thread each, as mpirun would run
// one process per rank (tensor_parallel_test.cc, data_parallel_test.cc).
#ifndef ATTN_TESTS_SPLIT_LAYER_TEST_UTIL_H_
#define ATTN_TESTS_SPLIT_LAYER_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "attn/communicator.h"

namespace attn::testing {

using RankBody = std::function<void(int rank, std::shared_ptr<Communicator> comm)>;

// Runs `body` on every rank of a fresh group of `world` and returns what each rank threw (null
// where it returned). A short timeout: a rank that never joins a collective fails the test in
// seconds rather than hanging it.
inline std::vector<std::exception_ptr> RunRanksCollectingErrors(int world, const RankBody& body) {
  std::vector<std::unique_ptr<Communicator>> group = InProcessGroup(world, 20.0);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    std::shared_ptr<Communicator> comm = std::move(group[static_cast<size_t>(rank)]);
    threads.emplace_back([&body, &errors, rank, comm]() {
      try {
        body(rank, comm);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return errors;
}

// The same, failing the test with the message of any rank that threw.
inline void RunRanks(int world, const RankBody& body) {
  const std::vector<std::exception_ptr> errors = RunRanksCollectingErrors(world, body);
  for (size_t rank = 0; rank < errors.size(); ++rank) {
    if (errors[rank] == nullptr) continue;
    try {
      std::rethrow_exception(errors[rank]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << rank << " of " << world << " threw: " << e.what();
    }
  }
}

}  // namespace attn::testing

#endif  // ATTN_TESTS_SPLIT_LAYER_TEST_UTIL_H_
