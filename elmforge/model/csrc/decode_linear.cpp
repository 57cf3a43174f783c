// Matrix-vector products for decoding on the CPU: y[M, N] = x[M, K] @ W[N, K]^T for a few rows
// (M <= 8: one token per sequence, batch up to 8), weights in float32, bfloat16, int8 (one scale
// per output row) or int4 (one scale per group of input columns).
//
// Why this exists (bench/gemv.py prints the table, docs/inference.md keeps it): decoding reads
// every weight once per token, so its speed is the weights' bytes over the memory bandwidth.
// PyTorch's float32 product gets there; its bfloat16 product and its int8 weight-only product
// (torch._weight_int8pack_mm) stop well below it on this kind of CPU, and there is no int4
// product for float activations. These loops read each weight once, with the cheapest
// instruction mix the CPU has for it, and split the output rows over ATen's threads:
// - bfloat16 x bfloat16: vdpbf16ps (AVX512-BF16), 32 products per instruction, float32 sums;
// - int8 weights: the activations of each row are scaled to 16-bit integers (error at most
//   1/65534 of the row's largest value, far below the weights' own rounding) and vpdpwssd
//   (AVX512-VNNI) multiplies 32 pairs per instruction into int32 sums, turned into float32
//   every 2048 columns so they cannot overflow;
// - float32, bfloat16 with float32 activations and int4: widen to float32 in registers, FMA.
// A row's result never depends on the other rows of the batch (same order of operations), so a
// batched decode step gives exactly what each sequence would alone.
//
// Built at first use by elmforge/model/cpu_kernels.py with -march=native; where the compiler
// has no AVX-512 the ops still exist (scalar loops) and report simd_width() == 1, so Python keeps
// PyTorch's own kernels there. The plain PyTorch expressions in cpu_kernels.py / quant.py are the
// oracle the tests compare with.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "rms_row.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ELMFORGE_AVX512 1
#else
#define ELMFORGE_AVX512 0
#endif
#if ELMFORGE_AVX512 && defined(__AVX512BF16__)
#define ELMFORGE_BF16_DOT 1
#else
#define ELMFORGE_BF16_DOT 0
#endif
#if ELMFORGE_AVX512 && defined(__AVX512VNNI__)
#define ELMFORGE_VNNI 1
#else
#define ELMFORGE_VNNI 0
#endif

namespace {

constexpr int64_t kMaxRows = 8;
constexpr int64_t kInt32Block = 2048;  // columns summed in int32 before turning into float32

template <int V>
using Int = std::integral_constant<int, V>;

// Where the (M, N) results go: float32, or bfloat16 (rounded to nearest even) when x is bfloat16,
// written straight into the returned tensor.
struct Output {
  float* f32;
  at::BFloat16* bf16;
  int64_t N;
  void put(int64_t m, int64_t n, float value) const {
    if (bf16)
      bf16[m * N + n] = at::BFloat16(value);
    else
      f32[m * N + n] = value;
  }
};

// Rows [begin, end) in blocks of R (the register budget of the kernel for M input rows), the
// tail one row at a time; fn(Int<M>, Int<R>, first_row).
template <int M, int R, class Fn>
inline void blocks_of(int64_t begin, int64_t end, Fn&& fn) {
  int64_t n = begin;
  for (; n + R <= end; n += R) fn(Int<M>{}, Int<R>{}, n);
  for (; n < end; ++n) fn(Int<M>{}, Int<1>{}, n);
}

// R1: rows per block for M = 1-2, R3: for M = 3-4, R5: for M = 5-8.
template <int R1, int R3, int R5, class Fn>
inline void for_each_block(int64_t M, int64_t begin, int64_t end, Fn&& fn) {
  switch (M) {
    case 1: blocks_of<1, R1>(begin, end, fn); break;
    case 2: blocks_of<2, R1>(begin, end, fn); break;
    case 3: blocks_of<3, R3>(begin, end, fn); break;
    case 4: blocks_of<4, R3>(begin, end, fn); break;
    case 5: blocks_of<5, R5>(begin, end, fn); break;
    case 6: blocks_of<6, R5>(begin, end, fn); break;
    case 7: blocks_of<7, R5>(begin, end, fn); break;
    default: blocks_of<8, R5>(begin, end, fn); break;
  }
}

// Split N output rows over the threads, in chunks of whole 8-row blocks.
template <class Body>
inline void parallel_rows(int64_t N, int64_t bytes_per_row, Body&& body) {
  // At least ~64 KiB of weights per task: below that the fork/join costs more than it saves.
  const int64_t grain_rows = std::max<int64_t>(8, (64 * 1024) / std::max<int64_t>(1, bytes_per_row));
  at::parallel_for(0, (N + 7) / 8, (grain_rows + 7) / 8, [&](int64_t b0, int64_t b1) {
    body(b0 * 8, std::min(N, b1 * 8));
  });
}

#if ELMFORGE_AVX512
// Rows are short (1-10 KB), too short for the hardware prefetcher to ramp up on each, so every
// loop asks for the next block of rows while it works on this one (x1.3-1.6 measured on a core).
inline void prefetch(const void* address) {
  _mm_prefetch(static_cast<const char*>(address), _MM_HINT_T0);
}

// Weight sources for the float32-FMA loop: load(n, k) = 16 weights of row n from column k.
struct Float32Rows {
  const float* w;
  int64_t K;
  static constexpr int kPerLine = 16;  // weights per 64-byte cache line
  const void* at(int64_t n, int64_t k) const { return w + n * K + k; }
  __m512 load(int64_t n, int64_t k) const { return _mm512_loadu_ps(w + n * K + k); }
};

struct BFloat16Rows {  // bfloat16 is the top half of a float32: widen and shift (exact)
  const uint16_t* w;
  int64_t K;
  static constexpr int kPerLine = 32;
  const void* at(int64_t n, int64_t k) const { return w + n * K + k; }
  __m512 load(int64_t n, int64_t k) const {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * K + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
};

struct Int8Rows {
  const int8_t* w;
  int64_t K;
  static constexpr int kPerLine = 64;
  const void* at(int64_t n, int64_t k) const { return w + n * K + k; }
  __m512 load(int64_t n, int64_t k) const {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + n * K + k));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
  }
};

// R weight rows against M input rows: R*M independent accumulators keep the FMA units busy while
// the loads stream; x stays in L1. The result is multiplied by row_scale[n] if given.
template <int M, int R, class Rows>
inline void fma_rows(const Rows& rows, const float* x, int64_t K, int64_t n0, int64_t N,
                     const float* row_scale, const Output& out) {
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    if (k % Rows::kPerLine == 0 && n0 + 2 * R <= N)
      for (int r = 0; r < R; ++r) prefetch(rows.at(n0 + R + r, k));
    __m512 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = rows.load(n0 + r, k);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float scale = row_scale ? row_scale[n0 + r] : 1.0f;
    for (int m = 0; m < M; ++m) out.put(m, n0 + r, _mm512_reduce_add_ps(acc[r][m]) * scale);
  }
}

// int4: each row is K/2 bytes; 16 bytes hold 32 columns: byte j's low nibble is column j, its
// high nibble column j + 16. A nibble q stands for (q - 8) * scale[n, column / G].
template <int M, int R>
inline void int4_rows(const uint8_t* w, const float* scales, const float* x, int64_t K, int64_t G,
                      int64_t n0, int64_t N, const Output& out) {
  const int64_t row_bytes = K / 2, groups = K / G;
  const __m128i low_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 scale[R];
    for (int r = 0; r < R; ++r) scale[r] = _mm512_set1_ps(scales[(n0 + r) * groups + g]);
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      if (k % 128 == 0 && n0 + 2 * R <= N)  // 128 columns are one cache line
        for (int r = 0; r < R; ++r) prefetch(w + (n0 + R + r) * row_bytes + k / 2);
      __m512 x_low[M], x_high[M];
      for (int m = 0; m < M; ++m) {
        x_low[m] = _mm512_loadu_ps(x + m * K + k);
        x_high[m] = _mm512_loadu_ps(x + m * K + k + 16);
      }
      for (int r = 0; r < R; ++r) {
        const __m128i bytes =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (n0 + r) * row_bytes + k / 2));
        const __m128i low = _mm_sub_epi8(_mm_and_si128(bytes, low_mask), eight);
        const __m128i high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask), eight);
        const __m512 w_low = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(low)), scale[r]);
        const __m512 w_high = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(high)), scale[r]);
        for (int m = 0; m < M; ++m) {
          acc[r][m] = _mm512_fmadd_ps(w_low, x_low[m], acc[r][m]);
          acc[r][m] = _mm512_fmadd_ps(w_high, x_high[m], acc[r][m]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out.put(m, n0 + r, _mm512_reduce_add_ps(acc[r][m]));
}
#endif  // ELMFORGE_AVX512

#if ELMFORGE_BF16_DOT
// bfloat16 weights and activations: vdpbf16ps adds x[2i] w[2i] + x[2i+1] w[2i+1] into float32
// lane i, 32 products per instruction.
template <int M, int R>
inline void bf16_dot_rows(const uint16_t* w, const uint16_t* x, int64_t K, int64_t n0, int64_t N,
                          const Output& out) {
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    if (n0 + 2 * R <= N)  // 32 bfloat16 are one cache line
      for (int r = 0; r < R; ++r) prefetch(w + (n0 + R + r) * K + k);
    __m512bh xv[M];
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + (n0 + r) * K + k);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) out.put(m, n0 + r, _mm512_reduce_add_ps(acc[r][m]));
}
#endif

#if ELMFORGE_VNNI
// int8 weights against activations scaled to int16 (xq[m] = round(x[m] / x_scale[m])):
// vpdpwssd adds two int16 products into each int32 lane, 32 per instruction; every 2048 columns
// (at most 128 products of |127 x 32767| per lane: no overflow) the sums go to float32.
template <int M, int R>
inline void int8_vnni_rows(const int8_t* w, const int16_t* xq, int64_t K, int64_t n0, int64_t N,
                           const float* row_scale, const float* x_scale, const Output& out) {
  __m512 total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
  for (int64_t start = 0; start < K; start += kInt32Block) {
    const int64_t stop = std::min(K, start + kInt32Block);
    __m512i acc[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_si512();
    for (int64_t k = start; k < stop; k += 32) {
      if (k % 64 == 0 && n0 + 2 * R <= N)
        for (int r = 0; r < R; ++r) prefetch(w + (n0 + R + r) * K + k);
      __m512i xv[M];
      for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_si512(xq + m * K + k);
      for (int r = 0; r < R; ++r) {
        const __m512i wv = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (n0 + r) * K + k)));
        for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpwssd_epi32(acc[r][m], wv, xv[m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m)
        total[r][m] = _mm512_add_ps(total[r][m], _mm512_cvtepi32_ps(acc[r][m]));
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      out.put(m, n0 + r, _mm512_reduce_add_ps(total[r][m]) * row_scale[n0 + r] * x_scale[m]);
}
#endif

#if ELMFORGE_VNNI
// Activation rows to int16: xq = round(x / s) with s = max|x| / 32767 per row.
void int16_rows(const float* x, int64_t M, int64_t K, int16_t* xq, float* scales) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    __m512 peak = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16)
      peak = _mm512_max_ps(peak, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
    const float largest = _mm512_reduce_max_ps(peak);
    const float s = largest > 0.0f ? largest / 32767.0f : 1.0f;
    const __m512 inverse = _mm512_set1_ps(1.0f / s);
    for (int64_t k = 0; k < K; k += 16) {  // rounds to nearest even; saturates at +-32767
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), inverse));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + m * K + k), _mm512_cvtsepi32_epi16(q));
    }
    scales[m] = s;
  }
}
#endif

// Scalar loops: the same arithmetic (float32 accumulation), for compilers without AVX-512.
template <class Load>
void scalar_rows(Load load, const float* x, int64_t M, int64_t K, int64_t N,
                 const float* row_scale, const Output& out) {
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += load(n, k) * x[m * K + k];
        out.put(m, n, acc * (row_scale ? row_scale[n] : 1.0f));
      }
  });
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// x is (..., K) with 1 to 8 rows in all; returns it as a contiguous (M, K) tensor of `dtype`.
at::Tensor rows_of(const at::Tensor& x, const at::Tensor& w, int64_t K, at::ScalarType dtype) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "elmforge decode kernels are CPU-only");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x has ", x.size(-1), " columns, the weight ", K);
  TORCH_CHECK(x.numel() / K >= 1 && x.numel() / K <= kMaxRows, "x must have 1 to 8 rows");
  TORCH_CHECK(K % 32 == 0, "in_features must be a multiple of 32");
  TORCH_CHECK(w.is_contiguous(), "weight must be contiguous");
  return x.reshape({-1, K}).to(dtype).contiguous();
}

// The result tensor: x's dtype and leading shape, N columns; and its Output view.
std::pair<at::Tensor, Output> result_like(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  at::Tensor out = at::empty(sizes, x.options());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || x.scalar_type() == at::kFloat, "x must be float32 or bfloat16");
  return {out, Output{bf16 ? nullptr : out.data_ptr<float>(),
                      bf16 ? out.data_ptr<at::BFloat16>() : nullptr, N}};
}

// The ops. x: (..., K) float32 or bfloat16; the result has x's dtype and leading shape.

at::Tensor linear_decode(const at::Tensor& x_in, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "weight must be (out_features, in_features)");
  const int64_t N = weight.size(0), K = weight.size(1);
  const bool bf16_weight = weight.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16_weight || weight.scalar_type() == at::kFloat,
              "weight must be float32 or bfloat16");
#if ELMFORGE_BF16_DOT
  if (bf16_weight && x_in.scalar_type() == at::kBFloat16) {
    const at::Tensor x = rows_of(x_in, weight, K, at::kBFloat16);
    const int64_t M = x.size(0);
    auto [out, op] = result_like(x_in, N);
    const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    parallel_rows(N, K * 2, [&](int64_t begin, int64_t end) {
      for_each_block<4, 2, 1>(M, begin, end, [&](auto m, auto r, int64_t n) {
        bf16_dot_rows<decltype(m)::value, decltype(r)::value>(w, xp, K, n, N, op);
      });
    });
    return out;
  }
#endif
  const at::Tensor x = rows_of(x_in, weight, K, at::kFloat);
  const int64_t M = x.size(0);
  auto [out, op] = result_like(x_in, N);
  const float* xp = x.data_ptr<float>();
  if (!bf16_weight) {
    const float* w = weight.data_ptr<float>();
#if ELMFORGE_AVX512
    parallel_rows(N, K * 4, [&](int64_t begin, int64_t end) {
      for_each_block<4, 4, 2>(M, begin, end, [&](auto m, auto r, int64_t n) {
        fma_rows<decltype(m)::value, decltype(r)::value>(Float32Rows{w, K}, xp, K, n, N, nullptr, op);
      });
    });
#else
    scalar_rows([&](int64_t n, int64_t k) { return w[n * K + k]; }, xp, M, K, N, nullptr, op);
#endif
  } else {
    const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
#if ELMFORGE_AVX512
    parallel_rows(N, K * 2, [&](int64_t begin, int64_t end) {
      for_each_block<4, 4, 2>(M, begin, end, [&](auto m, auto r, int64_t n) {
        fma_rows<decltype(m)::value, decltype(r)::value>(BFloat16Rows{w, K}, xp, K, n, N, nullptr, op);
      });
    });
#else
    scalar_rows([&](int64_t n, int64_t k) { return bf16_to_float(w[n * K + k]); }, xp, M, K, N,
                nullptr, op);
#endif
  }
  return out;
}

at::Tensor linear_int8(const at::Tensor& x_in, const at::Tensor& qweight, const at::Tensor& scale) {
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kChar,
              "qweight must be int8 (out_features, in_features)");
  const int64_t N = qweight.size(0), K = qweight.size(1);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N && scale.is_contiguous(),
              "scale must be float32 with one value per output row");
  const at::Tensor x = rows_of(x_in, qweight, K, at::kFloat);
  const int64_t M = x.size(0);
  auto [out, op] = result_like(x_in, N);
  const int8_t* w = qweight.data_ptr<int8_t>();
  const float* s = scale.data_ptr<float>();
#if ELMFORGE_VNNI
  std::vector<int16_t> xq(M * K);
  std::vector<float> x_scale(M);
  int16_rows(x.data_ptr<float>(), M, K, xq.data(), x_scale.data());
  const int16_t* xqp = xq.data();
  const float* xs = x_scale.data();
  parallel_rows(N, K, [&](int64_t begin, int64_t end) {
    for_each_block<4, 2, 1>(M, begin, end, [&](auto m, auto r, int64_t n) {
      int8_vnni_rows<decltype(m)::value, decltype(r)::value>(w, xqp, K, n, N, s, xs, op);
    });
  });
#elif ELMFORGE_AVX512
  const float* xp = x.data_ptr<float>();
  parallel_rows(N, K, [&](int64_t begin, int64_t end) {
    for_each_block<4, 4, 2>(M, begin, end, [&](auto m, auto r, int64_t n) {
      fma_rows<decltype(m)::value, decltype(r)::value>(Int8Rows{w, K}, xp, K, n, N, s, op);
    });
  });
#else
  scalar_rows([&](int64_t n, int64_t k) { return static_cast<float>(w[n * K + k]); },
              x.data_ptr<float>(), M, K, N, s, op);
#endif
  return out;
}

at::Tensor linear_int4(const at::Tensor& x_in, const at::Tensor& qweight, const at::Tensor& scale,
                       int64_t group_size) {
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kByte,
              "qweight must be uint8 (out_features, in_features / 2)");
  const int64_t N = qweight.size(0), K = qweight.size(1) * 2;
  TORCH_CHECK(group_size % 32 == 0 && K % group_size == 0,
              "group_size must be a multiple of 32 that divides in_features");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 2 &&
                  scale.size(0) == N && scale.size(1) == K / group_size,
              "scale must be float32 (out_features, in_features / group_size)");
  const at::Tensor x = rows_of(x_in, qweight, K, at::kFloat);
  const int64_t M = x.size(0);
  auto [out, op] = result_like(x_in, N);
  const uint8_t* w = qweight.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
#if ELMFORGE_AVX512
  parallel_rows(N, K / 2, [&](int64_t begin, int64_t end) {
    for_each_block<4, 2, 1>(M, begin, end, [&](auto m, auto r, int64_t n) {
      int4_rows<decltype(m)::value, decltype(r)::value>(w, s, xp, K, group_size, n, N, op);
    });
  });
#else
  const int64_t groups = K / group_size;
  scalar_rows(
      [&](int64_t n, int64_t k) {
        const uint8_t byte = w[n * (K / 2) + (k / 32) * 16 + (k % 16)];
        const int q = ((k % 32) < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
        return static_cast<float>(q) * s[n * groups + k / group_size];
      },
      xp, M, K, N, nullptr, op);
#endif
  return out;
}

// RMSNorm over the last dimension, in float32, for the small tensors of a decode step: one op
// where PyTorch's CPU rms_norm is a chain of ~8 (casts, pow, mean, add, rsqrt, mul): 65 of them
// per OpenELM-270M token were ~15% of an eager bf16 decode step.
template <class In, class W>
void rms_rows(const In* x, const W* weight, In* out, int64_t rows, int64_t D, float eps) {
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const In* row = x + i * D;
      const float inverse = elmforge::rms_inverse(row, D, eps);
      for (int64_t d = 0; d < D; ++d)
        out[i * D + d] = static_cast<In>(static_cast<float>(row[d]) * inverse *
                                         static_cast<float>(weight[d]));
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  TORCH_CHECK(x_in.device().is_cpu() && weight_in.device().is_cpu(), "CPU tensors only");
  const int64_t D = x_in.size(-1);
  TORCH_CHECK(weight_in.dim() == 1 && weight_in.size(0) == D, "weight must be (", D, ",)");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t rows = D ? x.numel() / D : 0;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, weight.scalar_type(), "rms_norm_weight", [&] {
      rms_rows<In, scalar_t>(x.data_ptr<In>(), weight.data_ptr<scalar_t>(), out.data_ptr<In>(),
                             rows, D, static_cast<float>(eps));
    });
  });
  return out;
}

int64_t simd_width() { return ELMFORGE_AVX512 ? 16 : 1; }

}  // namespace

TORCH_LIBRARY(elmforge, m) {
  m.def("linear_decode(Tensor x, Tensor weight) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor qweight, Tensor scale) -> Tensor");
  m.def("linear_int4(Tensor x, Tensor qweight, Tensor scale, int group_size) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("simd_width() -> int", &simd_width);
}

TORCH_LIBRARY_IMPL(elmforge, CPU, m) {
  m.impl("linear_decode", &linear_decode);
  m.impl("linear_int8", &linear_int8);
  m.impl("linear_int4", &linear_int4);
  m.impl("rms_norm", &rms_norm);
}
