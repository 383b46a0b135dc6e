// SPDX-License-Identifier: Apache-2.0
// The Communicator over MPI (docs/distributed.md): one rank per process, started by mpirun.
// Built only when CMake finds MPI (option ATTN_WITH_MPI, target attn_mpi, which defines
// ATTN_HAVE_MPI=1 for what links it); libattn and the Python module never depend on MPI. This
// header does not include <mpi.h>, so callers need no MPI include path.
//
// Every collective is nonblocking underneath and polled against a deadline, so that a rank whose
// peer died, hangs or took a different path throws Error(kCommunication) instead of waiting
// forever. A communicator whose collective timed out is broken: that collective can never be
// cancelled (MPI has no way to), so every later call on it throws at once; make a new one to go
// on.
//
// Lifetime of MPI itself: initialised by the first MpiWorldCommunicator() call (unless something
// else initialised it already), finalised once at process exit by an atexit handler. That handler
// first waits, up to the longest timeout any communicator was made with, for every rank to reach
// exit too; only then does it call MPI_Finalize, which would otherwise block for as long as a peer
// is stuck. If the ranks do not all arrive in time it calls MPI_Abort, which ends the whole job
// with a nonzero exit status.
#ifndef ATTN_MPI_COMMUNICATOR_H_
#define ATTN_MPI_COMMUNICATOR_H_

#include <memory>

#include "attn/communicator.h"

namespace attn {

// A communicator over all ranks of the job (a private duplicate of MPI_COMM_WORLD, so its
// collectives never match anybody else's). Every rank must call it, the same number of times and
// in the same order. `timeout_seconds` bounds each collective; the environment variable
// ATTN_COLLECTIVE_TIMEOUT (seconds, > 0) overrides it (Error(kInvalidArgument) when it is not a
// positive number). Throws Error(kCommunication) when MPI fails or the ranks do not all join in
// time. Only the thread that made the first call may use MPI (MPI_THREAD_FUNNELED).
std::unique_ptr<Communicator> MpiWorldCommunicator(double timeout_seconds = 60.0);

// Whether this process was started by an MPI launcher (OpenMPI's mpirun sets
// OMPI_COMM_WORLD_SIZE; PMIx- and PMI-based launchers set PMIX_RANK or PMI_RANK). A process
// started on its own would silently become a world of one, so the CLI refuses --parallel then.
bool LaunchedByMpirun();

// Ends every rank of the job now with `exit_code` (MPI_Abort on the world), after flushing this
// process's stdio. The way out after Error(kCommunication): peers may be stuck in a collective
// that this rank will never join. Without MPI initialised it just exits with `exit_code`.
[[noreturn]] void MpiAbortAll(int exit_code);

}  // namespace attn

#endif  // ATTN_MPI_COMMUNICATOR_H_
