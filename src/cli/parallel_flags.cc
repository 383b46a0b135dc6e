// SPDX-License-Identifier: Apache-2.0
#include "cli/parallel_flags.h"

#include <functional>
#include <string>

#include "attn/context_parallel.h"
#include "attn/error.h"
#include "attn/layer_weights.h"
#include "attn/megatron.h"
#include "dist/agreement.h"
#ifdef ATTN_HAVE_MPI
#include "attn/mpi_communicator.h"
#endif

namespace attn::cli {

void AddParallelFlags(Flags& flags) {
  flags
      .Text("parallel", "MODE",
            "split the layer across the ranks mpirun started: tp (heads), dp (sequences) or cp "
            "(each sequence's keys); see docs/distributed.md")
      .Integer("comm-timeout", "SECONDS",
               "with --parallel: a collective that a peer rank does not join within this time "
               "fails on every rank still running",
               "120");
}

ParallelRun StartParallel(const Flags& flags) {
  ParallelRun run;
  if (!flags.Has("parallel")) {
    run.comm = SingleProcessCommunicator();
    return run;
  }
  run.mode = ParallelModeFromString(flags.Get("parallel"));
  const int64_t timeout = flags.GetInt("comm-timeout");
  Check(timeout > 0, ErrorKind::kInvalidArgument,
        "--comm-timeout: expected a positive number of seconds, got " + std::to_string(timeout));
#ifdef ATTN_HAVE_MPI
  Check(LaunchedByMpirun(), ErrorKind::kInvalidArgument,
        "--parallel needs ranks: launch with mpirun, e.g. 'mpirun -np 2 attn forward --parallel " +
            flags.Get("parallel") + " …' (docs/distributed.md)");
  run.comm = MpiWorldCommunicator(static_cast<double>(timeout));
#else
  throw Error(ErrorKind::kInvalidArgument,
              "--parallel: this attn was built without MPI (install libopenmpi-dev and rebuild; "
              "docs/distributed.md)");
#endif
  return run;
}

void RunOnEveryRank(const ParallelRun& run, const std::function<void()>& step) {
  if (!run.mode) {
    step();
    return;
  }
  dist::RunAgreed(*run.comm, step);
}

std::unique_ptr<AttentionLayer> BuildLayerForRun(const ParallelRun& run,
                                                 const Checkpoint& checkpoint,
                                                 const ModelConfig& config, int64_t layer) {
  if (!run.mode) {
    return BuildAttentionLayer(config, layer,
                               LoadAttentionWeightsAnyFormat(checkpoint, config, layer));
  }
  CheckRanksAgree(*run.comm, ModelConfigHash(config), "the model config");
  CheckRanksAgree(*run.comm, layer, "--layer");
  // Loading touches only this rank's files and memory, so it runs under RunOnEveryRank: a rank
  // that cannot read its slice fails every rank here, before any step's collective.
  const Shard shard{run.comm->rank(), run.comm->world()};
  NamedWeights weights;
  RunOnEveryRank(run, [&] {
    weights = *run.mode == ParallelMode::kTensor
                  ? LoadAttentionWeightShard(checkpoint, config, layer, shard)
                  : LoadAttentionWeightsAnyFormat(checkpoint, config, layer);
  });
  switch (*run.mode) {
    case ParallelMode::kTensor:
      return MakeTensorParallelLayer(config, layer, std::move(weights), run.comm);
    case ParallelMode::kData:
      return MakeDataParallelLayer(BuildAttentionLayer(config, layer, std::move(weights)),
                                   run.comm);
    case ParallelMode::kContext:
      return MakeContextParallelLayer(BuildAttentionLayer(config, layer, std::move(weights)),
                                      run.comm);
  }
  return nullptr;
}

}  // namespace attn::cli
