// SPDX-License-Identifier: Apache-2.0
// One test body per rank of an InProcessGroup (rank_threads.h), as mpirun would run one process
// per rank, for tensor_parallel_test.cc and data_parallel_test.cc.
#ifndef ATTN_TESTS_SPLIT_LAYER_TEST_UTIL_H_
#define ATTN_TESTS_SPLIT_LAYER_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "attn/communicator.h"
#include "rank_threads.h"

namespace attn::testing {

using RankBody = std::function<void(int rank, std::shared_ptr<Communicator> comm)>;

// body(rank, comm) on every rank of a fresh group of `world`; what each rank threw (null where
// it returned). A short timeout: a rank that never joins a collective fails the test in seconds.
inline std::vector<std::exception_ptr> RunRanksCollectingErrors(int world, const RankBody& body) {
  return RunOnRanks(
      world, [&body](std::shared_ptr<Communicator> comm) { body(comm->rank(), comm); }, 20.0);
}

// The same, failing the test with the message of every rank that threw.
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
