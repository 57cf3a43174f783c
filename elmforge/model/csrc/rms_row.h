// RMSNorm's scale of one row, shared by elmforge::rms_norm (decode_linear.cpp) and the fused
// attention prologue (decode_fused.cpp) so both give the same bits: the float32 sum of squares
// in order, then 1 / sqrt(mean + eps).
#pragma once

#include <cmath>
#include <cstdint>

namespace elmforge {

template <class T>
inline float rms_inverse(const T* row, int64_t D, float eps) {
  float squares = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float v = static_cast<float>(row[d]);
    squares += v * v;
  }
  return 1.0f / std::sqrt(squares / static_cast<float>(D) + eps);
}

}  // namespace elmforge
