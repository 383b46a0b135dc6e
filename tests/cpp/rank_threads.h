// SPDX-License-Identifier: Apache-2.0
// Runs one function per rank of an InProcessGroup, each on its own thread, and returns what
// each rank threw (tests of the split layers without mpirun; docs/distributed.md).
#ifndef ATTN_TESTS_RANK_THREADS_H_
#define ATTN_TESTS_RANK_THREADS_H_

#include <exception>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "attn/communicator.h"

namespace attn::testing {

// fn(comm) on `world` threads; element r of the result is rank r's exception (null: none).
inline std::vector<std::exception_ptr> RunOnRanks(
    int world, const std::function<void(std::shared_ptr<Communicator>)>& fn,
    double timeout_seconds = 30.0) {
  std::vector<std::unique_ptr<Communicator>> group = InProcessGroup(world, timeout_seconds);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    std::shared_ptr<Communicator> comm = std::move(group[static_cast<size_t>(r)]);
    threads.emplace_back([&errors, &fn, comm, r] {
      try {
        fn(comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return errors;
}

// Rethrows the first rank's exception, if any (for tests where no rank may fail).
inline void RethrowFirst(const std::vector<std::exception_ptr>& errors) {
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace attn::testing

#endif  // ATTN_TESTS_RANK_THREADS_H_
