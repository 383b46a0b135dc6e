// SPDX-License-Identifier: Apache-2.0
// One rank's failure made every rank's, for the split layers (docs/distributed.md): a step that
// throws on one rank only (its own sequences, its own weights) would leave the other ranks
// waiting in the next collective until the group's timeout.
#ifndef ATTN_DIST_AGREEMENT_H_
#define ATTN_DIST_AGREEMENT_H_

#include <exception>
#include <string>

#include "attn/communicator.h"
#include "attn/error.h"

namespace attn::dist {

// Runs `action` on this rank, then agrees with every rank on whether any failed
// (AgreeOnFailure). The rank that failed rethrows its own error, unchanged in kind and message;
// every other rank throws Error(kCommunication) naming the first failed rank. Errors other than
// std::exception are not caught.
template <typename Action>
void RunAgreed(Communicator& comm, Action&& action) {
  std::exception_ptr own;
  std::string message;
  try {
    action();
  } catch (const std::exception& e) {
    own = std::current_exception();
    message = e.what();
  }
  if (own == nullptr) {
    AgreeOnFailure(comm, false, "");
    return;
  }
  try {
    AgreeOnFailure(comm, true, message);
  } catch (const Error&) {
    std::rethrow_exception(own);
  }
  std::rethrow_exception(own);
}

}  // namespace attn::dist

#endif  // ATTN_DIST_AGREEMENT_H_
