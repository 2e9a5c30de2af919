// Per-layer ops of the decoder besides the GEMMs, float32 on AVX2 + FMA: paged decode attention,
// RMSNorm (with the residual add fused in), rotary embedding fused with the KV-cache write, and
// SwiGLU's silu(gate) * up. A decode step runs each of them once per layer on a few rows, where
// torch's dispatch of the 5-10 ops each replaces costs more than the arithmetic. Each has a torch
// reference in engine/ops.py, and tests/engine/test_ops.py compares the two.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "layer_ops.h"
#include "simd.h"

namespace {
using namespace llmpress;

// exp(x) for x <= 0 (Cephes expf: 2^n · e^r, |r| <= ln2/2, degree-6 polynomial; rel. error ~2e-7).
inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // keeps 2^n normal; e^-87 is 0 next to the max term's 1
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The 8 sums of v[0..7]'s lanes, as one vector: hadd pairs, then fold the two 128-bit halves.
inline __m256 hsum8(const __m256 v[8]) {
  const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// Decode attention's value pass: query heads of one kv head at a time x 8-float vectors of the head
// dim, kept in registers (3 x 4 + 4 = 16 AVX2 registers; AVX-512 builds have 32 and take 4 x 4).
#ifdef __AVX512F__
constexpr int kMaxHeads = 4, kValueVectors = 4;
#else
constexpr int kMaxHeads = 3, kValueVectors = 4;
#endif

constexpr int64_t kMaxGroup = 64;  // query heads per kv head
// Cached rows are scattered over blocks and read a few hundred bytes at a time, too little for the
// hardware prefetchers: rows this many tokens ahead are prefetched. Decode attention, 16 sequences
// of 180 tokens, SmolLM2's heads, us a layer cold (30 layers' caches in turn) / hot: 276 / 126
// before; 195 / 100 with the prefetch (distance 16 beat 4, 8 and 32) and the one-pass values.
constexpr int64_t kAhead = 16;

// out[j, :] = inv[j] · Σ_t s[j · ld + t] · value(t) for NH heads j, the head dim D in blocks of
// kValueVectors vectors: each value row is loaded once for all NH heads.
template <int NH, class Value>
inline void value_pass(const float* s, int64_t ld, int64_t L, int64_t D, const Value& value, const float* inv, float* out) {
  for (int64_t d0 = 0; d0 < D; d0 += 8 * kValueVectors) {
    const int64_t nc = std::min<int64_t>(kValueVectors, (D - d0) / 8);
    __m256 o[NH][kValueVectors];
    for (auto& row : o)
      for (auto& v : row) v = _mm256_setzero_ps();
    for (int64_t t = 0; t < L; ++t) {
      const float* vt = value(t) + d0;
      const char* ahead = reinterpret_cast<const char*>(value(std::min(t + kAhead, L - 1)) + d0);
      for (int64_t line = 0; line < 32 * nc; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
      if (nc == kValueVectors) {
        __m256 v[kValueVectors];
        unroll<kValueVectors>([&](auto c) { v[c] = _mm256_loadu_ps(vt + 8 * c); });
        unroll<NH>([&](auto j) {
          const __m256 p = _mm256_set1_ps(s[j * ld + t]);
          unroll<kValueVectors>([&](auto c) { o[j][c] = _mm256_fmadd_ps(p, v[c], o[j][c]); });
        });
      } else {  // the head dim's last < 8 · kValueVectors floats
        for (int j = 0; j < NH; ++j) {
          const __m256 p = _mm256_set1_ps(s[j * ld + t]);
          for (int64_t c = 0; c < nc; ++c) o[j][c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vt + 8 * c), o[j][c]);
        }
      }
    }
    for (int j = 0; j < NH; ++j)
      for (int64_t c = 0; c < nc; ++c) _mm256_storeu_ps(out + j * D + d0 + 8 * c, _mm256_mul_ps(o[j][c], _mm256_set1_ps(inv[j])));
  }
}

// Rows above this many floats are worth a parallel_for's fork; a decode step's are not.
constexpr int64_t kParallelFloats = 1 << 16;

void check_f32(const at::Tensor& t, int64_t dim, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == dim && t.is_contiguous(), what, " must be contiguous float32 with ", dim, " dims");
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Paged decode attention: one query token per sequence against its cached keys/values.
//   q [B, H, D], k_cache / v_cache [num_blocks, block_size, KVH, D], block_tables int32 [B, max_blocks],
//   context_lens int32 [B] -> out [B, H, D]. Query heads h = kvh · (H / KVH) + j share kv head kvh (GQA).
// Parallel over (b, kvh). Scores come 8 keys at a time (8 independent FMA chains, one hsum8), then
// softmax, then the heads' outputs accumulate in registers over the values (value_pass), each
// value row read once for the kv head's query heads.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  check_f32(q, 3, "q [B, H, D]");
  check_f32(k_cache, 4, "k_cache [num_blocks, block_size, KVH, D]");
  check_f32(v_cache, 4, "v_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "k_cache and v_cache must have the same shape");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.is_contiguous());
  TORCH_CHECK(context_lens.scalar_type() == at::kInt && context_lens.dim() == 1 && context_lens.is_contiguous());
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t NB = k_cache.size(0), BS = k_cache.size(1), KVH = k_cache.size(2), MAXB = block_tables.size(1);
  TORCH_CHECK(k_cache.size(3) == D && D % 8 == 0, "head_dim must match and be a multiple of 8");
  TORCH_CHECK(KVH > 0 && H % KVH == 0 && H / KVH <= kMaxGroup, "num_heads must be a multiple of num_kv_heads, at most ",
              kMaxGroup, " times it");
  TORCH_CHECK(block_tables.size(0) == B && context_lens.size(0) == B);
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] <= MAXB * BS, "context_lens[", b, "] = ", lens[b], " exceeds the block table");
    for (int64_t i = 0; i < (lens[b] + BS - 1) / BS; ++i)
      TORCH_CHECK(tables[b * MAXB + i] >= 0 && tables[b * MAXB + i] < NB, "block_tables[", b, ", ", i, "] out of range");
    work += lens[b];
  }
  at::Tensor out = at::empty_like(q);
  const float *qd = q.data_ptr<float>(), *kd = k_cache.data_ptr<float>(), *vd = v_cache.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const int64_t G = H / KVH, row = KVH * D;  // floats per cached token
  const float sc = static_cast<float>(scale);
  auto head_group = [&](int64_t i, std::vector<float>& scores, std::vector<int64_t>& rows) {
    const int64_t b = i / KVH, kvh = i % KVH, L = lens[b];
    const float* qh = qd + (b * H + kvh * G) * D;  // the G query heads of this kv head, contiguous
    float* oh = od + (b * H + kvh * G) * D;
    if (L == 0) {
      std::fill(oh, oh + G * D, 0.0f);
      return;
    }
    const int32_t* table = tables + b * MAXB;
    rows.resize(L);  // offset of token t's (k, v) row for this kv head: block by block, no division per token
    for (int64_t t0 = 0, i = 0; t0 < L; t0 += BS, ++i)
      for (int64_t t = t0, base = table[i] * BS * row + kvh * D; t < std::min(L, t0 + BS); ++t, base += row) rows[t] = base;
    auto key = [&](int64_t t) { return kd + rows[t]; };
    auto value = [&](int64_t t) { return vd + rows[t]; };
    for (int64_t t = 0; t < std::min(L, 2 * kAhead); ++t)  // the loop below prefetches from 2 · kAhead on
      for (int64_t line = 0; line < 4 * D; line += 64) _mm_prefetch(reinterpret_cast<const char*>(key(t)) + line, _MM_HINT_T0);
    const int64_t Lp = (L + 7) / 8 * 8;
    scores.assign(G * Lp, -INFINITY);
    for (int64_t t0 = 0; t0 < L; t0 += 8) {
      const int64_t nt = std::min<int64_t>(8, L - t0);
      const float* kt[8];
      for (int64_t u = 0; u < 8; ++u) kt[u] = key(t0 + std::min(u, nt - 1));  // a short block repeats its last key
      for (int64_t u = 0; u < 8; ++u) {
        const char* ahead = reinterpret_cast<const char*>(key(std::min(t0 + 2 * kAhead + u, L - 1)));
        for (int64_t line = 0; line < 4 * D; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
      }
      for (int64_t j = 0; j < G; ++j) {
        const float* qj = qh + j * D;
        __m256 acc[8];
        for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) {
          const __m256 qv = _mm256_loadu_ps(qj + d);
          for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt[u] + d), acc[u]);
        }
        alignas(32) float s[8];
        _mm256_store_ps(s, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(sc)));
        std::copy(s, s + nt, scores.data() + j * Lp + t0);  // the repeats stay -inf
      }
    }
    float inv[kMaxGroup];
    for (int64_t j = 0; j < G; ++j) {
      float* s = scores.data() + j * Lp;
      const float mx = *std::max_element(s, s + L);
      __m256 sum = _mm256_setzero_ps();
      for (int64_t t = 0; t < Lp; t += 8) {  // -inf - mx is clamped to e^-87 by exp_neg: zero it past L
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + t), _mm256_set1_ps(mx)));
        if (t + 8 > L) {
          alignas(32) float tmp[8];
          _mm256_store_ps(tmp, e);
          std::fill(tmp + (L - t), tmp + 8, 0.0f);
          e = _mm256_load_ps(tmp);
        }
        _mm256_storeu_ps(s + t, e);
        sum = _mm256_add_ps(sum, e);
      }
      inv[j] = 1.0f / hsum(sum);
    }
    // Values: the G heads together (up to kMaxHeads at a time), so each value row is read once.
    for (int64_t j0 = 0; j0 < G; j0 += kMaxHeads) {
      const float* s = scores.data() + j0 * Lp;
      float* o = oh + j0 * D;
      switch (std::min<int64_t>(kMaxHeads, G - j0)) {
        case 1: value_pass<1>(s, Lp, L, D, value, inv + j0, o); break;
        case 2: value_pass<2>(s, Lp, L, D, value, inv + j0, o); break;
        case 3: value_pass<3>(s, Lp, L, D, value, inv + j0, o); break;
        default: value_pass<kMaxHeads>(s, Lp, L, D, value, inv + j0, o); break;
      }
    }
  };
  const int64_t items = B * KVH;
  const int64_t grain = work * H * D * 2 < kParallelFloats ? items : 1;  // tiny contexts: one thread, no fork
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores;
    std::vector<int64_t> rows;
    for (int64_t i = i0; i < i1; ++i) head_group(i, scores, rows);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// RMSNorm as transformers' LlamaRMSNorm computes it in float32: h = x · rsqrt(mean(x²) + eps), out = w · h.
namespace {
void rms_rows(const float* x, const float* w, float* out, int64_t T, int64_t Hd, float eps) {
  at::parallel_for(0, T, std::max<int64_t>(1, kParallelFloats / Hd), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* r = x + t * Hd;
      float* o = out + t * Hd;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 16 <= Hd; d += 16) {
        const __m256 a = _mm256_loadu_ps(r + d), b = _mm256_loadu_ps(r + d + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
      }
      float ss = hsum(_mm256_add_ps(s0, s1));
      for (; d < Hd; ++d) ss += r[d] * r[d];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(Hd) + eps);
      const __m256 iv = _mm256_set1_ps(inv);
      for (d = 0; d + 8 <= Hd; d += 8)
        _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(w + d), _mm256_mul_ps(_mm256_loadu_ps(r + d), iv)));
      for (; d < Hd; ++d) o[d] = w[d] * (r[d] * inv);
    }
  });
}

void check_norm(const at::Tensor& x, const at::Tensor& weight) {
  check_f32(x, 2, "x [T, hidden]");
  check_f32(weight, 1, "weight [hidden]");
  TORCH_CHECK(weight.size(0) == x.size(1), "weight has ", weight.size(0), " elements, x rows ", x.size(1));
}
}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  at::Tensor out = at::empty_like(x);
  rms_rows(x.data_ptr<float>(), weight.data_ptr<float>(), out.data_ptr<float>(), x.size(0), x.size(1), static_cast<float>(eps));
  return out;
}

// x += delta (the residual stream, in place), then rms_norm(x).
at::Tensor add_rms_norm_(at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  check_f32(delta, 2, "delta");
  TORCH_CHECK(delta.sizes() == x.sizes(), "delta must be shaped like x");
  x.add_(delta);
  return rms_norm(x, weight, eps);
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding (HF Llama's rotate-half) of the q and k heads of a fused qkv projection, with k
// and v written to their cache slots. qkv [T, (H + 2 KVH) D], cos / sin [T, D / 2] (attention factor
// included), caches [num_blocks, block_size, KVH, D], slots int64 [T] (flat slot = block · size + offset)
// -> q [T, H, D]. x1 · cos - x2 · sin is two rounded products and a subtraction, as in torch.
at::Tensor rope_qkv_cache_(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& k_cache,
                           at::Tensor& v_cache, const at::Tensor& slots, int64_t num_heads, int64_t num_kv_heads) {
  check_f32(qkv, 2, "qkv [T, (H + 2 KVH) D]");
  check_f32(cos, 2, "cos [T, D / 2]");
  check_f32(sin, 2, "sin");
  check_f32(k_cache, 4, "k_cache");
  check_f32(v_cache, 4, "v_cache");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous(), "slots must be contiguous int64 [T]");
  const int64_t T = qkv.size(0), H = num_heads, KVH = num_kv_heads, half = cos.size(1), D = 2 * half;
  TORCH_CHECK(D % 16 == 0 && qkv.size(1) == (H + 2 * KVH) * D, "qkv has ", qkv.size(1), " columns, not (", H, " + 2·", KVH, ")·", D);
  TORCH_CHECK(cos.size(0) == T && sin.sizes() == cos.sizes() && slots.size(0) == T, "cos, sin and slots need one row per token");
  TORCH_CHECK(k_cache.size(2) == KVH && k_cache.size(3) == D && v_cache.sizes() == k_cache.sizes(), "cache shape does not match");
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sl[t] >= 0 && sl[t] < capacity, "slot ", sl[t], " outside the cache");
  at::Tensor q = at::empty({T, H, D}, qkv.options());
  const float *src = qkv.data_ptr<float>(), *cs = cos.data_ptr<float>(), *sn = sin.data_ptr<float>();
  float *qd = q.data_ptr<float>(), *kd = k_cache.data_ptr<float>(), *vd = v_cache.data_ptr<float>();
  auto rotate = [&](const float* x, const float* c, const float* s, float* out) {
    for (int64_t d = 0; d < half; d += 8) {
      const __m256 x1 = _mm256_loadu_ps(x + d), x2 = _mm256_loadu_ps(x + half + d);
      const __m256 cv = _mm256_loadu_ps(c + d), sv = _mm256_loadu_ps(s + d);
      _mm256_storeu_ps(out + d, _mm256_sub_ps(_mm256_mul_ps(x1, cv), _mm256_mul_ps(x2, sv)));
      _mm256_storeu_ps(out + half + d, _mm256_add_ps(_mm256_mul_ps(x2, cv), _mm256_mul_ps(x1, sv)));
    }
  };
  const int64_t width = (H + 2 * KVH) * D;
  at::parallel_for(0, T, std::max<int64_t>(1, kParallelFloats / width), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* x = src + t * width;
      const float *c = cs + t * half, *s = sn + t * half;
      for (int64_t h = 0; h < H; ++h) rotate(x + h * D, c, s, qd + (t * H + h) * D);
      float* kslot = kd + sl[t] * KVH * D;
      for (int64_t h = 0; h < KVH; ++h) rotate(x + (H + h) * D, c, s, kslot + h * D);
      std::copy(x + (H + KVH) * D, x + width, vd + sl[t] * KVH * D);
    }
  });
  return q;
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: gate_up [T, 2I] (gate, then up) -> silu(gate) · up [T, I]; silu(g) = g · sigmoid(g), with
// sigmoid from e^-|g| (exp_neg's range) so it neither overflows nor loses the small side.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  check_f32(gate_up, 2, "gate_up [T, 2 I]");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "gate_up needs an even number of columns");
  at::Tensor out = at::empty({T, I}, gate_up.options());
  const float* src = gate_up.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, T, std::max<int64_t>(1, kParallelFloats / I), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float *g = src + t * 2 * I, *u = g + I;
      float* o = dst + t * I;
      int64_t i = 0;
      const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
      for (; i + 8 <= I; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp_neg(_mm256_or_ps(gv, sign));                   // e^-|g|
        const __m256 num = _mm256_blendv_ps(one, e, gv);                    // sign bit set (g < 0): e, else 1
        const __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));       // sigmoid(g)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + i)));
      }
      for (; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}
