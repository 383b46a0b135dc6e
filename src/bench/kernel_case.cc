// SPDX-License-Identifier: Apache-2.0
#include "bench/kernel_case.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attn/error.h"

namespace attn::bench {
namespace {

// DeepSeek-V2/V3 absorbed attention: rows of kv_lora_rank 512 + rope 64, values the first 512.
constexpr int64_t kMlaKeyDim = 576;
constexpr int64_t kMlaValueDim = 512;

// splitmix64: fast, deterministic, good enough to fill hundreds of megabytes of test data in a
// fraction of a second (RandomUniform would first build an fp32 Tensor of the whole cache).
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  // Uniform in [-1, 1).
  float Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

 private:
  uint64_t state_;
};

// `count` random values in `dtype`, as raw bytes.
std::vector<std::byte> RandomStorage(int64_t count, DType dtype, Random& random) {
  std::vector<std::byte> bytes(static_cast<size_t>(count) * DTypeSize(dtype));
  for (int64_t i = 0; i < count; ++i) {
    const float value = random.Next();
    std::byte* at = bytes.data() + static_cast<size_t>(i) * DTypeSize(dtype);
    if (dtype == DType::kF32) {
      std::memcpy(at, &value, sizeof(value));
    } else if (dtype == DType::kF8E4M3) {
      *reinterpret_cast<uint8_t*>(at) = F32ToF8E4M3(value * 448.0f);  // codes, scaled by 1/448
    } else if (dtype == DType::kI8) {
      *reinterpret_cast<int8_t*>(at) = static_cast<int8_t>(std::lround(value * 127.0f));
    } else {
      const uint16_t bits = dtype == DType::kBF16 ? F32ToBF16(value) : F32ToF16(value);
      std::memcpy(at, &bits, sizeof(bits));
    }
  }
  return bytes;
}

void Require(bool ok, const std::string& message) {
  Check(ok, ErrorKind::kInvalidArgument, message);
}

}  // namespace

Variant VariantFromString(const std::string& name) {
  if (name == "gqa") return Variant::kGqa;
  if (name == "mla") return Variant::kMla;
  throw Error(ErrorKind::kInvalidArgument, "--variant must be gqa or mla, got '" + name + "'");
}

const char* VariantName(Variant variant) { return variant == Variant::kGqa ? "gqa" : "mla"; }

KernelShape NormalizeKernelShape(KernelShape s) {
  if (s.variant == Variant::kMla) {
    Require(s.kv_heads == 0 || s.kv_heads == 1,
            "--kv-heads must be 1 for --variant mla (one shared latent row per token)");
    s.kv_heads = 1;
    if (s.head_dim == 0) s.head_dim = kMlaKeyDim;
    if (s.value_dim == 0) s.value_dim = kMlaValueDim;
    Require(s.value_dim <= s.head_dim,
            "--v-head-dim (" + std::to_string(s.value_dim) + ") must not exceed --head-dim (" +
                std::to_string(s.head_dim) + ") for mla: values are the leading part of each row");
  } else {
    if (s.kv_heads == 0) s.kv_heads = s.heads;
    if (s.head_dim == 0) s.head_dim = 128;
    if (s.value_dim == 0) s.value_dim = s.head_dim;
  }
  Require(s.heads > 0, "--heads must be positive");
  Require(s.kv_heads > 0 && s.heads % s.kv_heads == 0,
          "--heads (" + std::to_string(s.heads) + ") must be a positive multiple of --kv-heads (" +
              std::to_string(s.kv_heads) + ")");
  Require(s.head_dim > 0 && s.value_dim > 0, "--head-dim and --v-head-dim must be positive");
  Require(s.q_len > 0 && s.kv_len > 0, "--q-len and --kv-len must be positive");
  Require(s.q_len <= s.kv_len, "--q-len (" + std::to_string(s.q_len) +
                                   ") must not exceed --kv-len (" + std::to_string(s.kv_len) +
                                   "): the queries are the last S of the T tokens");
  Require(s.dtype == DType::kF32 || s.dtype == DType::kF16 || s.dtype == DType::kBF16 ||
              (IsQuantizedKV(s.dtype) && s.page_size > 0),
          IsQuantizedKV(s.dtype) ? "--dtype fp8/int8 needs --page-size (quantized storage is "
                                   "paged-only)"
                                 : "--dtype must be f32, f16, bf16, or fp8/int8 with --page-size");
  Require(s.batch >= 1 && s.batch <= 4096, "--batch must lie in [1, 4096]");
  Require(s.page_size == 0 || (s.page_size >= 16 && s.page_size <= 256 && s.page_size % 16 == 0),
          "--page-size must be 0 (contiguous) or a multiple of 16 in [16, 256]");
  Require(s.q_len <= s.kv_len - (s.batch - 1) * s.kv_len / (2 * s.batch),
          "--q-len must not exceed the shortest sequence of the batch (about T/2)");
  Require(!s.token_major || s.variant == Variant::kGqa,
          "--layout token-major applies to gqa (mla has one latent row per token)");
  return s;
}

std::vector<int64_t> SequenceLengths(const KernelShape& s) {
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < s.batch; ++b) lengths.push_back(s.kv_len - b * s.kv_len / (2 * s.batch));
  return lengths;
}

int64_t VisiblePairs(const KernelShape& s) {
  int64_t pairs = 0;
  for (const int64_t length : SequenceLengths(s)) {
    // Query s sees T−S+s+1 keys; summed over s that is S·T minus the triangle S(S−1)/2 of
    // keys that lie in the future of earlier queries.
    pairs += s.q_len * length - (s.causal ? s.q_len * (s.q_len - 1) / 2 : 0);
  }
  return pairs;
}

double KernelFlops(const KernelShape& s) {
  return 2.0 * static_cast<double>(s.heads) * static_cast<double>(s.head_dim + s.value_dim) *
         static_cast<double>(VisiblePairs(s));
}

double KernelKvBytes(const KernelShape& s) {
  const double per_token = s.variant == Variant::kMla
                               ? static_cast<double>(s.head_dim)
                               : static_cast<double>(s.kv_heads * (s.head_dim + s.value_dim));
  int64_t tokens = 0;
  for (const int64_t length : SequenceLengths(s)) tokens += length;
  // fp8/int8: one fp32 scale per token and kv head for keys, and one for values (heads).
  const double scales = !IsQuantizedKV(s.dtype)      ? 0.0
                        : s.variant == Variant::kMla ? 4.0
                                                     : 8.0 * static_cast<double>(s.kv_heads);
  return (per_token * static_cast<double>(DTypeSize(s.dtype)) + scales) *
         static_cast<double>(tokens);
}

RooflinePoint PlaceOnRoofline(double flops, double bytes, double seconds, double peak_gflops,
                              double peak_gbps) {
  RooflinePoint point;
  point.intensity = bytes > 0.0 ? flops / bytes : 0.0;
  const double memory_roof = point.intensity * peak_gbps;
  point.memory_bound = memory_roof < peak_gflops;
  point.roof_gflops = std::min(peak_gflops, memory_roof);
  const double achieved = seconds > 0.0 ? flops / seconds / 1e9 : 0.0;
  point.fraction = point.roof_gflops > 0.0 ? achieved / point.roof_gflops : 0.0;
  return point;
}

KernelCase::KernelCase(const KernelShape& shape, uint64_t seed)
    : shape_(NormalizeKernelShape(shape)) {
  const KernelShape& s = shape_;
  Random random(seed);
  const std::vector<int64_t> lengths = SequenceLengths(s);
  sequences_.resize(lengths.size());
  outputs_.resize(lengths.size());
  problems_.resize(lengths.size());
  // Paged: one pool for the batch, pages handed out in a random order.
  const int64_t page = s.page_size;
  const bool mla = s.variant == Variant::kMla;
  const int64_t key_page = mla ? page * s.head_dim : s.kv_heads * page * s.head_dim;
  const int64_t page_elements = mla ? key_page : key_page + s.kv_heads * page * s.value_dim;
  std::vector<int32_t> order;
  if (page > 0) {
    int64_t total = 0;
    for (const int64_t slots : lengths) total += (slots + page - 1) / page;
    pages_ = RandomStorage(total * page_elements, s.dtype, random);
    if (IsQuantizedKV(s.dtype)) {
      // Random codes times 1/448 (fp8) or 1/127 (int8): values in [-1, 1] like the others.
      const float scale = s.dtype == DType::kF8E4M3 ? 1.0f / 448.0f : 1.0f / 127.0f;
      key_scales_.assign(static_cast<size_t>(total * s.kv_heads * page), scale);
      value_scales_.assign(key_scales_.size(), scale);
    }
    order.resize(static_cast<size_t>(total));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates with the case's own generator
      const auto j = static_cast<size_t>((random.Next() * 0.5f + 0.5f) * static_cast<float>(i));
      std::swap(order[i - 1], order[std::min(j, i - 1)]);
    }
  }
  size_t next_page = 0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    const int64_t slots = lengths[b];
    Sequence& sequence = sequences_[b];
    sequence.queries.resize(static_cast<size_t>(s.q_len * s.heads * s.head_dim));
    for (float& q : sequence.queries) q = random.Next();
    outputs_[b].assign(static_cast<size_t>(s.q_len * s.heads * s.value_dim), 0.0f);

    AttentionProblem& problem = problems_[b];
    KVView& kv = problem.kv;
    kv.dtype = s.dtype;
    kv.kv_heads = s.kv_heads;
    kv.key_dim = s.head_dim;
    kv.value_dim = s.value_dim;
    kv.length = slots;
    if (page > 0) {
      for (int64_t t = 0; t < slots; t += page) sequence.table.push_back(order[next_page++]);
      const size_t element = DTypeSize(s.dtype);
      kv.page_size = page;
      kv.page_table = sequence.table.data();
      kv.key_page_stride = kv.value_page_stride = page_elements;
      kv.keys = pages_.data();
      kv.values = mla ? pages_.data() : pages_.data() + static_cast<size_t>(key_page) * element;
      if (IsQuantizedKV(s.dtype)) {
        kv.key_scales = key_scales_.data();
        kv.value_scales = mla ? key_scales_.data() : value_scales_.data();
      }
      if (s.token_major && !mla) {
        // [P][G][D] inside a page: all heads of a token together.
        kv.key_head_stride = s.head_dim;
        kv.value_head_stride = s.value_dim;
        kv.key_token_stride = s.kv_heads * s.head_dim;
        kv.value_token_stride = s.kv_heads * s.value_dim;
      } else {
        kv.key_head_stride = mla ? 0 : page * s.head_dim;
        kv.value_head_stride = mla ? 0 : page * s.value_dim;
        kv.key_token_stride = s.head_dim;
        kv.value_token_stride = mla ? s.head_dim : s.value_dim;
      }
    } else if (s.variant == Variant::kMla) {
      // LatentKVCache::View(): one row per token, the value row is the head of the key row.
      sequence.keys = RandomStorage(slots * s.head_dim, s.dtype, random);
      kv.keys = kv.values = sequence.keys.data();
      kv.key_head_stride = kv.value_head_stride = slots * s.head_dim;
      kv.key_token_stride = kv.value_token_stride = s.head_dim;
    } else {
      sequence.keys = RandomStorage(s.kv_heads * slots * s.head_dim, s.dtype, random);
      sequence.values = RandomStorage(s.kv_heads * slots * s.value_dim, s.dtype, random);
      kv.keys = sequence.keys.data();
      kv.values = sequence.values.data();
      if (s.token_major) {
        // [T][G][D]: PyTorch's [B, T, G, D], one kv head's rows a whole token apart.
        kv.key_head_stride = s.head_dim;
        kv.key_token_stride = s.kv_heads * s.head_dim;
        kv.value_head_stride = s.value_dim;
        kv.value_token_stride = s.kv_heads * s.value_dim;
      } else {
        // KVCache::View(): head-major [G][T][d] so one kv head's rows stream contiguously.
        kv.key_head_stride = slots * s.head_dim;
        kv.key_token_stride = s.head_dim;
        kv.value_head_stride = slots * s.value_dim;
        kv.value_token_stride = s.value_dim;
      }
    }
    problem.queries = QueryRows{sequence.queries.data(), s.q_len, s.heads, s.head_dim};
    // Causal: the queries are the last S slots. Otherwise every query sees all T_b keys.
    problem.visibility = s.causal ? Visibility{slots - s.q_len, 0, true} : Visibility{0, 0, false};
    problem.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    problem.out = outputs_[b].data();
    ValidateAttentionProblem(problem);
  }
}

double Median(std::vector<double> samples) {
  if (samples.empty()) return 0.0;
  const size_t middle = samples.size() / 2;
  std::nth_element(samples.begin(), samples.begin() + static_cast<long>(middle), samples.end());
  const double upper = samples[middle];
  if (samples.size() % 2 == 1) return upper;
  const double lower =
      *std::max_element(samples.begin(), samples.begin() + static_cast<long>(middle));
  return 0.5 * (lower + upper);
}

}  // namespace attn::bench
