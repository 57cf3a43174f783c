// STREAM-style memory probes for `elmforge bench`'s roofline (elmforge/bench/roofline.py): how
// many bytes per second this machine's memory gives with the run's threads, measured by the
// simplest loops that can reach it, so that no engine's weight reads can beat the figure.
//
// - stream_read: the sum of a float32 buffer (reads only, like a decode step's weights), each
//   thread on one contiguous slice (the hardware prefetcher's best case), four independent
//   accumulators so the adds never wait on each other;
// - stream_triad: a = b + s * c (STREAM's triad), stores that bypass the cache when `a` is
//   64-byte aligned (no read-for-ownership of `a`: 3 bytes moved per byte counted, as STREAM
//   counts them).
// Built into the same extension as decode_linear.cpp (elmforge/model/cpu_kernels.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define ELMFORGE_STREAM_AVX512 1
#else
#define ELMFORGE_STREAM_AVX512 0
#endif

namespace {

// Large grains: one contiguous slice per thread (small grains would interleave the threads'
// pages and defeat the prefetchers).
int64_t slice_grain(int64_t n) {
  return std::max<int64_t>(1 << 16, n / std::max<int64_t>(1, at::get_num_threads()));
}

double read_slice(const float* p, int64_t begin, int64_t end) {
  int64_t i = begin;
  double total = 0.0;
#if ELMFORGE_STREAM_AVX512
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 64 <= end; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
  for (; i < end; ++i) total += p[i];
  return total;
}

double stream_read(const at::Tensor& buffer) {
  TORCH_CHECK(buffer.device().is_cpu() && buffer.scalar_type() == at::kFloat &&
                  buffer.is_contiguous(),
              "stream_read needs a contiguous float32 CPU tensor");
  const float* p = buffer.data_ptr<float>();
  const int64_t n = buffer.numel();
  std::vector<double> partial(at::get_num_threads() + 1, 0.0);
  at::parallel_for(0, n, slice_grain(n), [&](int64_t begin, int64_t end) {
    partial[at::get_thread_num()] += read_slice(p, begin, end);
  });
  double total = 0.0;
  for (double v : partial) total += v;
  return total;
}

void stream_triad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, double s) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  c.scalar_type() == at::kFloat && a.is_contiguous() && b.is_contiguous() &&
                  c.is_contiguous() && a.numel() == b.numel() && a.numel() == c.numel(),
              "stream_triad needs three contiguous float32 tensors of one size");
  float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  const float* pc = c.data_ptr<float>();
  const int64_t n = a.numel();
  const float scalar = static_cast<float>(s);
  at::parallel_for(0, n, slice_grain(n), [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if ELMFORGE_STREAM_AVX512
    const __m512 vs = _mm512_set1_ps(scalar);
    for (; i < end && (reinterpret_cast<uintptr_t>(pa + i) % 64); ++i) pa[i] = pb[i] + scalar * pc[i];
    for (; i + 16 <= end; i += 16)
      _mm512_stream_ps(pa + i, _mm512_fmadd_ps(vs, _mm512_loadu_ps(pc + i), _mm512_loadu_ps(pb + i)));
#endif
    for (; i < end; ++i) pa[i] = pb[i] + scalar * pc[i];
#if ELMFORGE_STREAM_AVX512
    _mm_sfence();  // this thread's streaming stores are done before the op returns
#endif
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmforge, m) {
  m.def("stream_read(Tensor buffer) -> float", &stream_read);
  m.def("stream_triad(Tensor(a!) a, Tensor b, Tensor c, float s) -> ()", &stream_triad);
}
