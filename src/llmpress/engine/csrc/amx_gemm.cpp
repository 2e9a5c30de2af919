// GEMMs on Intel AMX tiles (Sapphire Rapids and later) for decode batches and prefill.
//
// The register-tile GEMMs in qgemm.cpp are bound, at M = 16, by FMAs and by loading activations
// from L1: ~50 MAC/ns a core. One AMX TDPBF16PS does a 16x16x32 product (8192 MACs) in ~16 cycles,
// so here decoding the weight is the only real work, as at M = 1, and a batch of 16 costs about
// what one row does.
//
// Layout (Intel SDM vol. 1, ch. 3 "Intel AMX"): C[16 x 16 fp32] += A[16 x 32 bf16] · B[32 x 16 bf16],
// B stored in pairs ("VNNI"): B row i holds (k = 2i, 2i + 1) for each of the 16 columns. We compute
// y^T = W x^T: A is 16 weight rows n, decoded to bf16 in registers and stored to a 1 KiB buffer;
// B is 16 activation rows m, converted once per call. A product's k order is free as long as A and
// B agree, so int4 is decoded in the order its bytes give (int4_order) and B is built to match.
//
// Exactness: A holds the weight's integer (or fp8) value before its scale — q - zp is at most
// 15 in magnitude for int4, 128 for symmetric int8, an fp8 value has 4 significant bits — so bf16
// holds it exactly, and the scale is applied per group to the float32 sums, as qgemm.cpp does.
// Float activations are split x = hi + lo, both bf16 (lo = bf16(x - hi)), and multiplied twice:
// x is then carried to ~2^-17 relative, near float32 summation noise (tests: >= 80 dB vs float64).
// With split = false (the engine's prefill_dtype bf16, prefill GEMMs only) x is rounded to bf16 and
// multiplied once: half the products, bf16's ~-50 dB, as GPUs run W4A16.
// FP8_DYNAMIC activations are e4m3 values times a per-token scale, exact in bf16: one product.
// W8A8 (amx_w8a8.cpp) uses TDPBSSD (int8 x int8 -> int32): exact sums, as in qgemm.cpp's int8 tile.
//
// Tiles, bf16: 0, 1 = A (the two 32-k halves of a 64-k step), 2, 3 = B (the halves' hi or lo part),
// 4 + t and 6 + t = C for block t of 16 rows m in even and odd groups (hi and lo products add into
// the same C: back-to-back dependent products issue at full rate). W8A8 (amx_w8a8.cpp): 0 = A (64 k), 2 = B,
// 6, 7 = C for even and odd steps.
//
// Measured (2 threads, SmolLM2 shapes, us; `benchmarks/engine_kernels.py --crossover`): int4
// 1536x576 g64 at M = 16: ~55 here vs 212 in qgemm.cpp's tiles; at M = 1 the register tiles win
// (23 vs ~55), as decoding into memory and reloading it as a tile costs more than one row's FMAs;
// at M = 256, 0.9 ms vs 1.5 for dequantize + sgemm.
#include "amx_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "amx_rows.h"

#ifdef LLMPRESS_AMX
#include <sys/syscall.h>
#include <unistd.h>

using namespace llmpress;
using namespace llmpress::amx;

namespace {

// Linux hands out AMX state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
// once per process; a kernel or hypervisor that does not allow it makes AMX unavailable.
bool request_amx() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// C tile 4 + T for a compile-time T (GCC's tile intrinsics paste the register number into asm).
#define LLMPRESS_ON_C_TILE(T, OP)                 \
  if constexpr ((T) == 0) OP(4);                  \
  else if constexpr ((T) == 1) OP(5);             \
  else if constexpr ((T) == 2) OP(6);             \
  else OP(7)
#define LLMPRESS_DP_A0(c) _tile_dpbf16ps(c, 0, 2)  // C += A half 0 · B (tile 2)
#define LLMPRESS_DP_A1(c) _tile_dpbf16ps(c, 1, 3)  // C += A half 1 · B (tile 3)
template <int T>
inline void c_zero() { LLMPRESS_ON_C_TILE(T, _tile_zero); }
template <int T>
inline void c_dp_half0() { LLMPRESS_ON_C_TILE(T, LLMPRESS_DP_A0); }
template <int T>
inline void c_dp_half1() { LLMPRESS_ON_C_TILE(T, LLMPRESS_DP_A1); }
template <int T>
inline void c_store(float (*c)[16]) {
#define LLMPRESS_STORE(t) _tile_stored(t, c, 64)
  LLMPRESS_ON_C_TILE(T, LLMPRESS_STORE);
#undef LLMPRESS_STORE
}

// Steps of A are decoded this many steps ahead of their tile loads. A tile load waits for the stores
// of its bytes to reach L1 (no store forwarding into tiles), and stores reach L1 only once retired,
// in order, behind the previous step's tile loads: one step ahead left the first product of every
// step waiting (40% of the loop's samples under perf).
constexpr int kAhead = 2;

// y[m, n] for rows m < M <= 16 · TB: per block of 16 rows n, A is decoded a step at a time (kAhead
// steps ahead) and multiplied into one C tile per block of 16 rows m, hi and lo parts alike, until
// the group ends; then acc += C · s[n, g]. Decoding is shared by the TB <= 2 blocks of rows m.
// col_scale (per row m, or null) multiplies the result: FP8_DYNAMIC's token scales.
template <bool kSplit, int TB, class Rows>
void bf16_tiles(const Rows& rows, const uint16_t* b, int64_t M, int64_t N, int64_t Kp, const float* scale, int64_t G,
                int64_t group_size, const float* col_scale, float* y) {
  const int64_t steps = Kp / kStep, spg = group_size / kStep;
  at::parallel_for(0, (N + kRows - 1) / kRows, block_grain(steps * Rows::kStepBytes), [&](int64_t nb0, int64_t nb1) {
    configure_tiles();
    alignas(64) __m512i a[kAhead + 1][kRows][2];  // [step % (kAhead + 1)][row][half]
    alignas(64) float c[kRows][16];
    for (int64_t nb = nb0; nb < nb1; ++nb) {
      const int64_t n0 = nb * kRows;
      int64_t row[kRows];  // rows past N repeat the last one; their results are dropped
      for (int r = 0; r < kRows; ++r) row[r] = std::min(n0 + r, N - 1);
      const char* next = static_cast<const char*>(rows.at(std::min(n0 + kRows, N - 1), 0));
      auto decode = [&](int64_t s) {
        // the next block's 16 rows are contiguous: fetch them into L2 front to back, a step's share at a time
        for (int line = 0; line < kRows * Rows::kStepBytes; line += 64)
          _mm_prefetch(next + s * kRows * Rows::kStepBytes + line, _MM_HINT_T1);
        for (int r = 0; r < kRows; ++r) rows.decode(row[r], s, &a[s % (kAhead + 1)][r][0], &a[s % (kAhead + 1)][r][1]);
      };
      __m512 acc[TB][kRows];  // registers for TB = 1 (a decode batch), the stack beyond
      for (auto& block : acc)
        for (auto& v : block) v = _mm512_setzero_ps();
      unroll<2 * TB>([&](auto t) { c_zero<t>(); });
      // Groups alternate between two sets of C tiles (4 + t, 6 + t), and a group's sums are stored
      // and scaled only after the next group's first products are issued: storing a C tile waits for
      // its last product, which would otherwise stall every group (every step at group size 64).
      auto products = [&](auto parity, int64_t s) {
        unroll<TB>([&](auto t) {
          constexpr int T = decltype(t)::value + 2 * decltype(parity)::value;
          const uint16_t* bs = b + t * b_size(Kp) + s * 4 * kTileElems;  // [half][hi, lo][512]
          _tile_loadd(2, bs, 64);
          c_dp_half0<T>();
          _tile_loadd(3, bs + 2 * kTileElems, 64);
          c_dp_half1<T>();
          if constexpr (kSplit) {
            _tile_loadd(2, bs + kTileElems, 64);
            c_dp_half0<T>();
            _tile_loadd(3, bs + 3 * kTileElems, 64);
            c_dp_half1<T>();
          }
        });
      };
      auto flush = [&](auto parity, int64_t g) {  // acc += C · s[n, g], C zeroed for group g + 2
        unroll<TB>([&](auto t) {
          constexpr int T = decltype(t)::value + 2 * decltype(parity)::value;
          c_store<T>(c);
          c_zero<T>();
          for (int r = 0; r < kRows; ++r)
            acc[t][r] = _mm512_fmadd_ps(_mm512_load_ps(c[r]), _mm512_set1_ps(scale[row[r] * G + g]), acc[t][r]);
        });
      };
      auto flush_group = [&](int64_t g) {
        if (g & 1)
          flush(std::integral_constant<int, 1>{}, g);
        else
          flush(std::integral_constant<int, 0>{}, g);
      };
      for (int64_t s = 0; s < std::min<int64_t>(kAhead, steps); ++s) decode(s);
      int64_t pending = -1;  // a finished group whose sums wait in its C tiles
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t g = s / spg;
        _tile_loadd(0, &a[s % (kAhead + 1)][0][0], 128);
        _tile_loadd(1, &a[s % (kAhead + 1)][0][1], 128);
        if (s + kAhead < steps) decode(s + kAhead);
        if (g & 1)
          products(std::integral_constant<int, 1>{}, s);
        else
          products(std::integral_constant<int, 0>{}, s);
        if (pending >= 0) flush_group(pending), pending = -1;
        if ((s + 1) % spg == 0 || s + 1 == steps) pending = g;
      }
      flush_group(pending);
      for (int t = 0; t < TB && t * 16 < M; ++t) {
        for (int r = 0; r < kRows; ++r) _mm512_store_ps(c[r], acc[t][r]);
        store_transposed(c, std::min<int64_t>(16, M - 16 * t), N, n0, col_scale ? col_scale + 16 * t : nullptr, y + 16 * t * N);
      }
    }
    _tile_release();
  });
}

// Prefill (17 .. 32 rows m a call): 2 x 2 blocking. Each unit is 32 weight rows n (two A tiles,
// 0 and 1, one 32-k half at a time) against the two blocks of 16 rows m (B tiles 2 and 3), into
// four C tiles, 4 + 2·(n block) + (m block). Every B tile load then feeds two products, where
// bf16_tiles<TB = 2> loaded each B tile for one: at the card's 8B shape (K = 4096 .. 14336) B is
// 0.5 .. 1.8 MiB a call, read from L2 for every block of rows n, and those loads bound that loop.
// No tile is left for bf16_tiles' alternating C sets, so storing a group's C tiles waits for their
// last products: one stall a group (128 k at the card's g128), against 32 products.
// Measured against bf16_tiles<TB = 2> (int4 g128, M = 256, 2 threads, in-process alternated medians
// of 5, CPU time on a shared 2-core Xeon): 28672x4096 253 -> 187 ms, 4096x14336 145 -> 133 ms;
// 6144x4096 and 4096x4096 equal within noise.
template <bool kSplit, class Rows>
void bf16_tiles_2x2(const Rows& rows, const uint16_t* b, int64_t M, int64_t N, int64_t Kp, const float* scale, int64_t G,
                    int64_t group_size, const float* col_scale, float* y) {
  constexpr int kPair = 2 * kRows;  // weight rows n per unit
  const int64_t steps = Kp / kStep, spg = group_size / kStep;
  at::parallel_for(0, (N + kPair - 1) / kPair, block_grain(2 * steps * Rows::kStepBytes), [&](int64_t p0, int64_t p1) {
    configure_tiles();
    alignas(64) __m512i a[kAhead + 1][kPair][2];  // [step % (kAhead + 1)][row][half]
    alignas(64) float c[kRows][16];
    alignas(64) float acc[2][2][kRows][16];  // [n block][m block][row n][row m]
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPair;
      int64_t row[kPair];  // rows past N repeat the last one; their results are dropped
      for (int r = 0; r < kPair; ++r) row[r] = std::min(n0 + r, N - 1);
      const char* next = static_cast<const char*>(rows.at(std::min(n0 + kPair, N - 1), 0));
      auto decode = [&](int64_t s) {  // as in bf16_tiles: the next unit's rows are prefetched into L2
        for (int line = 0; line < kPair * Rows::kStepBytes; line += 64)
          _mm_prefetch(next + s * kPair * Rows::kStepBytes + line, _MM_HINT_T1);
        for (int r = 0; r < kPair; ++r) rows.decode(row[r], s, &a[s % (kAhead + 1)][r][0], &a[s % (kAhead + 1)][r][1]);
      };
      std::fill_n(&acc[0][0][0][0], 2 * 2 * kRows * 16, 0.0f);
      _tile_zero(4);
      _tile_zero(5);
      _tile_zero(6);
      _tile_zero(7);
      // acc[nb][mb] += C · s[n, g] for C tile T = 4 + 2 nb + mb, then C = 0
#define LLMPRESS_FLUSH(T, nb, mb)                                                                  \
  do {                                                                                             \
    _tile_stored(T, c, 64);                                                                        \
    _tile_zero(T);                                                                                 \
    for (int r = 0; r < kRows; ++r) {                                                              \
      const __m512 sum = _mm512_fmadd_ps(_mm512_load_ps(c[r]), _mm512_set1_ps(scale[row[16 * (nb) + r] * G + g]), \
                                         _mm512_load_ps(acc[nb][mb][r]));                          \
      _mm512_store_ps(acc[nb][mb][r], sum);                                                        \
    }                                                                                              \
  } while (0)
      for (int64_t s = 0; s < std::min<int64_t>(kAhead, steps); ++s) decode(s);
      for (int64_t s = 0; s < steps; ++s) {
        const int slot = static_cast<int>(s % (kAhead + 1));
        const uint16_t* b0 = b + s * 4 * kTileElems;  // m block 0, this step: [half][hi, lo][512]
        const uint16_t* b1 = b0 + b_size(Kp);          // m block 1
        for (int h = 0; h < 2; ++h) {
          _tile_loadd(0, &a[slot][0][h], 128);
          _tile_loadd(1, &a[slot][kRows][h], 128);
          for (int part = 0; part < (kSplit ? 2 : 1); ++part) {
            const int64_t off = (2 * h + part) * kTileElems;
            _tile_loadd(2, b0 + off, 64);
            _tile_loadd(3, b1 + off, 64);
            _tile_dpbf16ps(4, 0, 2);
            _tile_dpbf16ps(5, 0, 3);
            _tile_dpbf16ps(6, 1, 2);
            _tile_dpbf16ps(7, 1, 3);
          }
          if (h == 0 && s + kAhead < steps) decode(s + kAhead);
        }
        if ((s + 1) % spg == 0 || s + 1 == steps) {
          const int64_t g = s / spg;
          LLMPRESS_FLUSH(4, 0, 0);
          LLMPRESS_FLUSH(5, 0, 1);
          LLMPRESS_FLUSH(6, 1, 0);
          LLMPRESS_FLUSH(7, 1, 1);
        }
      }
#undef LLMPRESS_FLUSH
      for (int nb = 0; nb < 2 && n0 + kRows * nb < N; ++nb)
        for (int mb = 0; mb < 2 && kRows * mb < M; ++mb)
          store_transposed(acc[nb][mb], std::min<int64_t>(kRows, M - kRows * mb), N, n0 + kRows * nb,
                           col_scale ? col_scale + kRows * mb : nullptr, y + kRows * mb * N);
    }
    _tile_release();
  });
}

// Prefill with x as one bf16 part (the engine's prefill_dtype bf16), more than 32 rows m: the weight is
// decoded once a call, not once per 32 rows m as bf16_tiles_2x2 does (at M = 256 that was 8 decodes of
// every weight, most of the call: 4096x4096 g128 ran at a third of oneDNN's dense bf16 GEMM). Per unit
// of 32 weight rows n and chunk of kChunk steps, A is decoded into L1 with each row's group scale folded
// in, bf16(s · (q - zp)): bf16-grade like x itself, and no per-group flush of the C tiles is needed.
// Then every pair of 16-row m blocks passes over the chunk, 2 x 2 as in bf16_tiles_2x2, its four C
// tiles kept in acc between chunks (b: parts = 1, blocks of 16 rows m, an even count, zeros past M).
template <class Rows>
void bf16_tiles_wide(const Rows& rows, const uint16_t* b, int64_t M, int64_t N, int64_t Kp, const float* scale, int64_t G,
                     int64_t group_size, float* y) {
  constexpr int kPair = 2 * kRows, kChunk = 4;  // a chunk's A and one m pair's B: 16 KiB each
  const int64_t steps = Kp / kStep, spg = group_size / kStep, pairs = (M + kPair - 1) / kPair;
  at::parallel_for(0, (N + kPair - 1) / kPair, block_grain(2 * steps * Rows::kStepBytes), [&](int64_t p0, int64_t p1) {
    configure_tiles();
    alignas(64) __m512i a[kChunk][kPair][2];  // [step in chunk][row n][half]
    std::vector<float> acc_buf(pairs * 4 * kRows * 16 + 16);
    auto* acc = reinterpret_cast<float(*)[4][kRows][16]>((reinterpret_cast<uintptr_t>(acc_buf.data()) + 63) & ~uintptr_t{63});
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPair;
      int64_t row[kPair];  // rows past N repeat the last one; their results are dropped
      for (int r = 0; r < kPair; ++r) row[r] = std::min(n0 + r, N - 1);
      for (int64_t s0 = 0; s0 < steps; s0 += kChunk) {
        const int64_t s1 = std::min<int64_t>(s0 + kChunk, steps);
        for (int64_t s = s0; s < s1; ++s)
          for (int r = 0; r < kPair; ++r) {
            __m512i* h = a[s - s0][r];
            rows.decode(row[r], s, &h[0], &h[1]);
            const __m512 sc = _mm512_set1_ps(scale[row[r] * G + s / spg]);
            for (int half = 0; half < 2; ++half) {
              const __m512 lo = _mm512_mul_ps(bf16_to_float(_mm512_castsi512_si256(h[half])), sc);
              const __m512 hi = _mm512_mul_ps(bf16_to_float(_mm512_extracti64x4_epi64(h[half], 1)), sc);
              h[half] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
          }
        for (int64_t mp = 0; mp < pairs; ++mp) {
          float(*c)[kRows][16] = acc[mp];  // [2 nb + mb][row n][row m]
          if (s0 == 0) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
          } else {
            _tile_loadd(4, c[0], 64);
            _tile_loadd(5, c[1], 64);
            _tile_loadd(6, c[2], 64);
            _tile_loadd(7, c[3], 64);
          }
          const uint16_t* b0 = b + 2 * mp * b_size(Kp, 1);  // m block 2 mp
          const uint16_t* b1 = b0 + b_size(Kp, 1);          // m block 2 mp + 1
          for (int64_t s = s0; s < s1; ++s)
            for (int h = 0; h < 2; ++h) {
              _tile_loadd(0, &a[s - s0][0][h], 128);
              _tile_loadd(1, &a[s - s0][kRows][h], 128);
              _tile_loadd(2, b0 + (2 * s + h) * kTileElems, 64);
              _tile_loadd(3, b1 + (2 * s + h) * kTileElems, 64);
              _tile_dpbf16ps(4, 0, 2);
              _tile_dpbf16ps(5, 0, 3);
              _tile_dpbf16ps(6, 1, 2);
              _tile_dpbf16ps(7, 1, 3);
            }
          _tile_stored(4, c[0], 64);
          _tile_stored(5, c[1], 64);
          _tile_stored(6, c[2], 64);
          _tile_stored(7, c[3], 64);
        }
      }
      for (int64_t mp = 0; mp < pairs; ++mp)
        for (int nb = 0; nb < 2 && n0 + kRows * nb < N; ++nb)
          for (int mb = 0; mb < 2 && kPair * mp + kRows * mb < M; ++mb)
            store_transposed(acc[mp][2 * nb + mb], std::min<int64_t>(kRows, M - kPair * mp - kRows * mb), N, n0 + kRows * nb,
                             nullptr, y + (kPair * mp + kRows * mb) * N);
    }
    _tile_release();
  });
}

// B for rows m0 .. m0 + mb - 1 of x, a block of 16 rows at a time, into b (zeroed by the caller).
inline void prepare_blocks(const at::Tensor& x, int64_t m0, int64_t mb, int64_t Kp, const KOrder& order, float gain, bool split,
                           int parts, uint16_t* b) {
  const int64_t K = x.size(1);
  at::parallel_for(0, (mb + kRows - 1) / kRows, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      prepare_b(x.data_ptr<float>() + (m0 + kRows * t) * K, std::min<int64_t>(kRows, mb - kRows * t), K, Kp, order, gain,
                split, b + t * b_size(Kp, parts), parts);
  });
}

template <class Rows>
at::Tensor bf16_gemm_wide(const Rows& rows, const at::Tensor& x, int64_t N, int64_t Kp, const float* scale, int64_t G,
                          int64_t group_size) {
  const int64_t M = x.size(0), blocks = 2 * ((M + 2 * kRows - 1) / (2 * kRows));  // an even count, zeros past M
  at::Tensor y = at::empty({M, N}, x.options());
  std::vector<uint16_t> b(blocks * b_size(Kp, 1), 0);
  prepare_blocks(x, 0, M, Kp, Rows::kOrder, 1.0f, false, 1, b.data());
  bf16_tiles_wide(rows, b.data(), M, N, Kp, scale, G, group_size, y.data_ptr<float>());
  return y;
}

// Rows of x by blocks of up to 32: B for each, then the tile loop (bf16_tiles<TB = 1> for up to 16
// rows, a decode batch; bf16_tiles_2x2 for 17 .. 32).
template <bool kSplit, class Rows>
at::Tensor bf16_gemm_blocks(const Rows& rows, const at::Tensor& x, int64_t N, int64_t Kp, const float* scale, int64_t G,
                            int64_t group_size, float gain, const float* col_scale = nullptr) {
  const int64_t M = x.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  std::vector<uint16_t> b;
  for (int64_t m0 = 0; m0 < M; m0 += 2 * kRows) {
    const int64_t mb = std::min<int64_t>(2 * kRows, M - m0), tb = (mb + kRows - 1) / kRows;
    b.assign(tb * b_size(Kp), 0);
    prepare_blocks(x, m0, mb, Kp, Rows::kOrder, gain, kSplit, 2, b.data());
    const float* cs = col_scale ? col_scale + m0 : nullptr;
    float* yd = y.data_ptr<float>() + m0 * N;
    if (tb == 1)
      bf16_tiles<kSplit, 1>(rows, b.data(), mb, N, Kp, scale, G, group_size, cs, yd);
    else
      bf16_tiles_2x2<kSplit>(rows, b.data(), mb, N, Kp, scale, G, group_size, cs, yd);
  }
  return y;
}

// The weight-only GEMMs' entry: x as two bf16 parts (split) or one.
template <class Rows>
at::Tensor weight_only_gemm(bool split, const Rows& rows, const at::Tensor& x, int64_t N, int64_t Kp, const float* scale,
                            int64_t G, int64_t group_size) {
  if (split) return bf16_gemm_blocks<true>(rows, x, N, Kp, scale, G, group_size, 1.0f);
  if (x.size(0) > 2 * kRows) return bf16_gemm_wide(rows, x, N, Kp, scale, G, group_size);
  return bf16_gemm_blocks<false>(rows, x, N, Kp, scale, G, group_size, 1.0f);
}

}  // namespace

bool amx_available() {
  static const bool ok = request_amx();
  return ok;
}

at::Tensor amx_int4_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& zero_point, int64_t group_size, bool split) {
  TORCH_CHECK(amx_available(), "AMX is not available");
  const int32_t* w = check_weight<int32_t>(qweight, at::kInt, 8, "int32 blocked int4 [N, Kp / 8]");
  const int64_t N = qweight.size(0), Kp = qweight.size(1) * 8;
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  check_amx_group(group_size);
  const int8_t* zp = check_zero_point(zero_point, scale);
  const Int4Rows rows{w, Kp / 8, zp, scale.size(1), group_size};
  return weight_only_gemm(split, rows, x, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size);
}

at::Tensor amx_int8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                         bool split) {
  TORCH_CHECK(amx_available(), "AMX is not available");
  const int8_t* w = check_weight<int8_t>(weight, at::kChar, kStep, "int8 [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1);
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  check_amx_group(group_size);
  const ByteRows<Int8Decoder> rows{{w, Kp}};
  return weight_only_gemm(split, rows, x, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size);
}

at::Tensor amx_fp8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                        bool dynamic_act) {
  TORCH_CHECK(amx_available(), "AMX is not available");
  const uint8_t* w = check_weight<uint8_t>(weight, at::kByte, kStep, "uint8 (float8_e4m3fn bits) [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1), M = x.size(0), K = x.size(1);
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  check_amx_group(group_size);
  const ByteRows<Fp8Decoder> rows{{w, Kp}};
  if (!dynamic_act)
    return bf16_gemm_blocks<true>(rows, x, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size, 256.0f);
  // Per-token dynamic e4m3 (formats.h): B holds the codes (exact in bf16), s scales the result.
  at::Tensor codes = at::empty({M, K}, x.options());
  std::vector<float> s(M);
  for (int64_t m = 0; m < M; ++m) s[m] = fp8_token_codes(x.data_ptr<float>() + m * K, K, codes.data_ptr<float>() + m * K);
  return bf16_gemm_blocks<false>(rows, codes, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size, 256.0f, s.data());
}

at::Tensor amx_bf16_gemm(const at::Tensor& x, const at::Tensor& weight, bool split) {
  TORCH_CHECK(amx_available(), "AMX is not available");
  const uint16_t* w = check_weight<uint16_t>(weight, at::kShort, kStep, "int16 (bfloat16 bits) [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1);
  check_x(x, Kp);
  static const float kOne = 1.0f;  // one group of Kp, scale 1, for every row (G = 0)
  return weight_only_gemm(split, Bf16Rows{w, Kp}, x, N, Kp, &kOne, 0, Kp);
}


#else  // built without AMX: never available, never called

bool amx_available() { return false; }
at::Tensor amx_int4_gemm(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, bool) {
  TORCH_CHECK(false, "built without AMX");
}
at::Tensor amx_int8_gemm(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool) { TORCH_CHECK(false, "built without AMX"); }
at::Tensor amx_fp8_gemm(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool) { TORCH_CHECK(false, "built without AMX"); }
at::Tensor amx_bf16_gemm(const at::Tensor&, const at::Tensor&, bool) { TORCH_CHECK(false, "built without AMX"); }

#endif