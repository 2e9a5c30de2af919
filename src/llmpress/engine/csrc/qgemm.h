// The fused dequantize + GEMMs for small M (qgemm.cpp), bound in bindings.cpp. y [M, N] = x [M, K] @ W^T,
// float32 x and y, W in its stored layout (qgemm.cpp's header comment); *_dequant decode rows [n0, n1)
// of W to float32 [n1 - n0, K] for prefill's sgemm.
#pragma once
#include <torch/extension.h>

#include <tuple>

at::Tensor int4_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& zero_point, int64_t group_size);
at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& zero_point, int64_t group_size);
at::Tensor w8a8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size);
at::Tensor fp8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                    bool dynamic_act);
at::Tensor bf16_gemm(const at::Tensor& x, const at::Tensor& weight);

// Per-token dynamic int8 quantization: (q [M, K] int8, s [M] float32).
std::tuple<at::Tensor, at::Tensor> quantize_act_int8(const at::Tensor& x);

at::Tensor int4_dequant(const at::Tensor& qweight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero_point,
                        int64_t group_size, int64_t K, int64_t n0, int64_t n1);
at::Tensor int8_dequant(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero_point,
                        int64_t group_size, int64_t K, int64_t n0, int64_t n1);
at::Tensor fp8_dequant(const at::Tensor& weight, const at::Tensor& scale, int64_t group_size, int64_t K, int64_t n0, int64_t n1);
at::Tensor bf16_dequant(const at::Tensor& weight, int64_t K, int64_t n0, int64_t n1);

// The float-decoded GEMMs' vector width: 512 (AVX-512 builds) or 256 (AVX2).
int64_t max_vector_bits();
int64_t vector_bits();
void set_vector_bits(int64_t bits);
