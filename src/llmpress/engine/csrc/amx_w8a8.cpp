// W8A8 on AMX tiles: int8 x int8 -> int32 (TDPBSSD), exact sums as in qgemm.cpp's int8 tile.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "amx_gemm.h"
#include "amx_tiles.h"
#include "qgemm.h"  // quantize_act_int8

using namespace llmpress;

#ifdef LLMPRESS_AMX
using namespace llmpress::amx;

// W8A8: y[m, n] = s_a[m] · Σ_g s_w[n, g] · Σ_{k in g} q_a[m, k] q_w[n, k], the inner sums exact in
// int32 (TDPBSSD). A is 16 weight rows read in place (64 k = 64 bytes a row); B packs q_a in fours
// (row i: k = 4i .. 4i + 3 of each of the 16 rows m). Steps alternate between C tiles 6 and 7, two
// independent chains, added (in int32) when the group ends.
at::Tensor amx_w8a8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size) {
  TORCH_CHECK(amx_available(), "AMX is not available");
  const int8_t* w = check_weight<int8_t>(weight, at::kChar, kStep, "int8 [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1), M = x.size(0), K = x.size(1), G = scale.size(1);
  check_x(x, Kp);
  const int64_t spg = check_scale(scale, N, Kp, group_size), steps = Kp / kStep;
  check_amx_group(group_size);
  const auto [q, sa] = quantize_act_int8(x);
  const int8_t* qd = q.data_ptr<int8_t>();
  const float *sc = scale.data_ptr<float>(), *sad = sa.data_ptr<float>();
  at::Tensor y = at::empty({M, N}, x.options());
  float* yd = y.data_ptr<float>();
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int64_t mb = std::min<int64_t>(kRows, M - m0);
    std::vector<int8_t> b(steps * 1024, 0);  // [step][16 rows i][16 rows m][4]
    for (int64_t m = 0; m < mb; ++m)
      for (int64_t k = 0; k < K; ++k) b[(k / kStep) * 1024 + (k % kStep) / 4 * 64 + 4 * m + k % 4] = qd[(m0 + m) * K + k];
    at::parallel_for(0, (N + kRows - 1) / kRows, block_grain(Kp), [&](int64_t nb0, int64_t nb1) {
      configure_tiles();
      alignas(64) int8_t a[kRows][kStep];  // the last block's rows, copied (rows past N repeat row N - 1)
      alignas(64) int32_t c[2][kRows][16];
      for (int64_t nb = nb0; nb < nb1; ++nb) {
        const int64_t n0 = nb * kRows;
        const bool whole = n0 + kRows <= N;
        __m512 acc[kRows];
        for (auto& v : acc) v = _mm512_setzero_ps();
        _tile_zero(6);
        _tile_zero(7);
        const int8_t* next = w + std::min(n0 + kRows, N - 1) * Kp;
        for (int64_t s = 0, g = 0; s < steps; ++s) {
          for (int line = 0; line < kRows * kStep; line += 64) _mm_prefetch(next + s * kRows * kStep + line, _MM_HINT_T1);
          if (whole) {
            _tile_loadd(0, w + n0 * Kp + s * kStep, Kp);
          } else {
            for (int r = 0; r < kRows; ++r) std::copy_n(w + std::min(n0 + r, N - 1) * Kp + s * kStep, kStep, a[r]);
            _tile_loadd(0, a, kStep);
          }
          _tile_loadd(2, b.data() + s * 1024, 64);
          if (s % 2 == 0)
            _tile_dpbssd(6, 0, 2);
          else
            _tile_dpbssd(7, 0, 2);
          if ((s + 1) % spg == 0 || s + 1 == steps) {
            _tile_stored(6, c[0], 64);
            _tile_stored(7, c[1], 64);
            _tile_zero(6);
            _tile_zero(7);
            for (int r = 0; r < kRows; ++r) {
              const __m512i sum = _mm512_add_epi32(_mm512_load_si512(c[0][r]), _mm512_load_si512(c[1][r]));
              acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(sc[std::min(n0 + r, N - 1) * G + g]), acc[r]);
            }
            ++g;
          }
        }
        alignas(64) float out[kRows][16];
        for (int r = 0; r < kRows; ++r) _mm512_store_ps(out[r], acc[r]);
        store_transposed(out, mb, N, n0, sad + m0, yd + m0 * N);
      }
      _tile_release();
    });
  }
  return y;
}

#else

at::Tensor amx_w8a8_gemm(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) { TORCH_CHECK(false, "built without AMX"); }

#endif
