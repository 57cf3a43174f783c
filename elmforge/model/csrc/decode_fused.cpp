// The attention block's small ops of a decode step in one pass (issue 19): from the qkv
// product's output to queries, keys and values ready for attention. In PyTorch this is about 15
// ops per layer (view, split, two RMSNorms, cat, RoPE's float cast, roll, two products, add, cast
// back, split, three transposes), each a dispatch of a few microseconds on tensors of a few KB:
// ~1.5-2 ms of a 30-50 ms OpenELM-270M token on the CPU. Used by eager decode steps only
// (inductor fuses the same ops in the compiled step).
//
// The arithmetic is the eager path's, in the same order, so the results are bit-identical to it:
// RMSNorm as elmforge::rms_norm (float32 sum of squares in order, rounded to the input dtype),
// then RoPE in float32 as x * cos + roll(x, D/2) * sin with each product rounded before the
// add (no fused multiply-add: this function is compiled with -ffp-contract=off), rounded to the
// input dtype. Tested against the plain path in tests/infer/test_speed_paths.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "rms_row.h"

namespace {

template <class T>
__attribute__((optimize("fp-contract=off"))) void norm_rotate_row(
    const T* x, const T* weight, const float* cos, const float* sin, int64_t D, float eps,
    float* scratch, T* out) {
  if (weight) {  // RMSNorm, rounded to T as the separate op's output is
    const float inverse = elmforge::rms_inverse(x, D, eps);
    for (int64_t d = 0; d < D; ++d)
      scratch[d] = static_cast<float>(
          static_cast<T>(static_cast<float>(x[d]) * inverse * static_cast<float>(weight[d])));
  } else {
    for (int64_t d = 0; d < D; ++d) scratch[d] = static_cast<float>(x[d]);
  }
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) {
    const float direct = scratch[d] * cos[d];
    const float rolled = scratch[(d + half) % D] * sin[d];
    out[d] = static_cast<T>(direct + rolled);
  }
}

// qkv: (B, S, H + 2K, D) contiguous; cos/sin: (B, S, 1, D) float32; q_weight/k_weight: (D,) or
// undefined (no query/key norms). Returns q (B, H, S, D), k (B, K, S, D), v (B, K, S, D).
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_rope(
    const at::Tensor& qkv_in, const c10::optional<at::Tensor>& q_weight_in,
    const c10::optional<at::Tensor>& k_weight_in, const at::Tensor& cos_in,
    const at::Tensor& sin_in, double eps, int64_t H, int64_t K) {
  TORCH_CHECK(qkv_in.device().is_cpu() && qkv_in.dim() == 4, "qkv must be (B, S, H + 2K, D)");
  const at::Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), S = qkv.size(1), T = qkv.size(2), D = qkv.size(3);
  TORCH_CHECK(T == H + 2 * K && D % 2 == 0, "qkv has ", T, " heads, expected ", H + 2 * K);
  const at::Tensor cos = cos_in.to(at::kFloat).expand({B, S, 1, D}).contiguous();
  const at::Tensor sin = sin_in.to(at::kFloat).expand({B, S, 1, D}).contiguous();
  const bool norms = q_weight_in.has_value() && q_weight_in->defined();
  at::Tensor q = at::empty({B, H, S, D}, qkv.options());
  at::Tensor k = at::empty({B, K, S, D}, qkv.options());
  at::Tensor v = at::empty({B, K, S, D}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "qkv_rope", [&] {
    using T_ = scalar_t;
    at::Tensor qw, kw;
    if (norms) {
      qw = q_weight_in->to(qkv.scalar_type()).contiguous();
      kw = k_weight_in->to(qkv.scalar_type()).contiguous();
    }
    const T_* src = qkv.data_ptr<T_>();
    const float* cp = cos.data_ptr<float>();
    const float* sp = sin.data_ptr<float>();
    T_* qp = q.data_ptr<T_>();
    T_* kp = k.data_ptr<T_>();
    T_* vp = v.data_ptr<T_>();
    std::vector<float> scratch(D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) {
        const T_* row = src + ((b * S + s) * T) * D;
        const float* c = cp + (b * S + s) * D;
        const float* n = sp + (b * S + s) * D;
        for (int64_t t = 0; t < T; ++t) {
          const T_* x = row + t * D;
          if (t < H) {
            norm_rotate_row<T_>(x, norms ? qw.data_ptr<T_>() : nullptr, c, n, D,
                                static_cast<float>(eps), scratch.data(),
                                qp + ((b * H + t) * S + s) * D);
          } else if (t < H + K) {
            norm_rotate_row<T_>(x, norms ? kw.data_ptr<T_>() : nullptr, c, n, D,
                                static_cast<float>(eps), scratch.data(),
                                kp + ((b * K + (t - H)) * S + s) * D);
          } else {
            std::copy(x, x + D, vp + ((b * K + (t - H - K)) * S + s) * D);
          }
        }
      }
  });
  return {q, k, v};
}

// Rows [start, stop) of an int8 weight (one float32 scale per row) as float32 or bfloat16, in
// one threaded pass: for prompt products (elmforge/model/prefill.py), where the torch expression
// (codes.float() * scale, then a cast) makes three passes and two float32 temporaries. Each value
// is codes * scale in float32, then rounded once to the output dtype.
at::Tensor dequantize_int8_rows(const at::Tensor& qweight, const at::Tensor& scale, int64_t start,
                                int64_t stop, at::ScalarType dtype) {
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kChar && qweight.is_contiguous(),
              "qweight must be contiguous int8 (out_features, in_features)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous(), "scale must be float32");
  TORCH_CHECK(0 <= start && start <= stop && stop <= qweight.size(0), "rows out of range");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dtype must be float32 or bfloat16");
  const int64_t K = qweight.size(1);
  at::Tensor out = at::empty({stop - start, K}, qweight.options().dtype(dtype));
  const int8_t* q = qweight.data_ptr<int8_t>();
  const float* s = scale.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "dequantize_int8_rows", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(start, stop, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int8_t* row = q + n * K;
        scalar_t* target = o + (n - start) * K;
        const float row_scale = s[n];
        for (int64_t k = 0; k < K; ++k)
          target[k] = static_cast<scalar_t>(static_cast<float>(row[k]) * row_scale);
      }
    });
  });
  return out;
}

// An int4 weight (elmforge/model/quant.py's layout: per 32 columns, 16 bytes whose low nibbles are
// columns 0-15 and high nibbles columns 16-31; a nibble q stands for (q - 8) * scale[n, column /
// group_size]) as float32 or bfloat16, in one threaded pass, for prompt products as above: the
// torch expression (quant.dequantize_int4) makes a float32 copy through five passes. Each value is
// (q - 8) * scale in float32, rounded once to the output dtype (bit for bit the torch result).
at::Tensor dequantize_int4_rows(const at::Tensor& qweight, const at::Tensor& scale,
                                int64_t group_size, at::ScalarType dtype) {
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kByte && qweight.is_contiguous(),
              "qweight must be contiguous uint8 (out_features, in_features / 2)");
  const int64_t N = qweight.size(0), K = 2 * qweight.size(1);
  TORCH_CHECK(group_size > 0 && group_size % 32 == 0 && K % group_size == 0,
              "group_size must be a multiple of 32 dividing in_features");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 2 &&
                  scale.size(0) == N && scale.size(1) == K / group_size,
              "scale must be float32 (out_features, in_features / group_size)");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dtype must be float32 or bfloat16");
  at::Tensor out = at::empty({N, K}, qweight.options().dtype(dtype));
  const uint8_t* q = qweight.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  const int64_t groups = K / group_size;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "dequantize_int4_rows", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const uint8_t* row = q + n * (K / 2);
        scalar_t* target = o + n * K;
        for (int64_t block = 0; block < K / 32; ++block) {
          const float block_scale = s[n * groups + block * 32 / group_size];
          const uint8_t* bytes = row + block * 16;
          scalar_t* values = target + block * 32;
          for (int j = 0; j < 16; ++j) {
            values[j] = static_cast<scalar_t>(static_cast<float>((bytes[j] & 0x0F) - 8) * block_scale);
            values[j + 16] = static_cast<scalar_t>(static_cast<float>((bytes[j] >> 4) - 8) * block_scale);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmforge, m) {
  m.def(
      "dequantize_int4_rows(Tensor qweight, Tensor scale, int group_size, ScalarType dtype) "
      "-> Tensor");
  m.def(
      "dequantize_int8_rows(Tensor qweight, Tensor scale, int start, int stop, ScalarType dtype) "
      "-> Tensor");
  m.def(
      "qkv_rope(Tensor qkv, Tensor? q_weight, Tensor? k_weight, Tensor cos, Tensor sin, "
      "float eps, int num_q_heads, int num_kv_heads) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(elmforge, CPU, m) {
  m.impl("qkv_rope", &qkv_rope);
  m.impl("dequantize_int8_rows", &dequantize_int8_rows);
  m.impl("dequantize_int4_rows", &dequantize_int4_rows);
}
