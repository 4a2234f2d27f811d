// Shared by the host (g++) and device (nvcc) builds: the per-element maths lives in headers so both
// compile the very same code, and the host build can check it against the PyTorch reference on CPU.
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__)
#define IPL_HD __host__ __device__ __forceinline__
#else
#define IPL_HD inline
#endif

namespace ipl_ops {

// Float and double overloads with one name, usable on host and device.
IPL_HD float op_exp(float v) { return expf(v); }
IPL_HD double op_exp(double v) { return exp(v); }
IPL_HD float op_expm1(float v) { return expm1f(v); }
IPL_HD double op_expm1(double v) { return expm1(v); }
IPL_HD float op_log1p(float v) { return log1pf(v); }
IPL_HD double op_log1p(double v) { return log1p(v); }
IPL_HD float op_tanh(float v) { return tanhf(v); }
IPL_HD double op_tanh(double v) { return tanh(v); }

// Floor modulo for a positive modulus: the result is in [0, m).
template <typename index_t>
IPL_HD index_t pos_mod(index_t a, index_t m) {
    index_t r = a % m;
    return r < 0 ? r + m : r;
}

// True when every element offset of a tensor with these sizes/strides, and numel, fit in int32_t.
IPL_HD bool fits_int32(int64_t max_offset, int64_t numel) {
    return max_offset < (int64_t(1) << 31) - 1 && numel < (int64_t(1) << 31) - 1;
}

}  // namespace ipl_ops
