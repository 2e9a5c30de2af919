// Fused dequantize + GEMM for small M (decode) on AVX2 + FMA + F16C CPUs (declared in qgemm.h, bound
// in bindings.cpp; the per-layer ops are in layer_ops.cpp).
//
// Every GEMM computes y[M, N] = x[M, K] @ W[N, K]^T with float32 x and y. The weight is read in its
// compressed form and decoded in registers, a step of 64 k values (8 AVX2 vectors, or 4 AVX-512
// ones where the build has AVX-512) at a time; each decoded vector is reused across a tile of up
// to 4 activation rows, so M = 16 decodes the weight 4 times, not 16. Work is split over output
// rows n with at::parallel_for.
//
// Weight layouts (k zero-padded to Kp, a multiple of 64):
//   int4  int32  [N, Kp/8]  "blocked": 8 words hold 64 k values, nibble t of word j holds k = 8t + j
//                           (unsigned q + 8), so one 256-bit load holds 8 consecutive k per nibble.
//   int8  int8   [N, Kp]    W8A16 and W8A8
//   fp8   uint8  [N, Kp]    float8_e4m3fn bits
//   bf16  int16  [N, Kp]    bfloat16 bits, unscaled
// Scales are float32 [N, Gp], one per group of `group_size` k: 32 or a multiple of 64, channel-wise
// as one group of Kp; Gp = ceil(Kp / group_size), zero past the real groups. Padded k columns meet
// zero-padded activations, so they add nothing whatever the weight holds there.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Float8_e4m3fn.h>
#include <immintrin.h>

#include "formats.h"
#include "int4_vnni.h"
#include "qgemm.h"
#include "simd.h"
#include "tiles.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace {

using namespace llmpress;

constexpr int kMaxWideTile = 8;  // ... with AVX-512's 32 registers

// Built with AVX-512 (-march=native on such a CPU), the float-decoded GEMMs use 512-bit tiles;
// set_wide(false) switches back to the AVX2 ones, so tests can check both against the reference.
#ifdef LLMPRESS_AVX512
#define LLMPRESS_WIDE_BUILT true
bool g_wide = true;
#else
#define LLMPRESS_WIDE_BUILT false
bool g_wide = false;
#endif

// ---------------------------------------------------------------------------------------------
// The tiles: MB activation rows · one weight row n. Within a group, A accumulators per row
// (part[m][a]); at the group's end  acc[m] += scale[g] · Σ_a part[m][a].  Groups end every
// `steps_per_group` steps, or twice a step when kHalf (group size 32). A group's part chains do not
// depend on the last group's, so out-of-order execution overlaps short groups (32, 64) and few
// chains suffice; long groups and channel-wise scales need 2-4 a row to hide the FMA latency.
template <int MB, int A, bool kHalf, class Decoder>
inline void float_tile(const Decoder& dec, int64_t n, const float* x, int64_t ldx, int64_t steps,
                       int64_t steps_per_group, const float* scale, float out[MB]) {
  __m256 acc[MB], part[MB][A];
  const float* xr[MB];  // one pointer per row: [reg + constant] addressing in the unrolled body
  for (int m = 0; m < MB; ++m) {
    acc[m] = _mm256_setzero_ps();
    for (int a = 0; a < A; ++a) part[m][a] = _mm256_setzero_ps();
    xr[m] = x + m * ldx;
  }
  auto flush = [&]() {
    const __m256 sv = _mm256_broadcast_ss(scale++);
    for (int m = 0; m < MB; ++m) {
      __m256 p = part[m][0];
      for (int a = 1; a < A; ++a) p = _mm256_add_ps(p, part[m][a]);
      acc[m] = _mm256_fmadd_ps(p, sv, acc[m]);
      for (int a = 0; a < A; ++a) part[m][a] = _mm256_setzero_ps();
    }
  };
  for (int64_t s = 0, left = steps_per_group; s < steps; ++s) {
    const auto block = dec.block(n, s);
    unroll<8>([&](auto c) {
      const __m256 w = Decoder::template chunk<c>(block);
      for (int m = 0; m < MB; ++m)
        part[m][c % A] = _mm256_fmadd_ps(_mm256_loadu_ps(xr[m] + 8 * c), w, part[m][c % A]);
      if constexpr (kHalf && c == 3) flush();
    });
    for (int m = 0; m < MB; ++m) xr[m] += kStep;
    if (kHalf || --left == 0 || s + 1 == steps) {
      flush();
      left = steps_per_group;
    }
  }
  for (int m = 0; m < MB; ++m) out[m] = hsum(acc[m]);
}

#ifdef LLMPRESS_AVX512
// float_tile with 512-bit vectors: 16 k per FMA, a step as 4 pairs of chunks. Groups of 32 end
// mid-step: after pair 1 for the consecutive orders, and, for int4's interleaved one, in the
// middle of every vector, so its flush scales lanes 0-7 and 8-15 by the step's two groups.
template <int MB, int A, bool kHalf, class Decoder>
inline void wide_tile(const Decoder& dec, int64_t n, const float* x, int64_t ldx, int64_t steps,
                      int64_t steps_per_group, const float* scale, float out[MB]) {
  __m512 acc[MB], part[MB][A];
  const float* xr[MB];
  for (int m = 0; m < MB; ++m) {
    acc[m] = _mm512_setzero_ps();
    for (int a = 0; a < A; ++a) part[m][a] = _mm512_setzero_ps();
    xr[m] = x + m * ldx;
  }
  auto flush = [&](__m512 sv) {
    for (int m = 0; m < MB; ++m) {
      __m512 p = part[m][0];
      for (int a = 1; a < A; ++a) p = _mm512_add_ps(p, part[m][a]);
      acc[m] = _mm512_fmadd_ps(p, sv, acc[m]);
      for (int a = 0; a < A; ++a) part[m][a] = _mm512_setzero_ps();
    }
  };
  auto next_scale = [&]() { return _mm512_set1_ps(*scale++); };
  for (int64_t s = 0, left = steps_per_group; s < steps; ++s) {
    const auto block = dec.wide_block(n, s);
    unroll<4>([&](auto p) {
      const __m512 w = Decoder::template wide<p>(block);
      for (int m = 0; m < MB; ++m)
        part[m][p % A] = _mm512_fmadd_ps(_mm512_loadu_ps(xr[m] + 16 * p), w, part[m][p % A]);
      if constexpr (kHalf && !Decoder::kInterleaved && p == 1) flush(next_scale());
    });
    for (int m = 0; m < MB; ++m) xr[m] += kStep;
    if constexpr (kHalf && Decoder::kInterleaved) {
      flush(_mm512_insertf32x8(_mm512_set1_ps(scale[0]), _mm256_set1_ps(scale[1]), 1));
      scale += 2;
    } else if (kHalf || --left == 0 || s + 1 == steps) {
      flush(next_scale());
      left = steps_per_group;
    }
  }
  for (int m = 0; m < MB; ++m) out[m] = _mm512_reduce_add_ps(acc[m]);
}
#endif

// W8A8: int16 activations · sign-extended int16 weights with vpmaddwd, exact int32 sums inside a group
// (|sum| < K · 2^14: no overflow below K = 131072), converted and scaled at the group's end.
template <int MB, bool kHalf>
inline void int8_tile(const int8_t* w, const int16_t* x, int64_t ldx, int64_t steps, int64_t steps_per_group,
                      const float* scale, float out[MB]) {
  __m256 acc[MB];
  __m256i part[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps(), part[m] = _mm256_setzero_si256();
  auto flush = [&]() {
    const __m256 sv = _mm256_broadcast_ss(scale++);
    for (int m = 0; m < MB; ++m) {
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(part[m]), sv, acc[m]);
      part[m] = _mm256_setzero_si256();
    }
  };
  const int16_t* xr[MB];
  for (int m = 0; m < MB; ++m) xr[m] = x + m * ldx;
  for (int64_t s = 0, left = steps_per_group; s < steps; ++s, w += kStep) {
    prefetch(w);
    unroll<4>([&](auto c) {  // 16 k at a time
      const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * c)));
      for (int m = 0; m < MB; ++m)
        part[m] = _mm256_add_epi32(
            part[m], _mm256_madd_epi16(wv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[m] + 16 * c))));
      if constexpr (kHalf && c == 1) flush();
    });
    for (int m = 0; m < MB; ++m) xr[m] += kStep;
    if (kHalf || --left == 0 || s + 1 == steps) {
      flush();
      left = steps_per_group;
    }
  }
  for (int m = 0; m < MB; ++m) out[m] = hsum(acc[m]);
}

// ---------------------------------------------------------------------------------------------
// Activation preparation.

// These run once per call, on one thread, before the parallel GEMM, so they are written as
// vector loops over whole 8-k chunks (a row's last K % 8 values one by one): as scalar loops,
// with a division per element for the group index, they took ~70 us of a 1536 -> 576 call at
// M = 16 (the whole GEMM: ~300 us).

// x [M, K] -> float32 [M, Kp], zero-padded: x[m, k] · gain[(k / 8) % 8] (powers of two: exact)
// stored at column place(k), a permutation within each 64-k step that keeps 8-k chunks whole.
template <class Place>
at::Tensor prepare_rows(const at::Tensor& x, int64_t Kp, const float* gain, const Place& place) {
  const int64_t M = x.size(0), K = x.size(1), K8 = K & ~int64_t{7};
  at::Tensor out = K == Kp ? at::empty({M, Kp}, x.options()) : at::zeros({M, Kp}, x.options());  // padding: zeros
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* s = src + m * K;
    float* d = dst + m * Kp;
    for (int64_t k = 0; k < K8; k += 8)
      _mm256_storeu_ps(d + place(k), _mm256_mul_ps(_mm256_loadu_ps(s + k), _mm256_set1_ps(gain[(k >> 3) & 7])));
    for (int64_t k = K8; k < K; ++k) d[place(k)] = s[k] * gain[(k >> 3) & 7];
  }
  return out;
}

// In k order, times gain (default 1).
at::Tensor prepare_x(const at::Tensor& x, int64_t Kp, const float* gain = nullptr) {
  static constexpr float kOnes[8] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  return prepare_rows(x, Kp, gain ? gain : kOnes, [](int64_t k) { return k; });
}

// For the 512-bit int4 tile: in every step of 64 k, pair p (16 floats) = x[8p .. 8p + 7] · 16^-p,
// then x[8(p + 4) .. 8(p + 4) + 7] · 16^-(p + 4), i.e. chunk c = (k / 8) % 8 in pair c % 4, half c / 4.
at::Tensor prepare_x_interleaved(const at::Tensor& x, int64_t Kp) {
  static constexpr float kGain[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 0x1p-28f};
  return prepare_rows(x, Kp, kGain, [](int64_t k) {
    const int64_t c = (k >> 3) & 7;
    return (k & ~int64_t{63}) + 16 * (c & 3) + 8 * (c >> 2) + (k & 7);
  });
}

// The zero-point term of w = (q - c) · s with c = base + zp[n, g] (int4: base 8, the unsigned
// offset): the tiles sum s · Σ x q, and  y[m, n] -= Σ_g s[n, g] · c[n, g] · Σ_{k in g} x[m, k],
// computed beside each tile, in the same pass over the rows (the scales are still in L1).
struct Offsets {
  std::vector<float> sums;  // [M, G]: Σ x per row and group
  int64_t G = 0;
  const int8_t* zp = nullptr;  // [N, G] or none
  float base = 0.0f;
  bool none() const { return sums.empty(); }
};

Offsets offsets_for(const at::Tensor& x, int64_t G, int64_t group_size, const int8_t* zp, float base) {
  Offsets o;
  if (base == 0.0f && zp == nullptr) return o;
  const int64_t M = x.size(0), K = x.size(1);
  o.sums.assign(M * G, 0.0f);
  o.G = G, o.zp = zp, o.base = base;
  const float* xd = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xd + m * K;
    for (int64_t g = 0, k0 = 0; k0 < K; ++g, k0 += group_size) {  // group sizes are multiples of 8 (32 or 64j)
      const int64_t k1 = std::min(K, k0 + group_size), k8 = k0 + ((k1 - k0) & ~int64_t{7});
      __m256 acc = _mm256_setzero_ps();
      for (int64_t k = k0; k < k8; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(r + k));
      float total = hsum(acc);
      for (int64_t k = k8; k < k1; ++k) total += r[k];
      o.sums[m * G + g] = total;
    }
  }
  return o;
}

inline float offset_term(const Offsets& o, const float* sc, int64_t n, int64_t m) {  // sc: row n's scales
  const int64_t G = o.G;
  const float* sums = o.sums.data() + m * G;
  const int8_t* zp = o.zp ? o.zp + n * G : nullptr;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    __m256 c = _mm256_set1_ps(o.base);
    if (zp) c = _mm256_add_ps(c, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(zp + g)))));
    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(sc + g), c), _mm256_loadu_ps(sums + g), acc);
  }
  float total = hsum(acc);
  for (; g < G; ++g) total += sc[g] * (o.base + (zp ? zp[g] : 0)) * sums[g];
  return total;
}

// The float-decoded formats' driver: y [M, N] from prepared activations xp [M, Kp].
template <class Decoder>
at::Tensor float_gemm(const Decoder& dec, const at::Tensor& xp, int64_t N, int64_t row_bytes, const float* scale,
                      int64_t G, int64_t group_size, const Offsets& off = Offsets{}) {
  const int64_t M = xp.size(0), Kp = xp.size(1), spg = group_size / kStep;
  at::Tensor y = at::empty({M, N}, xp.options());
  const float* xs = xp.data_ptr<float>();
  float* yd = y.data_ptr<float>();
#ifdef LLMPRESS_AVX512
  if (g_wide) {  // 32 registers: tiles of up to kMaxWideTile rows
    auto tile = [&](auto mb, int64_t n, int64_t m0) {
      constexpr int MB = decltype(mb)::value;
      float out[MB];
      const float* sn = scale + n * G;
      const float* xm = xs + m0 * Kp;
      if (group_size == 32)
        wide_tile<MB, 1, true>(dec, n, xm, Kp, Kp / kStep, 1, sn, out);
      else if (spg == 1 || MB > 4)
        wide_tile<MB, MB == 1 ? 2 : 1, false>(dec, n, xm, Kp, Kp / kStep, spg, sn, out);
      else
        wide_tile<MB, MB == 1 ? 4 : 2, false>(dec, n, xm, Kp, Kp / kStep, spg, sn, out);
      for (int m = 0; m < MB; ++m) yd[(m0 + m) * N + n] = off.none() ? out[m] : out[m] - offset_term(off, sn, n, m0 + m);
    };
    // A tile's activation rows (MB · Kp floats) are read once per weight row, so they must stay
    // in L1. Measured (SmolLM2's 1536 -> 576 at M = 16, interleaved A/B): 8 rows (48 KiB) 381 us,
    // 4 rows (24 KiB) 239 us; 4096 x 4096 int4: 8 rows 7.3 ms, 4 rows 6.4, 2 rows 6.0; 576 -> 1536
    // does not care. So the most rows whose x fits in 32 KiB, and at least 2.
    const int64_t fit = (int64_t{32} << 10) / (Kp * int64_t{sizeof(float)});
    if (fit >= 8)
      for_each_tile<kMaxWideTile>(M, N, row_bytes, tile);
    else if (fit >= 4)
      for_each_tile<4>(M, N, row_bytes, tile);
    else
      for_each_tile<2>(M, N, row_bytes, tile);
    return y;
  }
#endif
  for_each_tile(M, N, row_bytes, [&](auto mb, int64_t n, int64_t m0) {
    constexpr int MB = decltype(mb)::value;
    float out[MB];
    const float* sn = scale + n * G;
    const float* xm = xs + m0 * Kp;
    if (group_size == 32)
      float_tile<MB, 1, true>(dec, n, xm, Kp, Kp / kStep, 1, sn, out);
    else if (spg == 1)
      float_tile<MB, MB == 1 ? 2 : 1, false>(dec, n, xm, Kp, Kp / kStep, spg, sn, out);
    else
      float_tile<MB, MB == 1 ? 4 : 2, false>(dec, n, xm, Kp, Kp / kStep, spg, sn, out);
    for (int m = 0; m < MB; ++m) yd[(m0 + m) * N + n] = off.none() ? out[m] : out[m] - offset_term(off, sn, n, m0 + m);
  });
  return y;
}

// Per-token dynamic fp8 fake-quantization of rows of x (ld floats apart), in place: codes · s.
void fp8_fake_quant_rows(float* x, int64_t M, int64_t K, int64_t ld) {
  for (int64_t m = 0; m < M; ++m) {
    float* r = x + m * ld;
    const float s = fp8_token_codes(r, K, r);
    for (int64_t k = 0; k < K; ++k) r[k] *= s;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GEMMs (x [M, K] float32 -> y [M, N] float32)

// int4: w = (q_u - 8 - zp) · s, q_u the stored unsigned nibble.
at::Tensor int4_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& zero_point, int64_t group_size) {
  const int32_t* w = check_weight<int32_t>(qweight, at::kInt, 8, "int32 blocked int4 [N, Kp / 8]");
  const int64_t N = qweight.size(0), Kp = qweight.size(1) * 8;
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  const int8_t* zp = check_zero_point(zero_point, scale);
  if (g_wide && int4_int16_applies(group_size)) return int4_gemm_int16(x, qweight, scale, zero_point, group_size);
  const at::Tensor xp = g_wide ? prepare_x_interleaved(x, Kp) : prepare_x(x, Kp, kInt4Gain);
  return float_gemm(Int4Decoder{w, Kp / 8}, xp, N, Kp / 2, scale.data_ptr<float>(), scale.size(1), group_size,
                    offsets_for(x, scale.size(1), group_size, zp, 8.0f));
}

// int8 weight-only (W8A16): w = (q - zp) · s.
at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& zero_point, int64_t group_size) {
  const int8_t* w = check_weight<int8_t>(weight, at::kChar, kStep, "int8 [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1);
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  const int8_t* zp = check_zero_point(zero_point, scale);
  const at::Tensor xp = x.size(1) == Kp ? x : prepare_x(x, Kp);
  return float_gemm(Int8Decoder{w, Kp}, xp, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size,
                    offsets_for(x, scale.size(1), group_size, zp, 0.0f));
}

// fp8 e4m3 weights (uint8 view), float32 math; dynamic_act fake-quantizes each activation row to fp8 first.
at::Tensor fp8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                    bool dynamic_act) {
  const uint8_t* w = check_weight<uint8_t>(weight, at::kByte, kStep, "uint8 (float8_e4m3fn bits) [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1);
  check_x(x, Kp);
  check_scale(scale, N, Kp, group_size);
  at::Tensor xp = prepare_x(x, Kp);
  if (dynamic_act) fp8_fake_quant_rows(xp.data_ptr<float>(), x.size(0), x.size(1), Kp);
  xp.mul_(256.0f);  // undoes the decoder's 2^-8 (exact)
  return float_gemm(Fp8Decoder{w, Kp}, xp, N, Kp, scale.data_ptr<float>(), scale.size(1), group_size);
}

// bf16 weights (int16 view), unscaled.
at::Tensor bf16_gemm(const at::Tensor& x, const at::Tensor& weight) {
  const uint16_t* w = check_weight<uint16_t>(weight, at::kShort, kStep, "int16 (bfloat16 bits) [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1);
  check_x(x, Kp);
  const at::Tensor xp = x.size(1) == Kp ? x : prepare_x(x, Kp);
  static const float kOne = 1.0f;  // one group, scale 1, for every row (G = 0)
  return float_gemm(Bf16Decoder{w, Kp}, xp, N, 2 * Kp, &kOne, 0, Kp);
}

// Per-token dynamic int8 quantization (vLLM's, and observers.dynamic_per_token's):
// s = max(amax / 127, 1e-12), q = clamp(round_half_even(x / s), -128, 127). -> (q [M, K] int8, s [M]).
std::tuple<at::Tensor, at::Tensor> quantize_act_int8(const at::Tensor& x) {
  check_x(x, x.size(1));
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor s = at::empty({M}, x.options());
  const float* xd = x.data_ptr<float>();
  int8_t* qd = q.data_ptr<int8_t>();
  float* sd = s.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xd + m * K;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(r[k]));
    sd[m] = std::max(amax / 127.0f, 1e-12f);
    for (int64_t k = 0; k < K; ++k) qd[m * K + k] = static_cast<int8_t>(std::clamp(std::nearbyint(r[k] / sd[m]), -128.0f, 127.0f));
  }
  return {q, s};
}

// W8A8: y = s_a[m] · Σ_g s_w[n, g] · Σ_{k in g} q_a[m, k] q_w[n, k], integer inside each group.
at::Tensor w8a8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size) {
  const int8_t* w = check_weight<int8_t>(weight, at::kChar, kStep, "int8 [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1), M = x.size(0), K = x.size(1);
  check_x(x, Kp);
  const int64_t spg = check_scale(scale, N, Kp, group_size), G = scale.size(1);
  auto [q, sa] = quantize_act_int8(x);
  at::Tensor xq = at::zeros({M, Kp}, x.options().dtype(at::kShort));  // int16, zero-padded
  xq.narrow(1, 0, K).copy_(q);
  at::Tensor y = at::empty({M, N}, x.options());
  const int16_t* xs = xq.data_ptr<int16_t>();
  const float *sc = scale.data_ptr<float>(), *sad = sa.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  for_each_tile(M, N, Kp, [&](auto mb, int64_t n, int64_t m0) {
    constexpr int MB = decltype(mb)::value;
    float out[MB];
    if (group_size == 32)
      int8_tile<MB, true>(w + n * Kp, xs + m0 * Kp, Kp, Kp / kStep, 1, sc + n * G, out);
    else
      int8_tile<MB, false>(w + n * Kp, xs + m0 * Kp, Kp, Kp / kStep, spg, sc + n * G, out);
    for (int m = 0; m < MB; ++m) yd[(m0 + m) * N + n] = out[m] * sad[m0 + m];
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// Dequantize rows [n0, n1) to float32 [n1 - n0, K] for prefill, where the GEMM is compute-bound and
// MKL's sgemm wins. Bit-exact with the project's dequantize, (q - zp) · s in float32: every decoded
// q, and q - zp, is exact, so the multiply by s is the one rounding, as there.
namespace {
// finish(n, k, c, q) -> the 8 weights k .. k + 7 of row n from chunk c of their step.
template <class Decoder, class Finish>
at::Tensor dequant_rows(const Decoder& dec, int64_t N, int64_t K, int64_t Kp, int64_t n0, int64_t n1, const Finish& finish) {
  TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= N && K <= Kp, "bad row range or K");
  at::Tensor out = at::empty({n1 - n0, K}, at::TensorOptions().dtype(at::kFloat));
  float* od = out.data_ptr<float>();
  at::parallel_for(n0, n1, 16, [&](int64_t a, int64_t b) {
    alignas(32) float buf[kStep];
    for (int64_t n = a; n < b; ++n) {
      float* row = od + (n - n0) * K;
      for (int64_t k0 = 0; k0 < K; k0 += kStep) {
        const auto block = dec.block(n, k0 / kStep);
        const bool whole = k0 + kStep <= K;  // else the row's tail: through a buffer
        float* dst = whole ? row + k0 : buf;
        unroll<8>([&](auto c) { _mm256_storeu_ps(dst + 8 * c, finish(n, k0 + 8 * c, c, Decoder::template chunk<c>(block))); });
        if (!whole) std::copy(buf, buf + (K - k0), row + k0);
      }
    }
  });
  return out;
}
}  // namespace

at::Tensor int4_dequant(const at::Tensor& qweight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero_point,
                        int64_t group_size, int64_t K, int64_t n0, int64_t n1) {
  const int32_t* w = check_weight<int32_t>(qweight, at::kInt, 8, "int32 blocked int4 [N, Kp / 8]");
  const int64_t N = qweight.size(0), Kp = qweight.size(1) * 8, G = scale.size(1);
  check_scale(scale, N, Kp, group_size);
  const float* sc = scale.data_ptr<float>();
  const int8_t* zp = check_zero_point(zero_point, scale);
  return dequant_rows(Int4Decoder{w, Kp / 8}, N, K, Kp, n0, n1, [&](int64_t n, int64_t k, int c, __m256 q) {
    const int64_t g = n * G + k / group_size;
    const __m256 c_g = _mm256_set1_ps(8.0f + (zp ? zp[g] : 0));  // q_u·16^c·16^-c - c_g: exact
    return _mm256_mul_ps(_mm256_fmsub_ps(q, _mm256_set1_ps(kInt4Gain[c]), c_g), _mm256_set1_ps(sc[g]));
  });
}

at::Tensor int8_dequant(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero_point,
                        int64_t group_size, int64_t K, int64_t n0, int64_t n1) {
  const int8_t* w = check_weight<int8_t>(weight, at::kChar, kStep, "int8 [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1), G = scale.size(1);
  check_scale(scale, N, Kp, group_size);
  const float* sc = scale.data_ptr<float>();
  const int8_t* zp = check_zero_point(zero_point, scale);
  return dequant_rows(Int8Decoder{w, Kp}, N, K, Kp, n0, n1, [&](int64_t n, int64_t k, int, __m256 q) {
    const int64_t g = n * G + k / group_size;
    return _mm256_mul_ps(_mm256_sub_ps(q, _mm256_set1_ps(zp ? zp[g] : 0)), _mm256_set1_ps(sc[g]));
  });
}

at::Tensor fp8_dequant(const at::Tensor& weight, const at::Tensor& scale, int64_t group_size, int64_t K, int64_t n0, int64_t n1) {
  const uint8_t* w = check_weight<uint8_t>(weight, at::kByte, kStep, "uint8 (float8_e4m3fn bits) [N, Kp]");
  const int64_t N = weight.size(0), Kp = weight.size(1), G = scale.size(1);
  check_scale(scale, N, Kp, group_size);
  const float* sc = scale.data_ptr<float>();
  return dequant_rows(Fp8Decoder{w, Kp}, N, K, Kp, n0, n1, [&](int64_t n, int64_t k, int, __m256 v) {  // v = fp8 · 2^-8
    return _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(256.0f)), _mm256_set1_ps(sc[n * G + k / group_size]));
  });
}

at::Tensor bf16_dequant(const at::Tensor& weight, int64_t K, int64_t n0, int64_t n1) {
  const uint16_t* w = check_weight<uint16_t>(weight, at::kShort, kStep, "int16 (bfloat16 bits) [N, Kp]");
  return dequant_rows(Bf16Decoder{w, weight.size(1)}, weight.size(0), K, weight.size(1), n0, n1,
                      [](int64_t, int64_t, int, __m256 v) { return v; });
}

int64_t max_vector_bits() { return LLMPRESS_WIDE_BUILT ? 512 : 256; }

int64_t vector_bits() { return g_wide ? 512 : 256; }

void set_vector_bits(int64_t bits) {
  TORCH_CHECK(bits == 256 || (bits == 512 && LLMPRESS_WIDE_BUILT), "vector width ", bits, " is not built in");
  g_wide = bits == 512;
}
