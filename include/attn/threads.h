// SPDX-License-Identifier: Apache-2.0
// The worker threads kernels run on. One process-wide pool, sized to the machine's cores by
// default (ATTN_NUM_THREADS or SetNumThreads() override). Work is split into tasks that the
// calling thread and the workers take from a shared counter.
#ifndef ATTN_THREADS_H_
#define ATTN_THREADS_H_

#include <cstdint>
#include <functional>

namespace attn {

// Threads ParallelFor uses, the caller included.
int NumThreads();
// Sets the thread count (>= 1); throws Error(kInvalidArgument) otherwise. Not to be called while
// a ParallelFor runs.
void SetNumThreads(int threads);

// Runs fn(task, thread) for every task in [0, tasks) and returns when all are done; `thread`
// lies in [0, NumThreads()) and is unique among the threads serving this call (it can index a
// workspace owned by this call; shared scratch should be thread_local instead). The first
// exception thrown by fn is rethrown here.
// Calls from inside fn, or from a second application thread while the pool is busy, run on
// the calling thread alone (correct, just not parallel).
void ParallelFor(int64_t tasks, const std::function<void(int64_t task, int thread)>& fn);

}  // namespace attn

#endif  // ATTN_THREADS_H_
