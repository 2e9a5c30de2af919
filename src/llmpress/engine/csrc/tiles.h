// The small-M GEMMs' work split (qgemm.cpp's register tiles, int4_vnni.cpp's integer ones): output rows
// n in parallel, each visited by tiles of up to MaxMB activation rows.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "simd.h"

namespace llmpress {

constexpr int kMaxTile = 4;  // activation rows per register tile

// Calls tile(integral_constant<int, MB>, n, m0) for every output row n and every tile of up to 4
// activation rows, in parallel over n. Rows n go in blocks of ~128 KiB of weights, which stay in L2
// while each row tile of x, kept in L1, passes over the block: a weight row is fetched from memory
// once and decoded once per row tile.
template <int MaxMB = kMaxTile, class Tile>
void for_each_tile(int64_t M, int64_t N, int64_t row_bytes, const Tile& tile) {
  row_bytes = std::max<int64_t>(1, row_bytes);
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / row_bytes);  // < 32 KiB a thread: not worth a fork
  const int64_t block = std::max<int64_t>(1, (int64_t{128} << 10) / row_bytes);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
      const int64_t b1 = std::min(n1, b0 + block);
      auto rows = [&](auto mb, int64_t m) {
        for (int64_t n = b0; n < b1; ++n) tile(mb, n, m);
      };
      int64_t m = 0;
      for (; m + MaxMB <= M; m += MaxMB) rows(std::integral_constant<int, MaxMB>{}, m);
      unroll<MaxMB>([&](auto r) {  // the last M % MaxMB rows, as one tile
        if constexpr (r > 0) {
          if (r == M - m) rows(r, m);
        }
      });
    }
  });
}

}  // namespace llmpress
