// A small fork-join pool: `run(n, fn)` calls fn(i, slot) for i in [0, n) on the calling thread
// plus the pool's workers, and returns when all are done. `slot` (0 .. size-1) is unique among
// the threads working on one call, for per-thread scratch memory.
//
// Several threads may call run() on one pool at once (each call is its own job; workers help
// whichever jobs are queued). A forward pass makes dozens of run() calls a few tens of
// microseconds apart, and waking a sleeping thread costs about as much, so workers (and a caller
// waiting for them) spin for up to ~50 µs before they block on a condition variable: an idle
// encoder burns no CPU, a busy one does not pay a wake-up per call.
#pragma once

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bort::encoder {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : size_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this] { work(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  template <class F>
  void run(int64_t n, F&& fn) {
    if (n <= 0) return;
    if (size_ == 1 || n == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i, 0);
      return;
    }
    auto job = std::make_shared<Job>();
    job->n = n;
    job->fn = [&fn](int64_t i, int slot) { fn(i, slot); };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(job);
      queued_.fetch_add(1, std::memory_order_release);
      if (sleepers_ > 0) wake_.notify_all();
    }
    help(*job);
    if (!spin_until([&] { return job->done.load(std::memory_order_acquire) == job->n; })) {
      std::unique_lock<std::mutex> lock(job->mutex);
      job->finished.wait(lock, [&] { return job->done.load() == job->n; });
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  struct Job {
    int64_t n = 0;
    std::function<void(int64_t, int)> fn;
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> slots{0};
    std::mutex mutex;  // guards error and the finished signal
    std::condition_variable finished;
    std::exception_ptr error;
  };

  template <class Pred>
  static bool spin_until(Pred ready) {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (int i = 0;; ++i) {
      if (ready()) return true;
      _mm_pause();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > limit) return false;
    }
  }

  void help(Job& job) {
    const int slot = job.slots.fetch_add(1);
    int64_t mine = 0;
    std::exception_ptr error;
    for (int64_t i; (i = job.next.fetch_add(1)) < job.n;) {
      try {
        job.fn(i, slot);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
      ++mine;
    }
    if (mine == 0) return;
    std::lock_guard<std::mutex> lock(job.mutex);
    if (error && !job.error) job.error = error;
    if (job.done.fetch_add(mine, std::memory_order_acq_rel) + mine == job.n)
      job.finished.notify_all();
  }

  // The next job this worker can help with, or null when the pool stops.
  std::shared_ptr<Job> take() {
    spin_until([&] { return queued_.load(std::memory_order_acquire) > 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      while (!queue_.empty()) {
        std::shared_ptr<Job> job = queue_.front();
        if (job->next.load() < job->n && job->slots.load() < size_) return job;
        queue_.pop_front();  // every index handed out: its owner waits for completion
        queued_.fetch_sub(1, std::memory_order_release);
      }
      if (stop_) return nullptr;
      ++sleepers_;
      wake_.wait(lock);
      --sleepers_;
    }
  }

  void work() {
    while (std::shared_ptr<Job> job = take()) help(*job);
  }

  int size_;
  std::vector<std::thread> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::atomic<int> queued_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  int sleepers_ = 0;  // guarded by mutex_
  bool stop_ = false;
};

}  // namespace bort::encoder
