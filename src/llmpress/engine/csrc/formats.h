// The stored weight formats, shared by the extension's GEMMs (qgemm.cpp: register tiles,
// amx_gemm.cpp: AMX tiles): their decoders and argument checks. Layouts are described at the top
// of qgemm.cpp.
#pragma once
#include <torch/extension.h>
#include <c10/util/Float8_e4m3fn.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define LLMPRESS_AVX512 1
#endif

namespace llmpress {

constexpr int kStep = 64;  // k values per decode step: 8 chunks of 8

// ---------------------------------------------------------------------------------------------
// Decoders: block(n, s) fetches step s of row n; chunk<c>(block) decodes its k = 64s + 8c .. + 7
// to floats, before the group scale.

// int4: masking nibble c in place yields q·16^c, exact in float and one op cheaper than shift + mask.
// The 16^-c is folded into the activations once per call (kInt4Gain). The top nibble is shifted
// down instead, as q·16^7 would overflow int32.
constexpr float kInt4Gain[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 1.0f};
struct Int4Decoder {
  const int32_t* w;
  int64_t ld;  // int32 words per row (Kp / 8)
  __m256i block(int64_t n, int64_t s) const {
    prefetch(w + n * ld + s * 8);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * ld + s * 8));
  }
  template <int c>
  static __m256 chunk(__m256i v) {
    if constexpr (c == 7) return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xF << (4 * c))));
  }
#ifdef LLMPRESS_AVX512
  // 512-bit: the step's 8 words go to both halves; pair p masks nibble p in lanes 0-7 and nibble
  // p + 4 in lanes 8-15, i.e. k = 8p + j and 8(p + 4) + j: an interleaved order the activations
  // are permuted to (prepare_x_interleaved). Unsigned conversion keeps nibble 7 (q·2^28) exact.
  static constexpr bool kInterleaved = true;
  __m512i wide_block(int64_t n, int64_t s) const {
    prefetch(w + n * ld + s * 8);
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * ld + s * 8)));
  }
  template <int p>
  static __m512 wide(__m512i v) {
    const __m512i mask = _mm512_inserti64x4(_mm512_set1_epi32(0xF << (4 * p)), _mm256_set1_epi32(static_cast<int>(0xFu << (4 * p + 16))), 1);
    return _mm512_cvtepu32_ps(_mm512_and_si512(v, mask));
  }
#endif
};

// The one-byte formats' rows: a step is 64 bytes, fetched in place; decoders add chunk / wide.
template <class T>
struct ByteDecoder {
  const T* w;
  int64_t ld;  // Kp
  const T* block(int64_t n, int64_t s) const {
    prefetch(w + n * ld + s * kStep);
    return w + n * ld + s * kStep;
  }
#ifdef LLMPRESS_AVX512
  static constexpr bool kInterleaved = false;  // pair p: k = 16p .. 16p + 15
  const T* wide_block(int64_t n, int64_t s) const { return block(n, s); }
#endif
};

struct Int8Decoder : ByteDecoder<int8_t> {
  template <int c>
  static __m256 chunk(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * c))));
  }
#ifdef LLMPRESS_AVX512
  template <int q>
  static __m512 wide(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q))));
  }
#endif
};

// e4m3fn -> fp16 by moving bits: sign to bit 15, exponent and mantissa to bits 7..13. Exponent bias
// 15 vs 7 makes the fp16 value exactly fp8 · 2^-8, subnormals included, so one F16C convert decodes
// 8 weights exactly (and VCVTPH2PS ignores MXCSR.DAZ); the 2^8 goes into the activations.
// (0x7F, NaN in e4m3fn, decodes to 480; compressed weights hold no NaN.)
struct Fp8Decoder : ByteDecoder<uint8_t> {
  template <int c>
  static __m256 chunk(const uint8_t* p) {
    const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * c)));  // bits 7..15: sign
    return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16(static_cast<short>(0xBFFF))));
  }
#ifdef LLMPRESS_AVX512
  template <int q>
  static __m512 wide(const uint8_t* p) {
    const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q)));
    return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(static_cast<short>(0xBFFF))));
  }
#endif
};

// bf16 -> fp32 is a 16-bit shift.
struct Bf16Decoder {
  const uint16_t* w;
  int64_t ld;  // Kp
  const uint16_t* block(int64_t n, int64_t s) const {  // two cache lines a step
    prefetch(w + n * ld + s * kStep);
    prefetch(w + n * ld + s * kStep + 32);
    return w + n * ld + s * kStep;
  }
  template <int c>
  static __m256 chunk(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#ifdef LLMPRESS_AVX512
  static constexpr bool kInterleaved = false;
  const uint16_t* wide_block(int64_t n, int64_t s) const { return block(n, s); }
  template <int q>
  static __m512 wide(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * q));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
#endif
};

// Per-token dynamic fp8 e4m3 activations, as observers.dynamic_per_token computes them: for one row
// x [K], s = max(amax / 448, 1e-12) and codes[k] = float(e4m3(clamp(x[k] / s, ±448))) (x == codes
// allowed). Returns s; the fake-quantized row is codes · s.
inline float fp8_token_codes(const float* x, int64_t K, float* codes) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float s = std::max(amax / 448.0f, 1e-12f);
  for (int64_t k = 0; k < K; ++k) codes[k] = static_cast<float>(c10::Float8_e4m3fn(std::clamp(x[k] / s, -448.0f, 448.0f)));
  return s;
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

inline void check_x(const at::Tensor& x, int64_t Kp) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float32 [M, K]");
  TORCH_CHECK(x.size(1) <= Kp, "x has ", x.size(1), " columns, the weight ", Kp);
}

template <class T>
inline const T* check_weight(const at::Tensor& w, at::ScalarType dtype, int64_t per_row, const char* what) {
  TORCH_CHECK(w.scalar_type() == dtype && w.dim() == 2 && w.is_contiguous() && w.size(1) % per_row == 0,
              "weight must be contiguous ", what, " with a multiple of ", per_row, " columns");
  return reinterpret_cast<const T*>(w.data_ptr());
}

// -> steps per group (0 when group_size is 32: two groups a step)
inline int64_t check_scale(const at::Tensor& scale, int64_t N, int64_t Kp, int64_t group_size) {
  TORCH_CHECK(group_size == 32 || (group_size > 0 && group_size % kStep == 0), "group_size must be 32 or a multiple of 64");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 2 && scale.size(0) == N &&
                  scale.size(1) == (Kp + group_size - 1) / group_size,
              "scale must be contiguous float32 [N, ceil(Kp / group_size)]");
  return group_size / kStep;
}

inline const int8_t* check_zero_point(const c10::optional<at::Tensor>& zp, const at::Tensor& scale) {
  if (!zp) return nullptr;
  TORCH_CHECK(zp->scalar_type() == at::kChar && zp->is_contiguous() && zp->sizes() == scale.sizes(),
              "zero_point must be contiguous int8 shaped like scale");
  return zp->data_ptr<int8_t>();
}

}  // namespace llmpress
