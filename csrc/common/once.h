// One-time setup per (kernel, device): cudaFuncSetAttribute applies to one kernel on the current device only, so
// it must run again for each device a kernel is launched on, and need not run again on the same one. Host-only and
// free of CUDA, so tests/csrc/host/emulate.cpp checks it with real threads.
#pragma once

#include <mutex>
#include <set>
#include <utility>

namespace surm {

class OncePerDevice {
 public:
  // Calls setup() unless an earlier call for (key, device) returned normally. Thread-safe: concurrent callers for
  // the same pair wait for the first. A setup that throws is not recorded, so the next call tries again.
  template <class Setup>
  void run(const void* key, int device, Setup&& setup) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (done_.count({key, device}) != 0) return;
    setup();
    done_.insert({key, device});
  }

 private:
  std::mutex mutex_;
  std::set<std::pair<const void*, int>> done_;
};

// The registry every kernel launcher's one-time setup goes through (one per process, as the CUDA context is).
inline OncePerDevice& kernel_setup() {
  static OncePerDevice registry;
  return registry;
}

}  // namespace surm
