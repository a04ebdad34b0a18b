// Host emulation of the surm_ops._C kernels: runs the very algorithms the CUDA kernels run (csrc/conv/block_conv.h,
// csrc/fft/stockham.h) with a sequential HostExec standing in for a thread block, over every block of the grid the
// launcher would use (csrc/conv/config.h). Driven by tests/csrc/test_host_emulation.py through binary files.
//
//   emulate plan N...                                   -> one line per N: "N stages r1 r2 ..."
//   emulate config rows p q L in_len out_len smem_limit -> the launch numbers, "key value" per line
//   emulate fft N batches order in out                  -> forward FFT of batches * N complex values
//   emulate forward order in out                        -> y of conv_forward
//   emulate grad order smem_limit in out                -> partials of conv_grad_spectrum
//   emulate once threads rounds devices                 -> how often each (kernel, device) setup ran, from
//                                                          `threads` threads each launching every kernel on every
//                                                          device `rounds` times (csrc/common/once.h)
// order: 0 runs the emulated threads in increasing order, 1 in decreasing order (a result that depends on it
// reveals a read of a value another thread writes in the same phase, i.e. a missing barrier).
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/exec.h"
#include "common/once.h"
#include "conv/block_conv.h"
#include "conv/config.h"

using namespace surm;

namespace {

struct HostExec {
  int nthreads;
  bool reverse;

  int thread(int i) const { return reverse ? nthreads - 1 - i : i; }

  template <class F>
  void for_each(int total, F f) const {
    for (int i = 0; i < nthreads; ++i)
      for (int o = thread(i); o < total; o += nthreads) f(o);
  }

  template <class Compute, class Commit>
  void staged(int total, Compute compute, Commit commit) const {
    if (total > kStagedPerThread * nthreads)  // the device version would silently skip elements
      throw std::runtime_error("staged phase of " + std::to_string(total) + " elements exceeds " +
                               std::to_string(kStagedPerThread) + " per thread x " + std::to_string(nthreads));
    std::vector<cplx> v(total);
    for (int i = 0; i < nthreads; ++i)
      for (int o = thread(i); o < total; o += nthreads) v[o] = compute(o);
    for (int i = 0; i < nthreads; ++i)
      for (int o = thread(i); o < total; o += nthreads) commit(o, v[o]);
  }
};

template <class T>
std::vector<T> read_values(FILE* f, size_t count) {
  std::vector<T> v(count);
  if (count && std::fread(v.data(), sizeof(T), count, f) != count) throw std::runtime_error("short input file");
  return v;
}

template <class T>
void write_values(const char* path, const std::vector<T>& v) {
  FILE* f = std::fopen(path, "wb");
  if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) throw std::runtime_error("cannot write output");
  std::fclose(f);
}

FftPlan checked_plan(int n) {
  const FftPlan plan = make_plan(n);
  if (plan.stages < 0) throw std::runtime_error("unsupported length " + std::to_string(n));
  return plan;
}

// Header of the forward and grad inputs: rows p q L in_len out_len (int64 each).
struct Header {
  int64_t rows;
  ConvShape sh;
};

Header read_header(FILE* f) {
  const auto h = read_values<int64_t>(f, 6);
  return Header{h[0], ConvShape{int(h[1]), int(h[2]), int(h[3]), int(h[4]), int(h[5])}};
}

int run_forward(bool reverse, const char* in, const char* out) {
  FILE* f = std::fopen(in, "rb");
  if (!f) throw std::runtime_error("cannot open input");
  const Header h = read_header(f);
  const ConvShape& sh = h.sh;
  const int64_t in_stride = int64_t(sh.q) * sh.in_len, out_stride = int64_t(sh.p) * sh.out_len;
  const auto x = read_values<float>(f, h.rows * in_stride);
  const auto spec = read_values<cplx>(f, size_t(sh.p) * sh.q * sh.length);
  std::fclose(f);
  if (forward_buffer(sh) > kMaxBuffer) throw std::runtime_error("buffer limit");
  const FftPlan plan = checked_plan(sh.length);
  const HostExec ex{threads_for(forward_buffer(sh)), reverse};
  std::vector<float> y(h.rows * out_stride, std::numeric_limits<float>::quiet_NaN());
  std::vector<cplx> smem(forward_smem(sh) / sizeof(cplx));
  for (int64_t block = 0; block < (h.rows + 1) / 2; ++block) {
    for (auto& c : smem) c = cplx{std::numeric_limits<float>::quiet_NaN(), 0.f};  // stale data must not matter
    forward_block(
        ex, smem.data(), block, h.rows, sh, plan, spec.data(),
        [&](int64_t row, int col) { return x.at(row * in_stride + col); },
        [&](int64_t row, int col, float v) { y.at(row * out_stride + col) = v; });
  }
  write_values(out, y);
  return 0;
}

int run_grad(bool reverse, int64_t smem_limit, const char* in, const char* out) {
  FILE* f = std::fopen(in, "rb");
  if (!f) throw std::runtime_error("cannot open input");
  const Header h = read_header(f);
  const ConvShape& sh = h.sh;
  const int64_t in_stride = int64_t(sh.q) * sh.in_len, out_stride = int64_t(sh.p) * sh.out_len;
  const auto x = read_values<float>(f, h.rows * in_stride);
  const auto g = read_values<float>(f, h.rows * out_stride);
  std::fclose(f);
  const FftPlan plan = checked_plan(sh.length);
  const int pt = grad_tile(sh, smem_limit);
  if (pt < 1) throw std::runtime_error("no gradient tile fits");
  const Chunks chunks = grad_chunks(h.rows, sh);
  const int F = half_spectrum(sh.length);
  const HostExec ex{threads_for(grad_buffer(sh, pt)), reverse};
  std::vector<cplx> partials(chunks.chunks * sh.p * sh.q * F, cplx{std::numeric_limits<float>::quiet_NaN(), 0.f});
  std::vector<cplx> smem(grad_smem(sh, pt) / sizeof(cplx));
  for (int64_t chunk = 0; chunk < chunks.chunks; ++chunk)
    for (int tile = 0; tile < (sh.p + pt - 1) / pt; ++tile) {
      for (auto& c : smem) c = cplx{std::numeric_limits<float>::quiet_NaN(), 0.f};
      grad_block(
          ex, smem.data(), chunk, tile, h.rows, sh, plan, pt, chunks.pairs_per_chunk,
          [&](int64_t row, int col) { return x.at(row * in_stride + col); },
          [&](int64_t row, int col) { return g.at(row * out_stride + col); }, partials.data());
    }
  write_values(out, partials);
  std::printf("chunks %lld\ntile %d\n", static_cast<long long>(chunks.chunks), pt);
  return 0;
}

int run_fft(int n, int batches, bool reverse, const char* in, const char* out) {
  FILE* f = std::fopen(in, "rb");
  if (!f) throw std::runtime_error("cannot open input");
  auto data = read_values<cplx>(f, size_t(n) * batches);
  std::fclose(f);
  const FftPlan plan = checked_plan(n);
  const HostExec ex{threads_for(int64_t(n) * batches), reverse};
  std::vector<cplx> table(twiddle_entries(n));
  init_twiddles(ex, table.data(), n, twiddle_hi_entries(n));
  fft_inplace(ex, data.data(), batches, plan, table.data(), twiddle_hi_entries(n));
  write_values(out, data);
  return 0;
}

int run_config(char** a) {
  const int64_t rows = std::atoll(a[0]), limit = std::atoll(a[6]);
  const ConvShape sh{std::atoi(a[1]), std::atoi(a[2]), std::atoi(a[3]), std::atoi(a[4]), std::atoi(a[5])};
  const int pt = grad_tile(sh, limit);
  const Chunks c = grad_chunks(rows, sh);
  std::printf("plan_ok %d\nforward_buffer %lld\nforward_smem %lld\nforward_threads %d\ngrad_tile %d\n",
              make_plan(sh.length).stages >= 0 ? 1 : 0, static_cast<long long>(forward_buffer(sh)),
              static_cast<long long>(forward_smem(sh)), threads_for(forward_buffer(sh)), pt);
  std::printf("grad_smem_1 %lld\ngrad_buffer_1 %lld\nchunks %lld\npairs_per_chunk %lld\nmax_buffer %d\n",
              static_cast<long long>(grad_smem(sh, 1)), static_cast<long long>(grad_buffer(sh, 1)),
              static_cast<long long>(c.chunks), static_cast<long long>(c.pairs_per_chunk), kMaxBuffer);
  return 0;
}

// Stand-ins for two kernels of different signatures, as conv_kernels.cu has; only their addresses are used.
void kernel_a(const float*, float*) {}
void kernel_b(const float*, const float*, double*) {}

// The launchers' pattern (allow_smem in conv_kernels.cu) from many threads at once: every (kernel, device) pair
// must be set up exactly once, and a setup that fails once must be retried by the next launch.
int run_once(int threads, int rounds, int devices) {
  const void* kernels[2] = {reinterpret_cast<const void*>(&kernel_a), reinterpret_cast<const void*>(&kernel_b)};
  std::vector<std::atomic<int>> runs(2 * devices);
  std::atomic<int> failing_attempts{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int r = 0; r < rounds; ++r)
        for (int d = 0; d < devices; ++d)
          for (int k = 0; k < 2; ++k) kernel_setup().run(kernels[k], d, [&] { ++runs[k * devices + d]; });
    });
  }
  for (auto& th : pool) th.join();
  // A setup that throws (a failed cudaFuncSetAttribute) is not recorded as done.
  const void* key = reinterpret_cast<const void*>(&run_once);
  for (int attempt = 0; attempt < 3; ++attempt) {
    try {
      kernel_setup().run(key, 0, [&] {
        if (++failing_attempts == 1) throw std::runtime_error("first setup fails");
      });
    } catch (const std::runtime_error&) {
    }
  }
  for (int k = 0; k < 2; ++k)
    for (int d = 0; d < devices; ++d) std::printf("kernel%d device%d %d\n", k, d, runs[k * devices + d].load());
  std::printf("failing_setup_attempts %d\n", failing_attempts.load());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "plan") {
      for (int i = 2; i < argc; ++i) {
        const FftPlan plan = make_plan(std::atoi(argv[i]));
        std::printf("%d %d", plan.n, plan.stages);
        for (int s = 0; s < plan.stages; ++s) std::printf(" %d", plan.radix[s]);
        std::printf("\n");
      }
      return 0;
    }
    if (mode == "config" && argc == 9) return run_config(argv + 2);
    if (mode == "fft" && argc == 7)
      return run_fft(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]) != 0, argv[5], argv[6]);
    if (mode == "forward" && argc == 5) return run_forward(std::atoi(argv[2]) != 0, argv[3], argv[4]);
    if (mode == "once" && argc == 5) return run_once(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
    if (mode == "grad" && argc == 6) return run_grad(std::atoi(argv[2]) != 0, std::atoll(argv[3]), argv[4], argv[5]);
    std::fprintf(stderr, "usage: see the comment at the top of emulate.cpp\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emulate: %s\n", e.what());
    return 1;
  }
}
