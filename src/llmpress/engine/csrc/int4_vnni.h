// int4 weights x int16 activations for small M on AVX512-VNNI CPUs (int4_vnni.cpp), bound in bindings.cpp;
// qgemm.cpp's int4_gemm hands over to it where int4_int16_applies.
#pragma once
#include <torch/extension.h>

// y [M, N] = x [M, K] @ W^T, float32 x and y, W blocked int4 (qgemm.cpp's layout), groups of 64j k.
at::Tensor int4_gemm_int16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                           const c10::optional<at::Tensor>& zero_point, int64_t group_size);
// True when int4_gemm takes int4_gemm_int16 for this group size: built, switched on, groups of 64j.
bool int4_int16_applies(int64_t group_size);
bool int4_int16_built();
// The int4 GEMM's activations: 16 (int16, the default where built) or 32 (float32, qgemm.cpp's tiles).
int64_t int4_act_bits();
void set_int4_act_bits(int64_t bits);
