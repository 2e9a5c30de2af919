// GEMMs on Intel AMX tiles (amx_gemm.cpp), bound in bindings.cpp. Same contract as the
// register-tile GEMMs there: y [M, N] = x [M, K] @ W^T, float32 x and y, W in its stored layout.
#pragma once
#include <torch/extension.h>

bool amx_available();
at::Tensor amx_int4_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& zero_point, int64_t group_size, bool split);
at::Tensor amx_int8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                         bool split);
at::Tensor amx_w8a8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size);
at::Tensor amx_fp8_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, int64_t group_size,
                        bool dynamic_act);
at::Tensor amx_bf16_gemm(const at::Tensor& x, const at::Tensor& weight, bool split);
