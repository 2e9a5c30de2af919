// AMX tile basics shared by the AMX GEMMs (amx_gemm.cpp: weight-only; amx_w8a8.cpp: int8 x int8):
// the tile configuration, the transposed store of C and the work split. Intel SDM vol. 1, ch. 3.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "formats.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__) && defined(LLMPRESS_AVX512) && \
    defined(__AVX512BF16__)
#define LLMPRESS_AMX 1
#include <immintrin.h>
#endif

#ifdef LLMPRESS_AMX
namespace llmpress::amx {

constexpr int kRows = 16;       // weight rows n per A tile, and activation rows m per call of the tile loop
constexpr int kTileElems = 512;  // 16 rows x 64 bytes, in bf16 elements

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// All eight tiles 16 rows x 64 bytes. Per thread: every worker loads it before its first tile op.
inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = kRows;
  _tile_loadconfig(&cfg);
}

// t[r][m] holds y[m, n0 + r] (16 rows n x 16 rows m): written transposed, rows m < M and n < N
// only, each row m times col_scale[m] when given.
inline void store_transposed(const float (*t)[16], int64_t M, int64_t N, int64_t n0, const float* col_scale, float* y) {
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
  const __mmask16 valid = N - n0 >= kRows ? 0xFFFF : static_cast<__mmask16>((1u << (N - n0)) - 1);
  for (int64_t m = 0; m < M; ++m) {
    __m512 v = _mm512_i32gather_ps(rows, &t[0][m], 4);
    if (col_scale) v = _mm512_mul_ps(v, _mm512_set1_ps(col_scale[m]));
    _mm512_mask_storeu_ps(y + m * N + n0, valid, v);
  }
}

// Blocks of 16 weight rows per thread, at least: under ~32 KiB of weights a fork costs more than it
// saves (qgemm.cpp's for_each_tile uses the same bound). row_bytes: one row's stored bytes.
inline int64_t block_grain(int64_t row_bytes) { return std::max<int64_t>(1, (int64_t{32} << 10) / (kRows * row_bytes)); }

inline void check_amx_group(int64_t group_size) {
  TORCH_CHECK(group_size % kStep == 0, "the AMX GEMMs need group_size a multiple of 64, got ", group_size);
}

}  // namespace llmpress::amx
#endif
