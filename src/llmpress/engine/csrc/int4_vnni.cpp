// int4 weights x int16 activations: the int4 GEMM for small M (decode) on CPUs with AVX512-VNNI
// (Zen 4, Ice Lake and later). Declared in int4_vnni.h; qgemm.cpp's int4_gemm calls it when it applies.
//
// Why: the float-decoded int4 kernel (qgemm.cpp) is bound by its instruction count, not by memory. Each
// 64 weights cost a broadcast, 4 masks, 4 int -> float converts and 4 FMAs a row; on a 2-core Zen 4 it
// streams 12-13 GB/s a thread from L2 and from DRAM alike (benchmarks/README.md, issue 17). Here x is
// quantized once per call to int16, per row and block of 128 k, and each 64 weights cost 1 broadcast,
// 2 shifts, 2 masks and 2 VPDPWSSD (32 int16 products into int32, exact) a row: about half the work.
//
// Precision: x is rounded per row and block of 128 k (64 where the groups are 64) to a multiple of
// amax(block) / 32767, an error of at most 1/65534 of the block's largest |x|: ~-90 dB on Gaussian rows,
// against bf16's -50 dB that GPUs' W4A16 runs with, and one outlier channel coarsens only its own block
// (10^4 x the rest: -81 dB, where one scale per row gives -66). Everything after the rounding is exact
// integer math up to the block's float32 scale. The float32 kernel stays (set_int4_act_bits(32));
// tests hold both to the float64 truth.
//
// Lane order. The blocked layout stores step s of row n as 8 int32 words w_j, nibble t of w_j holding
// k = 64s + 8t + j. In 16-bit lanes word j is (lo_j: nibbles 0-3, hi_j: nibbles 4-7). Broadcast to both
// 256-bit halves h and shifted right by 4h, masking 0xF leaves nibble 4b + h in lane 16h + 2j + b
// (b = 0 for lo, 1 for hi); shifted by 8 more, nibble 4b + h + 2. So decode d in {0, 1} holds
// k = 8(4b + h + 2d) + j in lane 16h + 2j + b, and x is stored in that order: position 32d + 16h + 2j + b
// of a step holds x[64s + 8(4b + h + 2d) + j]. VPDPWSSD adds lanes 2i and 2i + 1 into int32 lane i.
#include <torch/extension.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "formats.h"
#include "int4_vnni.h"
#include "tiles.h"

#if defined(LLMPRESS_AVX512) && defined(__AVX512VNNI__)
#define LLMPRESS_VNNI 1
#endif

namespace {

using namespace llmpress;

#ifdef LLMPRESS_VNNI
bool g_int16 = true;
#else
bool g_int16 = false;
#endif

// Steps per x block: 2 (128 k) or, for groups of 64, 1; every block lies in one weight group, so its
// flush takes one weight scale. |Σ q x| over a block <= 128 · 15 · 32767 fits int32 with room to spare.
constexpr int64_t kMaxBlockSteps = 2;
// k from which a tile takes 4 weight rows (see the driver): on Zen 4 where one x row of int16 passes a
// quarter of L1; on Intel (Sapphire Rapids class) from k = 2048, whose prefetchers serve 4 streams better.
const int64_t kLongRow = __builtin_cpu_is("intel") ? 2048 : 8192;

int64_t block_steps(int64_t spg) { return spg % kMaxBlockSteps == 0 ? kMaxBlockSteps : 1; }

#ifdef LLMPRESS_VNNI
// x [M, K] quantized per (row, block of bs steps): q int16 [M, Kp] in the lane order above, scale
// [M, nb] (x ~ q · scale), and per weight group the sum of the rounded x (gsum [M, G], for the zero
// points' term), computed from the integers, so the offsets cancel exactly what the products hold.
struct Int16Rows {
  std::vector<int16_t> q;
  std::vector<float> scale, gsum;
  int64_t nb = 0;
};

Int16Rows quantize_rows(const at::Tensor& x, int64_t Kp, int64_t bs, int64_t spg, int64_t G) {
  const int64_t M = x.size(0), K = x.size(1), steps = Kp / kStep;
  Int16Rows r;
  r.nb = (steps + bs - 1) / bs;
  r.q.resize(M * Kp);
  r.scale.assign(M * r.nb, 0.0f);
  r.gsum.assign(M * G, 0.0f);
  std::vector<float> row(Kp, 0.0f);  // one row, zero-padded to Kp
  const float* xd = x.data_ptr<float>();
  const __m256i lo16 = _mm256_set1_epi32(0xFFFF), top = _mm256_set1_epi32(32767), bottom = _mm256_set1_epi32(-32767);
  for (int64_t m = 0; m < M; ++m) {
    std::memcpy(row.data(), xd + m * K, K * sizeof(float));
    int16_t* qm = r.q.data() + m * Kp;
    for (int64_t b = 0; b < r.nb; ++b) {
      const int64_t s0 = b * bs, s1 = std::min(steps, s0 + bs);
      __m512 amax = _mm512_setzero_ps();
      for (int64_t k = s0 * kStep; k < s1 * kStep; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(&row[k])));
      const float a = _mm512_reduce_max_ps(amax), s = a / 32767.0f;
      const __m256 inv = _mm256_set1_ps(a > 0.0f ? 32767.0f / a : 0.0f);
      __m256i sum = _mm256_setzero_si256();
      for (int64_t st = s0; st < s1; ++st) {
        const float* xs = &row[st * kStep];
        for (int t = 0; t < 4; ++t) {  // chunks t (b = 0) and t + 4 (b = 1) interleave into 16 lanes
          auto code = [&](const float* p) {  // round half to even, as MXCSR's default; clamp stray 32768s
            const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), inv));
            return _mm256_max_epi32(bottom, _mm256_min_epi32(top, c));
          };
          const __m256i c0 = code(xs + 8 * t), c1 = code(xs + 8 * t + 32);
          sum = _mm256_add_epi32(sum, _mm256_add_epi32(c0, c1));
          const int d = (t >> 1) & 1, h = t & 1;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(qm + st * kStep + 32 * d + 16 * h),
                              _mm256_or_si256(_mm256_and_si256(c0, lo16), _mm256_slli_epi32(c1, 16)));
        }
      }
      r.scale[m * r.nb + b] = s;
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
      int64_t total = 0;
      for (int32_t v : lanes) total += v;
      r.gsum[m * G + s0 / spg] += s * static_cast<float>(total);
    }
  }
  return r;
}

// NB weight rows (n, n + 1, ...; ld int32 words apart) against MB rows of x:
// y[m][r] = Σ_blocks s_w[r][g] · s_x[m, b] · Σ q_u · x_q, q_u the stored unsigned nibble (the -8 - zp is
// the offsets' term, after). Each x vector is loaded once and used by the NB rows: x is int16, 4x the
// weight's bytes a step, and with one row per x load the long rows' x (28 KiB at K = 14336) streamed
// from L2 as fast as the weights from memory (4096 x 14336 cold: 10.3 GB/s a thread against 15.4 for
// 28672 x 4096). Every (m, r) keeps two int32 chains, one per decode.
template <int MB, int NB>
inline void int16_tile(const int32_t* w, int64_t ld, const int16_t* xq, int64_t Kp, int64_t steps, int64_t bs, int64_t spg,
                       const float* sw, int64_t G, const float* sx, int64_t nb, float out[MB][NB]) {
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i mask = _mm512_set1_epi16(0xF);
  __m512 acc[MB][NB];
  __m512i part[MB][NB][2];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < NB; ++r) {
      acc[m][r] = _mm512_setzero_ps();
      part[m][r][0] = part[m][r][1] = _mm512_setzero_si512();
    }
  const int64_t blocks_per_group = spg / bs;
  for (int64_t s = 0, b = 0, g = 0, left = bs, left_g = blocks_per_group; s < steps; ++s) {
    __m512i d0[NB], d1[NB];
    for (int r = 0; r < NB; ++r) {
      const int32_t* ws = w + r * ld + 8 * s;
      prefetch(ws + (NB - 1) * ld);  // 4 KiB past the tile's last row: where the stream will be
      const __m512i v = _mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws))), shift);
      d0[r] = _mm512_and_si512(v, mask), d1[r] = _mm512_and_si512(_mm512_srli_epi16(v, 8), mask);
    }
    for (int m = 0; m < MB; ++m) {
      const int16_t* xs = xq + m * Kp + s * kStep;
      const __m512i x0 = _mm512_loadu_si512(xs), x1 = _mm512_loadu_si512(xs + 32);
      for (int r = 0; r < NB; ++r) {
        part[m][r][0] = _mm512_dpwssd_epi32(part[m][r][0], d0[r], x0);
        part[m][r][1] = _mm512_dpwssd_epi32(part[m][r][1], d1[r], x1);
      }
    }
    if (--left == 0 || s + 1 == steps) {
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < NB; ++r) {
          const __m512i p = _mm512_add_epi32(part[m][r][0], part[m][r][1]);  // exact: a block's |Σ| fits int32
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(sw[r * G + g] * sx[m * nb + b]), acc[m][r]);
          part[m][r][0] = part[m][r][1] = _mm512_setzero_si512();
        }
      ++b, left = bs;
      if (--left_g == 0) ++g, left_g = blocks_per_group;
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < NB; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);
}

// Σ_g s_w[g] · (8 + zp[g]) · gsum[g]: what the unsigned nibbles' offset added to one output.
inline float offset_term(const float* sw, const int8_t* zp, const float* gsum, int64_t G) {
  __m512 acc = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= G; g += 16) {
    __m512 c = _mm512_set1_ps(8.0f);
    if (zp) c = _mm512_add_ps(c, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + g)))));
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(sw + g), c), _mm512_loadu_ps(gsum + g), acc);
  }
  float total = _mm512_reduce_add_ps(acc);
  for (; g < G; ++g) total += sw[g] * (8.0f + (zp ? zp[g] : 0)) * gsum[g];
  return total;
}
#endif

}  // namespace

bool int4_int16_applies(int64_t group_size) { return g_int16 && group_size % kStep == 0; }

at::Tensor int4_gemm_int16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                           const c10::optional<at::Tensor>& zero_point, int64_t group_size) {
#ifdef LLMPRESS_VNNI
  const int32_t* w = check_weight<int32_t>(qweight, at::kInt, 8, "int32 blocked int4 [N, Kp / 8]");
  const int64_t N = qweight.size(0), Kp = qweight.size(1) * 8, M = x.size(0), steps = Kp / kStep;
  check_x(x, Kp);
  const int64_t spg = check_scale(scale, N, Kp, group_size), G = scale.size(1);
  TORCH_CHECK(spg > 0, "the int16 int4 GEMM needs groups of a multiple of 64 k");
  const int8_t* zp = check_zero_point(zero_point, scale);
  const int64_t bs = block_steps(spg);
  const Int16Rows xq = quantize_rows(x, Kp, bs, spg, G);
  at::Tensor y = at::empty({M, N}, x.options());
  float* yd = y.data_ptr<float>();
  const float* sc = scale.data_ptr<float>();
  // Output rows in parallel, in blocks of ~128 KiB of weights that stay in L2 while each tile of x rows
  // passes over them. Tiles: up to 4 x rows by 2 weight rows; one x row by 1 weight row, or by 4 where
  // its x outgrows L1 (Kp >= kLongRow). Several weight rows side by side are several streams, which the
  // prefetchers serve worse: at M = 1, K = 4096 (2-core Zen 4, cold weights, one thread) 4 rows a tile
  // streamed 8-11 GB/s against 12-15 for one; at K = 14336, 11.4-11.9 against 9.5-10.3. On a 2-core Xeon
  // with AMX (2 threads, 12 cold 28672 x 4096 weights) it is the other way: 4 rows 22-23 GB/s, one 17-19.
  // With x shared by 2 rows, M = 4 and 16 took 10-30% less time than with 1.
  const int64_t ld = Kp / 8, row_bytes = Kp / 2;
  const int64_t grain = std::max<int64_t>(2, (int64_t{32} << 10) / row_bytes);
  const int64_t block = std::max<int64_t>(4, (int64_t{128} << 10) / row_bytes);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
      const int64_t b1 = std::min(n1, b0 + block);
      auto rows = [&](auto mb, int64_t m0) {
        constexpr int MB = decltype(mb)::value;
        auto one = [&](auto nbc, int64_t n) {
          constexpr int R = decltype(nbc)::value;
          float out[MB][R];
          int16_tile<MB, R>(w + n * ld, ld, xq.q.data() + m0 * Kp, Kp, steps, bs, spg, sc + n * G, G,
                            xq.scale.data() + m0 * xq.nb, xq.nb, out);
          for (int m = 0; m < MB; ++m)
            for (int r = 0; r < R; ++r)
              yd[(m0 + m) * N + n + r] =
                  out[m][r] - offset_term(sc + (n + r) * G, zp ? zp + (n + r) * G : nullptr, xq.gsum.data() + (m0 + m) * G, G);
        };
        auto sweep = [&](auto nbc) {
          constexpr int NB = decltype(nbc)::value;
          int64_t n = b0;
          for (; n + NB <= b1; n += NB) one(nbc, n);
          for (; n < b1; ++n) one(std::integral_constant<int, 1>{}, n);
        };
        if constexpr (MB > 1)
          sweep(std::integral_constant<int, 2>{});
        else if (Kp >= kLongRow)
          sweep(std::integral_constant<int, 4>{});
        else
          sweep(std::integral_constant<int, 1>{});
      };
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) rows(std::integral_constant<int, 4>{}, m);
      unroll<4>([&](auto r) {  // the last M % 4 rows, as one tile
        if constexpr (r > 0) {
          if (r == M - m) rows(r, m);
        }
      });
    }
  });
  return y;
#else
  TORCH_CHECK(false, "the int16 int4 GEMM is not built in (needs AVX512-VNNI)");
#endif
}

bool int4_int16_built() {
#ifdef LLMPRESS_VNNI
  return true;
#else
  return false;
#endif
}

int64_t int4_act_bits() { return g_int16 ? 16 : 32; }

void set_int4_act_bits(int64_t bits) {
  TORCH_CHECK(bits == 32 || (bits == 16 && int4_int16_built()), "int4 activations of ", bits, " bits are not built in");
  g_int16 = bits == 16;
}
