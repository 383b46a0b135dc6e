// SPDX-License-Identifier: Apache-2.0
#include "attn/threads.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "attn/error.h"

namespace attn {
namespace {

int DefaultThreadCount() {
  if (const char* env = std::getenv("ATTN_NUM_THREADS")) {
    const int requested = std::atoi(env);
    if (requested >= 1) return requested;
  }
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware == 0 ? 1 : static_cast<int>(hardware);
}

// Workers sleep on a condition variable between jobs; a job is (fn, task count, counter).
class ThreadPool {
 public:
  explicit ThreadPool(int threads) { Resize(threads); }
  ~ThreadPool() { Stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void Resize(int threads) {
    Stop();
    stopping_ = false;
    // New workers wait for the next job, not the last one (generation_ survives a resize).
    const uint64_t current = generation_;
    for (int i = 1; i < threads; ++i) {
      workers_.emplace_back([this, i, current] { WorkerLoop(i, current); });
    }
  }

  // Returns false (without running anything) when another job holds the pool.
  bool TryRun(int64_t tasks, const std::function<void(int64_t, int)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      tasks_ = tasks;
      next_task_.store(size());  // tasks below size() are the threads' own first tasks
      error_ = nullptr;
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    Work(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
  }

  void WorkerLoop(int thread, uint64_t seen) {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      Work(thread);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  // Thread i first runs task i, then takes tasks from the shared counter. Every thread thus
  // serves every job with at least as many tasks as threads, so per-thread scratch is warm
  // after one such job (decode steps then allocate nothing), and the rest balances itself.
  void Work(int thread) {
    inside_pool_ = true;
    if (thread < tasks_) Run(thread, thread);
    for (int64_t task = next_task_.fetch_add(1); task < tasks_; task = next_task_.fetch_add(1)) {
      Run(task, thread);
    }
    inside_pool_ = false;
  }

  void Run(int64_t task, int thread) {
    try {
      (*job_)(task, thread);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

 public:
  static thread_local bool inside_pool_;

 private:
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

thread_local bool ThreadPool::inside_pool_ = false;

ThreadPool& Pool() {
  static ThreadPool pool(DefaultThreadCount());
  return pool;
}

}  // namespace

int NumThreads() { return Pool().size(); }

void SetNumThreads(int threads) {
  Check(threads >= 1, ErrorKind::kInvalidArgument,
        "thread count must be >= 1, got " + std::to_string(threads));
  if (threads != Pool().size()) Pool().Resize(threads);
}

void ParallelFor(int64_t tasks, const std::function<void(int64_t task, int thread)>& fn) {
  if (tasks <= 0) return;
  if (tasks == 1 || ThreadPool::inside_pool_ || Pool().size() == 1 || !Pool().TryRun(tasks, fn)) {
    for (int64_t task = 0; task < tasks; ++task) fn(task, 0);
  }
}

}  // namespace attn
