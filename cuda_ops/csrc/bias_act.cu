// CUDA launcher for bias_act: one thread per element (grid-stride), maths from bias_act.h.
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "bias_act.h"

namespace ipl_ops {

template <typename scalar_t, typename index_t>
__global__ void bias_act_kernel(BiasActParams p, const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ dy, scalar_t* __restrict__ y) {
    using acc_t = at::opmath_type<scalar_t>;
    const index_t numel = index_t(p.numel);
    const index_t stride = index_t(blockDim.x) * index_t(gridDim.x);
    for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < numel; i += stride) {
        acc_t z = static_cast<acc_t>(x[i]);
        if (p.bias_size > 0) z += static_cast<acc_t>(b[bias_index<index_t>(p, i)]);
        const acc_t g = p.order > 0 ? static_cast<acc_t>(dy[i]) : acc_t(0);
        y[i] = static_cast<scalar_t>(bias_act_point<acc_t>(p, z, g));
    }
}

void bias_act_cuda(const BiasActParams& p, const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy,
                   at::Tensor& y) {
    if (p.numel == 0) return;
    const c10::cuda::CUDAGuard guard(x.device());
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((p.numel + threads - 1) / threads, int64_t(1) << 20);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act_cuda", [&] {
        const scalar_t* bp = p.bias_size > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
        const scalar_t* gp = p.order > 0 ? dy.const_data_ptr<scalar_t>() : nullptr;
        // numel + grid stride must not overflow the index type
        if (fits_int32(p.numel + int64_t(blocks) * threads, p.numel))
            bias_act_kernel<scalar_t, int32_t><<<unsigned(blocks), threads, 0, stream>>>(
                p, x.const_data_ptr<scalar_t>(), bp, gp, y.mutable_data_ptr<scalar_t>());
        else
            bias_act_kernel<scalar_t, int64_t><<<unsigned(blocks), threads, 0, stream>>>(
                p, x.const_data_ptr<scalar_t>(), bp, gp, y.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
}

}  // namespace ipl_ops
