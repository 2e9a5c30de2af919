// The extension's Python module (llmpress_qgemm): every function the engine calls, declared in
// qgemm.h (small-M GEMMs), amx_gemm.h (AMX GEMMs) and layer_ops.h (per-layer ops).
//
// The per-layer ops carry their argument names: Layer.forward calls them in place of engine/ops.py's
// functions of the same names and arguments, and tests/engine/test_extension.py holds the two to it.
#include <torch/extension.h>
#include <pybind11/stl.h>

#include "amx_gemm.h"
#include "int4_vnni.h"
#include "layer_ops.h"
#include "qgemm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using py::arg;
  // The kernels touch no Python objects: they run without the GIL, so the server's event loop
  // (another thread) streams tokens while the engine thread computes the next step.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("int4_gemm", &int4_gemm, "y = x @ W^T, int4 blocked weights", nogil);
  m.def("int8_gemm", &int8_gemm, "y = x @ W^T, int8 weights, float activations", nogil);
  m.def("w8a8_gemm", &w8a8_gemm, "y = x @ W^T, int8 weights, dynamic int8 activations", nogil);
  m.def("fp8_gemm", &fp8_gemm, "y = x @ W^T, fp8 e4m3 weights (uint8 view)", nogil);
  m.def("bf16_gemm", &bf16_gemm, "y = x @ W^T, bf16 weights (int16 view)", nogil);
  m.def("quantize_act_int8", &quantize_act_int8, "per-token dynamic int8 activations", nogil);
  m.def("int4_dequant", &int4_dequant, nogil);
  m.def("int8_dequant", &int8_dequant, nogil);
  m.def("fp8_dequant", &fp8_dequant, nogil);
  m.def("bf16_dequant", &bf16_dequant, nogil);
  m.def("amx_available", &amx_available, "AMX tiles built in and granted by the OS");
  m.def("amx_int4_gemm", &amx_int4_gemm, "y = x @ W^T on AMX, int4 blocked weights; split: x as two bf16 parts (else one)", nogil);
  m.def("amx_int8_gemm", &amx_int8_gemm, "y = x @ W^T on AMX, symmetric int8 weights, float activations; split as above", nogil);
  m.def("amx_w8a8_gemm", &amx_w8a8_gemm, "y = x @ W^T on AMX, int8 weights, dynamic int8 activations", nogil);
  m.def("amx_fp8_gemm", &amx_fp8_gemm, "y = x @ W^T on AMX, fp8 e4m3 weights (uint8 view)", nogil);
  m.def("amx_bf16_gemm", &amx_bf16_gemm, "y = x @ W^T on AMX, bf16 weights (int16 view); split as above", nogil);
  m.def("decode_attention", &decode_attention, "paged decode attention", arg("q"), arg("k_cache"), arg("v_cache"),
        arg("block_tables"), arg("context_lens"), arg("scale"), nogil);
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows", arg("x"), arg("weight"), arg("eps"), nogil);
  m.def("add_rms_norm_", &add_rms_norm_, "x += delta, then RMSNorm of x", arg("x"), arg("delta"), arg("weight"),
        arg("eps"), nogil);
  m.def("rope_qkv_cache_", &rope_qkv_cache_, "rotary q/k of a fused qkv, k/v into the cache; returns q", arg("qkv"),
        arg("cos"), arg("sin"), arg("k_cache"), arg("v_cache"), arg("slots"), arg("num_heads"), arg("num_kv_heads"),
        nogil);
  m.def("silu_mul", &silu_mul, "silu(gate) * up", arg("gate_up"), nogil);
  m.def("max_vector_bits", &max_vector_bits, "512 when built with AVX-512, else 256");
  m.def("vector_bits", &vector_bits, "the float-decoded GEMMs' vector width now");
  m.def("int4_int16_built", &int4_int16_built, "the int16-activation int4 GEMM is built in (AVX512-VNNI)");
  m.def("int4_act_bits", &int4_act_bits, "the int4 GEMM's activations now: 16 (int16) or 32 (float32)");
  m.def("set_int4_act_bits", &set_int4_act_bits, "16 (VNNI builds) or 32", arg("bits"));
  m.def("set_vector_bits", &set_vector_bits, "512 (AVX-512 builds) or 256 (AVX2)", arg("bits"));
}
