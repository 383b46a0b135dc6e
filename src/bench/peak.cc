// SPDX-License-Identifier: Apache-2.0
#include "bench/peak.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "attn/error.h"
#include "bench/kernel_case.h"
#include "io/files.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ATTN_PEAK_X86 1
#endif

namespace attn::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Independent accumulator chains per loop: more than FMA latency × FMA ports (4 × 2 on current
// x86 cores), so the loop is bound by throughput, not by waiting on its own results.
#define ATTN_REPEAT8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ATTN_REPEAT12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
constexpr int kChains = 12;
// The DRAM loops' unit: 64 doubles, one step of the widest read loop (8 accumulators × 8 lanes).
constexpr int64_t kReadBlock = 64;
constexpr double kTriadScalar = 3.0;  // STREAM's

// Every loop below is compiled for its ISA alone (target attribute) and only called after the
// runtime check says the CPU has it, so the binary still runs on any x86-64.
#ifdef ATTN_PEAK_X86
// Horizontal sum through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized (its
// _mm512_undefined_* helpers) when the ISA comes from a target attribute.
__attribute__((target("avx512f"))) float SumLanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

// acc = acc·a + b converges to b / (1 − a) and never reaches a subnormal or an infinity, both
// of which could slow the FMA units down.
__attribute__((target("avx512f"))) float Fp32LoopAvx512(int64_t iterations) {
  const __m512 a = _mm512_set1_ps(0.999f);
  const __m512 b = _mm512_set1_ps(0.001f);
#define DECLARE(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm512_fmadd_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  return SumLanes(sum);
}

__attribute__((target("avx2,fma"))) float Fp32LoopAvx2(int64_t iterations) {
  const __m256 a = _mm256_set1_ps(0.999f);
  const __m256 b = _mm256_set1_ps(0.001f);
#define DECLARE(i) __m256 acc##i = _mm256_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm256_fmadd_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m256 sum = _mm256_setzero_ps();
#define ADD(i) sum = _mm256_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

// vdpbf16ps: 16 fp32 lanes each += a[2i]·b[2i] + a[2i+1]·b[2i+1], i.e. 32 multiply-adds.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) float Bf16LoopAvx512(int64_t iterations) {
  const __m512 small = _mm512_set1_ps(0.001f);
  const __m512bh a = _mm512_cvtne2ps_pbh(small, small);
  const __m512bh b = _mm512_cvtne2ps_pbh(small, small);
#define DECLARE(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm512_dpbf16_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  return SumLanes(sum);
}

// Sums `count` doubles (a multiple of kReadBlock) with 8 independent accumulators, so that the
// adds never limit the rate at which cache lines arrive.
__attribute__((target("avx512f"))) double ReadSumAvx512(const double* data, int64_t count) {
#define DECLARE(i) __m512d acc##i = _mm512_setzero_pd();
  ATTN_REPEAT8(DECLARE)
#undef DECLARE
  for (int64_t i = 0; i < count; i += 64) {
#define STEP(k) acc##k = _mm512_add_pd(acc##k, _mm512_loadu_pd(data + i + 8 * (k)));
    ATTN_REPEAT8(STEP)
#undef STEP
  }
  __m512d sum = _mm512_setzero_pd();
#define ADD(i) sum = _mm512_add_pd(sum, acc##i);
  ATTN_REPEAT8(ADD)
#undef ADD
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, sum);
  double total = 0.0;
  for (double lane : lanes) total += lane;
  return total;
}

__attribute__((target("avx2"))) double ReadSumAvx2(const double* data, int64_t count) {
#define DECLARE(i) __m256d acc##i = _mm256_setzero_pd();
  ATTN_REPEAT8(DECLARE)
#undef DECLARE
  for (int64_t i = 0; i < count; i += 32) {
#define STEP(k) acc##k = _mm256_add_pd(acc##k, _mm256_loadu_pd(data + i + 4 * (k)));
    ATTN_REPEAT8(STEP)
#undef STEP
  }
  __m256d sum = _mm256_setzero_pd();
#define ADD(i) sum = _mm256_add_pd(sum, acc##i);
  ATTN_REPEAT8(ADD)
#undef ADD
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, sum);
  double total = 0.0;
  for (double lane : lanes) total += lane;
  return total;
}

// STREAM's triad a = b + s·c. Ordinary stores, as STREAM built with GCC and likwid-bench's
// stream kernels use: the line of `a` is read before it is written (write-allocate), traffic
// STREAM's byte count leaves out, and attn's kernels write their outputs the same way.
// Non-temporal stores would report about 40 % more on the development machine.
__attribute__((target("avx512f"))) void TriadAvx512(double* a, const double* b, const double* c,
                                                    int64_t count) {
  const __m512d scalar = _mm512_set1_pd(kTriadScalar);
  for (int64_t i = 0; i < count; i += 8) {
    _mm512_storeu_pd(a + i,
                     _mm512_fmadd_pd(scalar, _mm512_loadu_pd(c + i), _mm512_loadu_pd(b + i)));
  }
}

__attribute__((target("avx2,fma"))) void TriadAvx2(double* a, const double* b, const double* c,
                                                   int64_t count) {
  const __m256d scalar = _mm256_set1_pd(kTriadScalar);
  for (int64_t i = 0; i < count; i += 4) {
    _mm256_storeu_pd(a + i,
                     _mm256_fmadd_pd(scalar, _mm256_loadu_pd(c + i), _mm256_loadu_pd(b + i)));
  }
}
#endif  // ATTN_PEAK_X86

float Fp32LoopScalar(int64_t iterations) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = static_cast<float>(i);
  for (int64_t it = 0; it < iterations; ++it) {
    for (float& a : acc) a = std::fma(a, 0.999f, 0.001f);
  }
  float total = 0.0f;
  for (float a : acc) total += a;
  return total;
}

double ReadSumScalar(const double* data, int64_t count) {
  double acc[8] = {};
  for (int64_t i = 0; i < count; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += data[i + k];
  }
  double total = 0.0;
  for (double a : acc) total += a;
  return total;
}

void TriadScalar(double* a, const double* b, const double* c, int64_t count) {
  for (int64_t i = 0; i < count; ++i) a[i] = b[i] + kTriadScalar * c[i];
}

struct Isa {
  std::string fp32 = "scalar";
  std::string bf16 = "none";
  std::string read = "scalar";
};

Isa DetectIsa() {
  Isa isa;
#ifdef ATTN_PEAK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    isa.fp32 = isa.read = "avx512f";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isa.fp32 = "avx2-fma";
    isa.read = "avx2";
  }
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw")) {
    isa.bf16 = "avx512bf16";
  }
#endif
  return isa;
}

// FLOPs one call of the loop does per iteration, and the loop itself.
struct ComputeLoop {
  double flops_per_iteration = 0.0;
  float (*run)(int64_t iterations) = nullptr;
};

ComputeLoop Fp32Loop(const Isa& isa) {
#ifdef ATTN_PEAK_X86
  if (isa.fp32 == "avx512f") return {kChains * 16 * 2.0, &Fp32LoopAvx512};
  if (isa.fp32 == "avx2-fma") return {kChains * 8 * 2.0, &Fp32LoopAvx2};
#endif
  (void)isa;
  return {kChains * 2.0, &Fp32LoopScalar};
}

ComputeLoop Bf16Loop(const Isa& isa) {
#ifdef ATTN_PEAK_X86
  if (isa.bf16 == "avx512bf16") return {kChains * 32 * 2.0, &Bf16LoopAvx512};
#endif
  (void)isa;
  return {};
}

struct DramLoops {
  double (*read)(const double* data, int64_t count) = &ReadSumScalar;
  void (*triad)(double* a, const double* b, const double* c, int64_t count) = &TriadScalar;
};

DramLoops DramLoopsFor(const Isa& isa) {
#ifdef ATTN_PEAK_X86
  if (isa.read == "avx512f") return {&ReadSumAvx512, &TriadAvx512};
  // The AVX2 triad uses FMA, which every AVX2 CPU attn's fp32 loop accepts also has.
  if (isa.read == "avx2") return {&ReadSumAvx2, &TriadAvx2};
#endif
  (void)isa;
  return {};
}

// Results land here so that no loop can be optimised away.
std::atomic<float> g_sink{0.0f};

// Runs body(i) on `threads` threads released together; returns the seconds from the first
// start to the last finish (the wall time the whole machine needed for the work).
// Each thread is pinned to its own CPU when there are enough: a trial lasts a tenth of a second,
// too short for the scheduler to spread freshly created threads over a busy machine, and two
// threads sharing one core would measure that core twice instead of the machine.
double RunTogether(int threads, const std::function<float(int)>& body) {
  const std::vector<int> cpus = AllowedCpus();
  const bool pin = static_cast<int>(cpus.size()) >= threads;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<Clock::time_point> starts(static_cast<size_t>(threads));
  std::vector<Clock::time_point> ends(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      if (pin) PinCurrentThread(cpus[static_cast<size_t>(i)]);
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      starts[static_cast<size_t>(i)] = Clock::now();
      const float result = body(i);
      ends[static_cast<size_t>(i)] = Clock::now();
      g_sink.store(g_sink.load() + result);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  go.store(true);
  for (std::thread& worker : workers) worker.join();
  const auto first = *std::min_element(starts.begin(), starts.end());
  const auto last = *std::max_element(ends.begin(), ends.end());
  return std::chrono::duration<double>(last - first).count();
}

// Iterations that take about `seconds` on one thread.
int64_t Calibrate(const ComputeLoop& loop, double seconds) {
  int64_t iterations = 1 << 16;
  while (true) {
    const auto start = Clock::now();
    g_sink.store(loop.run(iterations));
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (elapsed > 0.02 || iterations > (int64_t{1} << 40)) {
      return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iterations) * seconds /
                                                       std::max(elapsed, 1e-9)));
    }
    iterations *= 4;
  }
}

// Best and median GFLOP/s of `trials` runs of `loop` on `threads` threads.
std::pair<double, double> MeasureCompute(const ComputeLoop& loop, int64_t iterations, int threads,
                                         int trials) {
  std::vector<double> rates;
  for (int trial = 0; trial < trials; ++trial) {
    const double seconds = RunTogether(threads, [&](int) { return loop.run(iterations); });
    rates.push_back(loop.flops_per_iteration * static_cast<double>(iterations) * threads / seconds /
                    1e9);
  }
  return {*std::max_element(rates.begin(), rates.end()), Median(rates)};
}

// Pinned threads that live across every pass of the DRAM measurement, each working on its own
// contiguous share of the arrays. A pass is timed from the release of all threads to the last
// finish, as STREAM times a parallel loop. Threads wait in std::barrier (a futex once a brief
// spin is over), so a waiting thread leaves its CPU to the others.
class PassTeam {
 public:
  explicit PassTeam(int threads) : threads_(threads), start_(threads + 1), finish_(threads + 1) {
    const std::vector<int> cpus = AllowedCpus();
    const bool pin = static_cast<int>(cpus.size()) >= threads;
    for (int i = 0; i < threads; ++i) {
      workers_.emplace_back([this, i, pin, cpu = pin ? cpus[static_cast<size_t>(i)] : -1] {
        if (pin) PinCurrentThread(cpu);
        while (true) {
          start_.arrive_and_wait();
          if (pass_ == nullptr) return;
          (*pass_)(i);
          finish_.arrive_and_wait();
        }
      });
    }
  }
  ~PassTeam() {
    pass_ = nullptr;
    start_.arrive_and_wait();
    for (std::thread& worker : workers_) worker.join();
  }
  PassTeam(const PassTeam&) = delete;
  PassTeam& operator=(const PassTeam&) = delete;

  int threads() const { return threads_; }

  // Runs pass(i) on every thread i; returns the seconds from release to the last finish. The
  // barriers order the write of pass_ before the workers' reads of it.
  double Run(const std::function<void(int)>& pass) {
    pass_ = &pass;
    const Clock::time_point start = Clock::now();
    start_.arrive_and_wait();
    finish_.arrive_and_wait();
    return std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  int threads_;
  std::barrier<> start_;
  std::barrier<> finish_;
  const std::function<void(int)>* pass_ = nullptr;
  std::vector<std::thread> workers_;
};

struct FreeDeleter {
  void operator()(double* p) const { std::free(p); }
};
using DoubleArray = std::unique_ptr<double[], FreeDeleter>;

// `count` doubles, page-aligned and untouched: no page exists until a team thread writes it, so
// each page lands on the NUMA node of the thread that will read it (first touch).
DoubleArray UntouchedArray(int64_t count) {
  const size_t page = 4096;
  const size_t bytes = (static_cast<size_t>(count) * sizeof(double) + page - 1) / page * page;
  auto* data = static_cast<double*>(std::aligned_alloc(page, bytes));
  Check(data != nullptr, ErrorKind::kIo,
        "cannot allocate " + std::to_string(bytes) + " bytes for the DRAM measurement");
  return DoubleArray(data);
}

struct DramRates {
  double read_best = 0.0;
  double read_median = 0.0;
  double triad_best = 0.0;
  double triad_median = 0.0;
};

// STREAM's method on `threads` threads over three arrays of `count` doubles each: every thread
// first-touches its contiguous share, then `passes` repetitions each run a read of all three
// arrays (the roof of read-bound kernels) and then the triad a = b + s·c; the first repetition
// is not counted (STREAM drops it too), and each rate is the best of the rest, with the median.
// Bytes are counted as STREAM counts them: 3 × 8 per element for both (the triad's
// write-allocate reads of `a` are not counted).
DramRates MeasureDram(const DramLoops& loops, int64_t count, int threads, int passes) {
  const DoubleArray a = UntouchedArray(count);
  const DoubleArray b = UntouchedArray(count);
  const DoubleArray c = UntouchedArray(count);
  const int64_t blocks = count / kReadBlock;
  auto share = [&](int i) {
    return std::pair<int64_t, int64_t>{blocks * i / threads * kReadBlock,
                                       blocks * (i + 1) / threads * kReadBlock};
  };
  PassTeam team(threads);
  team.Run([&](int i) {
    const auto [begin, end] = share(i);
    std::fill(a.get() + begin, a.get() + end, 1.0);
    std::fill(b.get() + begin, b.get() + end, 2.0);
    std::fill(c.get() + begin, c.get() + end, 0.5);
  });
  std::vector<double> sums(static_cast<size_t>(threads));
  const std::function<void(int)> read = [&](int i) {
    const auto [begin, end] = share(i);
    sums[static_cast<size_t>(i)] = loops.read(a.get() + begin, end - begin) +
                                   loops.read(b.get() + begin, end - begin) +
                                   loops.read(c.get() + begin, end - begin);
  };
  const std::function<void(int)> triad = [&](int i) {
    const auto [begin, end] = share(i);
    loops.triad(a.get() + begin, b.get() + begin, c.get() + begin, end - begin);
  };
  const double bytes = 3.0 * sizeof(double) * static_cast<double>(count);
  std::vector<double> read_rates;
  std::vector<double> triad_rates;
  for (int pass = 0; pass < passes; ++pass) {
    const double read_seconds = team.Run(read);
    const double triad_seconds = team.Run(triad);
    for (double sum : sums) g_sink.store(g_sink.load() + static_cast<float>(sum));
    if (pass == 0) continue;
    read_rates.push_back(bytes / read_seconds / 1e9);
    triad_rates.push_back(bytes / triad_seconds / 1e9);
  }
  DramRates rates;
  rates.read_best = *std::max_element(read_rates.begin(), read_rates.end());
  rates.read_median = Median(read_rates);
  rates.triad_best = *std::max_element(triad_rates.begin(), triad_rates.end());
  rates.triad_median = Median(triad_rates);
  return rates;
}

// "266240K" → 272629760; 0 when unreadable.
int64_t CacheSizeBytes(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || value <= 0) return 0;
  switch (*end) {
    case 'K':
      return value << 10;
    case 'M':
      return value << 20;
    case 'G':
      return value << 30;
    default:
      return value;
  }
}

std::string ReadLine(const std::filesystem::path& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string model = line.substr(colon + 1);
        model.erase(0, model.find_first_not_of(" \t"));
        return model;
      }
    }
  }
  return "unknown";
}

int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  return cpus;
}

bool PinCurrentThread(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
}

int64_t LastLevelCacheBytes() {
  // Each instance of the highest cache level once, told apart by the CPUs that share it (one L3
  // per socket, or per CCX on AMD): STREAM's rule is about all the cache the arrays could sit in.
  std::map<std::string, int64_t> instances;  // shared_cpu_list → size, for the highest level
  int top_level = 0;
  std::error_code error;
  const std::filesystem::path root("/sys/devices/system/cpu");
  for (const auto& cpu : std::filesystem::directory_iterator(root, error)) {
    const std::string name = cpu.path().filename().string();
    if (name.size() < 4 || name.compare(0, 3, "cpu") != 0 ||
        name.find_first_not_of("0123456789", 3) != std::string::npos) {
      continue;
    }
    std::error_code cache_error;
    for (const auto& index :
         std::filesystem::directory_iterator(cpu.path() / "cache", cache_error)) {
      if (ReadLine(index.path() / "type") == "Instruction") continue;
      const int level = std::atoi(ReadLine(index.path() / "level").c_str());
      const int64_t size = CacheSizeBytes(ReadLine(index.path() / "size"));
      if (level <= 0 || size <= 0 || level < top_level) continue;
      if (level > top_level) {
        top_level = level;
        instances.clear();
      }
      instances[ReadLine(index.path() / "shared_cpu_list")] = size;
    }
  }
  int64_t total = 0;
  for (const auto& [cpus, size] : instances) total += size;
  return total;
}

int64_t DefaultDramBytes() {
  // STREAM's rule: each of its three arrays at least 4 × the last-level cache, so that no pass
  // finds the previous one's data still cached. 1 GiB at least, for when sysfs says nothing;
  // at most a quarter of the RAM, on a machine with a huge cache and little memory.
  int64_t bytes = std::max<int64_t>(int64_t{1} << 30, 3 * 4 * LastLevelCacheBytes());
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) {
    bytes = std::min<int64_t>(bytes, static_cast<int64_t>(pages) * page_size / 4);
  }
  return bytes;
}

const PeakPoint* MachinePeak::ForThreads(int threads) const {
  for (const PeakPoint& point : points) {
    if (point.threads == threads) return &point;
  }
  return nullptr;
}

MachinePeak MeasurePeak(const PeakOptions& options) {
  Check(options.trials >= 1, ErrorKind::kInvalidArgument, "peak trials must be >= 1");
  Check(options.dram_buffer_bytes == 0 || options.dram_buffer_bytes >= (int64_t{1} << 20),
        ErrorKind::kInvalidArgument, "--peak-bytes must be at least 1 MiB");
  const Isa isa = DetectIsa();
  MachinePeak peak;
  peak.cpu_model = CpuModel();
  peak.logical_cpus = HardwareThreads();
  peak.fp32_isa = isa.fp32;
  peak.bf16_isa = isa.bf16;
  peak.measured_at = UtcNow();
  std::vector<int> counts = options.thread_counts;
  if (counts.empty()) {
    for (int n = 1; n <= peak.logical_cpus; ++n) counts.push_back(n);
  }

  const ComputeLoop fp32 = Fp32Loop(isa);
  const ComputeLoop bf16 = Bf16Loop(isa);
  const int64_t fp32_iterations = Calibrate(fp32, options.seconds_per_trial);
  const int64_t bf16_iterations =
      bf16.run != nullptr ? Calibrate(bf16, options.seconds_per_trial) : 0;

  // Three arrays of whole read blocks, together about dram_buffer_bytes.
  const int64_t total_bytes =
      options.dram_buffer_bytes > 0 ? options.dram_buffer_bytes : DefaultDramBytes();
  const int64_t count = total_bytes / (3 * int64_t{sizeof(double)}) / kReadBlock * kReadBlock;
  peak.dram_buffer_bytes = 3 * count * int64_t{sizeof(double)};
  const DramLoops dram = DramLoopsFor(isa);

  for (int threads : counts) {
    Check(threads >= 1, ErrorKind::kInvalidArgument, "thread counts must be >= 1");
    PeakPoint point;
    point.threads = threads;
    std::tie(point.fp32_gflops, point.fp32_gflops_median) =
        MeasureCompute(fp32, fp32_iterations, threads, options.trials);
    if (bf16.run != nullptr) {
      std::tie(point.bf16_gflops, point.bf16_gflops_median) =
          MeasureCompute(bf16, bf16_iterations, threads, options.trials);
    }
    // Fresh arrays per thread count: each thread first-touches the share it will read.
    const DramRates rates = MeasureDram(dram, count, threads, options.trials + 1);
    point.dram_gbps = rates.read_best;
    point.dram_gbps_median = rates.read_median;
    point.dram_triad_gbps = rates.triad_best;
    point.dram_triad_gbps_median = rates.triad_median;
    peak.points.push_back(point);
  }
  return peak;
}

MachinePeak MergePeaks(const MachinePeak& cached, const MachinePeak& fresh) {
  if (cached.cpu_model != fresh.cpu_model || cached.fp32_isa != fresh.fp32_isa ||
      cached.bf16_isa != fresh.bf16_isa) {
    return fresh;
  }
  const bool same_buffer = cached.dram_buffer_bytes == fresh.dram_buffer_bytes;
  MachinePeak merged = fresh;
  for (PeakPoint& point : merged.points) {
    const PeakPoint* old = cached.ForThreads(point.threads);
    if (old == nullptr) continue;
    auto keep_higher = [](double& best, double& median, double old_best, double old_median) {
      if (old_best > best) {
        best = old_best;
        median = old_median;
      }
    };
    keep_higher(point.fp32_gflops, point.fp32_gflops_median, old->fp32_gflops,
                old->fp32_gflops_median);
    keep_higher(point.bf16_gflops, point.bf16_gflops_median, old->bf16_gflops,
                old->bf16_gflops_median);
    if (same_buffer) {
      keep_higher(point.dram_gbps, point.dram_gbps_median, old->dram_gbps, old->dram_gbps_median);
      keep_higher(point.dram_triad_gbps, point.dram_triad_gbps_median, old->dram_triad_gbps,
                  old->dram_triad_gbps_median);
    }
  }
  for (const PeakPoint& point : cached.points) {
    if (merged.ForThreads(point.threads) == nullptr && same_buffer) merged.points.push_back(point);
  }
  std::sort(merged.points.begin(), merged.points.end(),
            [](const PeakPoint& a, const PeakPoint& b) { return a.threads < b.threads; });
  return merged;
}

double ProbeFp32Now(int threads, double seconds) {
  const ComputeLoop fp32 = Fp32Loop(DetectIsa());
  const int64_t iterations = Calibrate(fp32, seconds);
  std::vector<double> rates;
  for (int trial = 0; trial < 3; ++trial) {
    const double elapsed = RunTogether(threads, [&](int) { return fp32.run(iterations); });
    rates.push_back(fp32.flops_per_iteration * static_cast<double>(iterations) * threads / elapsed /
                    1e9);
  }
  return Median(rates);
}

nlohmann::json PeakToJson(const MachinePeak& peak) {
  nlohmann::json points = nlohmann::json::array();
  for (const PeakPoint& p : peak.points) {
    points.push_back({{"threads", p.threads},
                      {"fp32_gflops", p.fp32_gflops},
                      {"fp32_gflops_median", p.fp32_gflops_median},
                      {"bf16_gflops", p.bf16_gflops},
                      {"bf16_gflops_median", p.bf16_gflops_median},
                      {"dram_gbps", p.dram_gbps},
                      {"dram_gbps_median", p.dram_gbps_median},
                      {"dram_triad_gbps", p.dram_triad_gbps},
                      {"dram_triad_gbps_median", p.dram_triad_gbps_median}});
  }
  return {{"format", kPeakFileFormat},         {"cpu_model", peak.cpu_model},
          {"logical_cpus", peak.logical_cpus}, {"fp32_isa", peak.fp32_isa},
          {"bf16_isa", peak.bf16_isa},         {"dram_buffer_bytes", peak.dram_buffer_bytes},
          {"measured_at", peak.measured_at},   {"points", points}};
}

MachinePeak PeakFromJson(const nlohmann::json& json) {
  try {
    // An older format measured DRAM another way (before format 2: one pass over a buffer the
    // main thread had touched, no triad): refused, so that its figure is measured again rather
    // than kept by MergePeaks as the higher roof.
    const int format = json.contains("format") ? json.at("format").get<int>() : 1;
    if (format != kPeakFileFormat) {
      throw Error(ErrorKind::kCorruptFile, "peak file: format " + std::to_string(format) +
                                               ", this attn reads format " +
                                               std::to_string(kPeakFileFormat));
    }
    MachinePeak peak;
    peak.cpu_model = json.at("cpu_model").get<std::string>();
    peak.logical_cpus = json.at("logical_cpus").get<int>();
    peak.fp32_isa = json.at("fp32_isa").get<std::string>();
    peak.bf16_isa = json.at("bf16_isa").get<std::string>();
    peak.dram_buffer_bytes = json.at("dram_buffer_bytes").get<int64_t>();
    peak.measured_at = json.at("measured_at").get<std::string>();
    for (const auto& p : json.at("points")) {
      PeakPoint point;
      point.threads = p.at("threads").get<int>();
      // A rate is a finite number >= 0 (0: not measured, as bf16 without the instruction).
      auto rate = [&p](const char* key) {
        const double value = p.at(key).get<double>();
        if (!std::isfinite(value) || value < 0.0) {
          throw Error(ErrorKind::kCorruptFile, std::string("peak file: ") + key + " is " +
                                                   std::to_string(value) + ", not a rate");
        }
        return value;
      };
      point.fp32_gflops = rate("fp32_gflops");
      point.fp32_gflops_median = rate("fp32_gflops_median");
      point.bf16_gflops = rate("bf16_gflops");
      point.bf16_gflops_median = rate("bf16_gflops_median");
      point.dram_gbps = rate("dram_gbps");
      point.dram_gbps_median = rate("dram_gbps_median");
      point.dram_triad_gbps = rate("dram_triad_gbps");
      point.dram_triad_gbps_median = rate("dram_triad_gbps_median");
      peak.points.push_back(point);
    }
    return peak;
  } catch (const nlohmann::json::exception& error) {
    throw Error(ErrorKind::kCorruptFile, std::string("peak file: ") + error.what());
  }
}

std::string PeakCachePath() {
  if (const char* explicit_path = std::getenv("ATTN_PEAK_CACHE")) {
    if (*explicit_path != '\0') return explicit_path;
  }
  const Isa isa = DetectIsa();
  const std::string identity = CpuModel() + "|" + std::to_string(HardwareThreads()) + "|" +
                               isa.fp32 + "|" + isa.bf16 + "|v" + std::to_string(kPeakFileFormat);
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : identity) hash = (hash ^ c) * 1099511628211ull;
  char name[40];
  std::snprintf(name, sizeof(name), "peak-%016llx.json", static_cast<unsigned long long>(hash));
  std::filesystem::path dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    dir = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    dir = std::filesystem::path(home) / ".cache";
  } else {
    dir = std::filesystem::temp_directory_path();
  }
  return (dir / "attn" / name).string();
}

std::optional<MachinePeak> LoadPeak(const std::string& path) {
  // A missing, unreadable, non-regular (e.g. a FIFO: io::ReadWholeFile refuses it without
  // blocking), oversized or malformed cache is no cache: the roofs are measured again.
  try {
    return PeakFromJson(nlohmann::json::parse(io::ReadWholeFile(path, "peak cache", 1 << 20)));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

void StorePeak(const std::string& path, const MachinePeak& peak) {
  std::error_code ignored;
  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ignored);
  // Atomic replacement (io/files.h): a concurrent reader sees the old file or the new one.
  io::AtomicWriteFile(path, PeakToJson(peak).dump(2) + "\n");
}

MachinePeak PeakFor(const std::vector<int>& thread_counts, const PeakOptions& options) {
  const std::string path = PeakCachePath();
  MachinePeak peak = LoadPeak(path).value_or(MachinePeak{});
  std::vector<int> missing;
  for (int threads : std::set<int>(thread_counts.begin(), thread_counts.end())) {
    if (peak.ForThreads(threads) == nullptr) missing.push_back(threads);
  }
  if (missing.empty()) return peak;
  PeakOptions measure = options;
  measure.thread_counts = missing;
  if (!peak.points.empty()) measure.dram_buffer_bytes = peak.dram_buffer_bytes;
  const MachinePeak fresh = MergePeaks(peak, MeasurePeak(measure));
  try {
    StorePeak(path, fresh);
  } catch (const Error& error) {
    std::fprintf(stderr, "attn bench: warning: peak not cached: %s\n", error.what());
  }
  return fresh;
}

}  // namespace attn::bench
