// SPDX-License-Identifier: Apache-2.0
// The collectives a layer split across processes needs, behind one small interface
// (docs/distributed.md): MPI implements it today (src/dist/mpi_communicator.cc, built when
// OpenMPI is installed), an in-process group of threads implements it for tests, and an NCCL or
// torch.distributed implementation can slide in later without touching the layers.
//
// Every call is collective: all ranks of the group make the same calls in the same order with
// the same sizes. A rank that fails, disagrees or does not answer within the group's timeout
// makes the call throw Error(kCommunication) naming the collective, on every rank that is still
// running; nothing waits forever.
#ifndef ATTN_COMMUNICATOR_H_
#define ATTN_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace attn {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world() const = 0;
  // "single", "threads", "mpi": what `attn info`/errors print.
  virtual const char* name() const = 0;

  // data[i] <- Σ over ranks of data[i], on every rank. Summation order is the same on every
  // rank, so every rank ends with bit-identical values.
  virtual void AllReduceSum(std::span<float> data) = 0;
  // data[i] <- max over ranks of data[i], on every rank (-inf is the identity).
  virtual void AllReduceMax(std::span<float> data) = 0;
  // Every rank contributes `mine` (its own length); on return `all` holds rank 0's values, then
  // rank 1's, …; all.size() must equal the sum of every rank's mine.size() (callers know the
  // counts: they derive them from the same plan on every rank).
  virtual void AllGather(std::span<const float> mine, std::span<float> all) = 0;
  // Every rank's 64-bit value, in rank order (config agreement, error agreement, counts).
  virtual std::vector<int64_t> AllGatherInt(int64_t mine) = 0;
  // Every rank's text, in rank order (error messages).
  virtual std::vector<std::string> AllGatherText(const std::string& mine) = 0;
  virtual void Barrier() = 0;
};

// A group of one: every collective is the identity. What a layer uses when it is not split.
std::unique_ptr<Communicator> SingleProcessCommunicator();

// `world` communicators over shared memory, one per thread of one process (rank i is
// element i): for tests and sanitizer runs of the distributed code without mpirun. Each must be
// used by its own thread. A collective that not every rank joins within `timeout_seconds` throws
// Error(kCommunication) on the ranks that did.
std::vector<std::unique_ptr<Communicator>> InProcessGroup(int world, double timeout_seconds = 60.0);

// Every rank's `mine` must be equal: throws Error(kCommunication) on every rank, naming `what`
// and the ranks that differ, when one disagrees (a hash of a config, a flag, a shape).
void CheckRanksAgree(Communicator& comm, int64_t mine, const std::string& what);

// An error on one rank becomes an error on all: each rank passes whether its own step failed
// (and the message); if any rank failed, every rank throws Error(kCommunication) naming the
// first failed rank and its message (truncated), so no rank goes on into a collective its peer
// will never join.
void AgreeOnFailure(Communicator& comm, bool failed, const std::string& message);

}  // namespace attn

#endif  // ATTN_COMMUNICATOR_H_
