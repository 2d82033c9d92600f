// A small fork-join pool: `run(n, fn)` calls fn(i, slot) for i in [0, n) on the calling thread
// plus the pool's workers, and returns when all are done. `slot` (0 .. size-1) is unique among
// the threads working on one call, for per-thread scratch memory.
//
// Several threads may call run() on one pool at once (each call is its own job; workers help
// whichever jobs are queued). Idle workers sleep on a condition variable: an idle encoder burns
// no CPU.
#pragma once

#include <atomic>
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
    }
    wake_.notify_all();
    help(*job);
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, [&] { return job->done == job->n; });
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  struct Job {
    int64_t n = 0;
    std::function<void(int64_t, int)> fn;
    std::atomic<int64_t> next{0};
    std::atomic<int> slots{0};
    std::mutex mutex;
    std::condition_variable finished;
    int64_t done = 0;  // guarded by mutex
    std::exception_ptr error;
  };

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
    if (mine == 0 && !error) return;
    std::lock_guard<std::mutex> lock(job.mutex);
    if (error && !job.error) job.error = error;
    job.done += mine;
    if (job.done == job.n) job.finished.notify_all();
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      std::shared_ptr<Job> job = queue_.front();
      // A job with every index handed out leaves the queue; its owner waits for completion.
      if (job->next.load() >= job->n || job->slots.load() >= size_) {
        queue_.pop_front();
        continue;
      }
      lock.unlock();
      help(*job);
      lock.lock();
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
};

}  // namespace bort::encoder
