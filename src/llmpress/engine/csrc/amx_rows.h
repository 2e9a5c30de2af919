// The weight formats as AMX A rows, and activations as B tiles, for the weight-only AMX GEMMs
// (amx_gemm.cpp).
#pragma once
#include <vector>

#include "amx_tiles.h"

#ifdef LLMPRESS_AMX
namespace llmpress::amx {

// A's k order within a 64-k step: element e of the step's two A halves (half e / 32) holds
// k = 64s + order[e]. B is built in the same order.
struct KOrder {
  int32_t k[kStep];
};
constexpr KOrder plain_order() {  // the byte formats decode in k order
  KOrder o{};
  for (int e = 0; e < kStep; ++e) o.k[e] = e;
  return o;
}
// int4 decodes by byte: element 4j + b of half h is nibble 2b + h of word j, k = 16b + 8h + j.
constexpr KOrder int4_order() {
  KOrder o{};
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 8; ++j)
      for (int b = 0; b < 4; ++b) o.k[32 * h + 4 * j + b] = 16 * b + 8 * h + j;
  return o;
}

inline __m512 bf16_to_float(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }

// B for rows 0 .. M - 1 <= 15 of x, into b (zeroed: zeros past M): [Kp / 32 halves][hi, lo][16 x 32
// bf16], i.e. per half and part a 16 x 16 matrix of bf16 pairs, row i = pair i of the half, column m.
// gain scales x first (powers of two: exact); with split, lo = bf16(x·gain - hi).
// parts = 1 (bf16_tiles_wide, x as one bf16 part) packs [Kp / 32 halves][16 x 32 bf16], no lo slots.
constexpr int64_t b_size(int64_t Kp, int parts = 2) { return Kp / 32 * parts * kTileElems; }
inline void prepare_b(const float* x, int64_t M, int64_t K, int64_t Kp, const KOrder& order, float gain, bool split, uint16_t* b,
               int parts = 2) {
  std::vector<float> row(Kp, 0.0f);  // x[m] · gain, zero-padded to Kp
  __m512i gather[4];
  for (int q = 0; q < 4; ++q) gather[q] = _mm512_loadu_si512(order.k + 16 * q);
  const __m512i column = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
  auto* b32 = reinterpret_cast<int*>(b);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) row[k] = x[m * K + k] * gain;
    for (int64_t s = 0; s < Kp / kStep; ++s) {
      __m512 v[4];
      for (int q = 0; q < 4; ++q) v[q] = _mm512_i32gather_ps(gather[q], row.data() + s * kStep, 4);
      for (int h = 0; h < 2; ++h) {
        const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(v[2 * h + 1], v[2 * h]);
        int* base = b32 + (2 * s + h) * parts * 256 + m;
        _mm512_i32scatter_epi32(base, column, hi, 4);
        if (split) {
          const __m512 r0 = _mm512_sub_ps(v[2 * h], bf16_to_float(_mm512_castsi512_si256(hi)));
          const __m512 r1 = _mm512_sub_ps(v[2 * h + 1], bf16_to_float(_mm512_extracti64x4_epi64(hi, 1)));
          _mm512_i32scatter_epi32(base + 256, column, (__m512i)_mm512_cvtne2ps_pbh(r1, r0), 4);
        }
      }
    }
  }
}

// The weight formats as A rows. at(n, s): step s of row n, kStepBytes long; decode(p, half0, half1):
// those bytes -> the step's two A rows (32 bf16 each, in kOrder).
//
// The tile loop reads 16 rows side by side, a step of each, so the hardware prefetchers (and
// qgemm.cpp's prefetch along a row) fetch the wrong lines; the loop prefetches the next block's
// rows instead, one block (16 rows) ahead.

// int4: 8 words -> exact q_u - 8 - zp: bytes widened to words, each nibble looked up (vpermw) in a
// table of the 16 bf16 values, which depends on the row's zero point.
struct Int4Rows {
  static constexpr KOrder kOrder = int4_order();
  static constexpr int kStepBytes = 32;
  const int32_t* w;
  int64_t ld;  // words per row
  const int8_t* zp;
  int64_t G, group_size;
  // table[q] = bf16(q - c), q = 0 .. 15 (words 16-31 unused)
  static __m512i table(float c) {
    const __m512 v = _mm512_sub_ps(_mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_ps(c));
    return (__m512i)_mm512_cvtne2ps_pbh(v, v);
  }
  const void* at(int64_t n, int64_t s) const { return w + n * ld + s * 8; }
  void decode(int64_t n, int64_t s, __m512i* half0, __m512i* half1) const {
    static const __m512i symmetric = table(8.0f);
    const __m512i t = zp ? table(8.0f + zp[n * G + s * kStep / group_size]) : symmetric;
    const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(static_cast<const __m256i*>(at(n, s))));
    _mm512_store_si512(half0, _mm512_permutexvar_epi16(_mm512_and_si512(bytes, _mm512_set1_epi16(0x0F)), t));
    _mm512_store_si512(half1, _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), t));
  }
};

// bf16 weights: the stored bits are A's rows.
struct Bf16Rows {
  static constexpr KOrder kOrder = plain_order();
  static constexpr int kStepBytes = 128;
  const uint16_t* w;
  int64_t ld;  // Kp
  const void* at(int64_t n, int64_t s) const { return w + n * ld + s * kStep; }
  void decode(int64_t n, int64_t s, __m512i* half0, __m512i* half1) const {
    const auto* p = static_cast<const uint16_t*>(at(n, s));
    _mm512_store_si512(half0, _mm512_loadu_si512(p));
    _mm512_store_si512(half1, _mm512_loadu_si512(p + 32));
  }
};

// int8 (symmetric) and fp8 (its value · 2^-8; the 2^8 goes into B): the decoders' floats, exact in bf16.
template <class Decoder>
struct ByteRows {
  static constexpr KOrder kOrder = plain_order();
  static constexpr int kStepBytes = 64;
  Decoder dec;
  const void* at(int64_t n, int64_t s) const { return dec.w + n * dec.ld + s * kStep; }
  void decode(int64_t n, int64_t s, __m512i* half0, __m512i* half1) const {
    const auto* p = dec.w + n * dec.ld + s * kStep;  // in place; the tile loop prefetches
    __m512 v[4];
    unroll<4>([&](auto q) { v[q] = Decoder::template wide<q>(p); });
    _mm512_store_si512(half0, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
    _mm512_store_si512(half1, (__m512i)_mm512_cvtne2ps_pbh(v[3], v[2]));
  }
};

}  // namespace llmpress::amx
#endif
