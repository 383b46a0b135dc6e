// SPDX-License-Identifier: Apache-2.0
// `--parallel tp|dp|cp`: one layer split across the ranks that mpirun started
// (docs/distributed.md). The one place the CLI meets MPI: `attn forward` and `attn bench layer`
// ask here for the communicator, the split layer, and whether this rank writes the output.
#ifndef ATTN_CLI_PARALLEL_FLAGS_H_
#define ATTN_CLI_PARALLEL_FLAGS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "attn/checkpoint.h"
#include "attn/communicator.h"
#include "attn/layer.h"
#include "attn/parallel.h"
#include "cli/flags.h"

namespace attn::cli {

// Declares --parallel and --comm-timeout.
void AddParallelFlags(Flags& flags);

// One process's part of a run: without --parallel a group of one.
struct ParallelRun {
  std::optional<ParallelMode> mode;
  std::shared_ptr<Communicator> comm;
  bool writes_output() const { return comm->rank() == 0; }
};

// Starts the communicator --parallel asks for. Throws Error(kInvalidArgument) when --parallel
// is given but the process was not launched by mpirun (or attn was built without MPI).
ParallelRun StartParallel(const Flags& flags);

// Runs `step` on every rank; if it throws attn::Error on any rank, every rank throws: the
// failing rank its own error, the others Error(kCommunication) naming the failed rank and its
// message. So no rank goes on into a collective that a failed peer will never join.
void RunOnEveryRank(const ParallelRun& run, const std::function<void()>& step);

// The layer of `checkpoint` this rank runs: the whole layer without --parallel; under tp only
// this rank's heads (a sharded load of only its slice), under dp and cp the whole layer wrapped
// so that its steps communicate. Ranks that disagree on the config fail on every rank.
std::unique_ptr<AttentionLayer> BuildLayerForRun(const ParallelRun& run,
                                                 const Checkpoint& checkpoint,
                                                 const ModelConfig& config, int64_t layer);

}  // namespace attn::cli

#endif  // ATTN_CLI_PARALLEL_FLAGS_H_
