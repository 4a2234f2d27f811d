// Python bindings for bias_act and upfirdn2d: argument checks, parameter set-up, and a host loop over
// the same per-element maths as the CUDA kernels (used to test that maths on machines without a GPU).
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstdlib>

#include "bias_act.h"
#include "upfirdn2d.h"

namespace ipl_ops {

#ifndef IPL_NO_CUDA
void bias_act_cuda(const BiasActParams& p, const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy,
                   at::Tensor& y);
void upfirdn2d_cuda(const UpFirDnParams& p, bool use_int32, const at::Tensor& x, const at::Tensor& w,
                    at::Tensor& y);
#endif

static void bias_act_host(const BiasActParams& p, const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy,
                          at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act_host", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* bp = p.bias_size > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
        const scalar_t* gp = p.order > 0 ? dy.const_data_ptr<scalar_t>() : nullptr;
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, p.numel, 4096, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                acc_t z = static_cast<acc_t>(xp[i]);
                if (bp) z += static_cast<acc_t>(bp[bias_index<int64_t>(p, i)]);
                const acc_t g = gp ? static_cast<acc_t>(gp[i]) : acc_t(0);
                yp[i] = static_cast<scalar_t>(bias_act_point<acc_t>(p, z, g));
            }
        });
    });
}

template <typename scalar_t, typename index_t>
static void upfirdn2d_host_loop(const UpFirDnParams& p, const scalar_t* xp, const float* wp, scalar_t* yp) {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.numel, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            index_t n, c, oy, ox;
            upfirdn_coords<index_t>(p, index_t(i), n, c, oy, ox);
            const acc_t v = upfirdn_point<scalar_t, acc_t, index_t>(p, xp, wp, n, c, oy, ox);
            yp[n * index_t(p.sy_n) + c * index_t(p.sy_c) + oy * index_t(p.sy_h) + ox * index_t(p.sy_w)] =
                static_cast<scalar_t>(v);
        }
    });
}

static void upfirdn2d_host(const UpFirDnParams& p, bool use_int32, const at::Tensor& x, const at::Tensor& w,
                           at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_host", [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const float* wp = w.const_data_ptr<float>();
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        // The same two index widths as on the GPU, so both instantiations of the shared maths get tested.
        if (use_int32) upfirdn2d_host_loop<scalar_t, int32_t>(p, xp, wp, yp);
        else upfirdn2d_host_loop<scalar_t, int64_t>(p, xp, wp, yp);
    });
}

// Largest element offset of a strided tensor (0 for an empty one).
static int64_t max_offset(const at::Tensor& t) {
    int64_t off = 0;
    for (int64_t d = 0; d < t.dim(); ++d) {
        if (t.size(d) == 0) return 0;
        off += (t.size(d) - 1) * std::abs(t.stride(d));
    }
    return off;
}

// y = clamp(act(x + b) * gain) for order 0; dy * (d/dx)^order of it for order 1, 2.
// x must be dense (any dimension order); b is 1-D over `dim` or empty; dy has x's shape and strides.
at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t dim, int64_t act,
                    int64_t order, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must be dense (non-overlapping)");
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: unknown activation id ", act);
    TORCH_CHECK(order >= 0 && order <= 2, "bias_act: order must be 0, 1 or 2");
    TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.size(0) == x.size(dim)), "bias_act: b must be [x.shape[dim]]");
    TORCH_CHECK(b.numel() == 0 || (b.scalar_type() == x.scalar_type() && b.device() == x.device() && b.is_contiguous()),
                "bias_act: b must be contiguous, on x's device, with x's dtype");
    if (order > 0) {
        TORCH_CHECK(dy.sizes() == x.sizes() && dy.strides() == x.strides(), "bias_act: dy must have x's shape and strides");
        TORCH_CHECK(dy.scalar_type() == x.scalar_type() && dy.device() == x.device(), "bias_act: dy must match x's dtype and device");
    }
    BiasActParams p;
    p.act = int(act);
    p.order = int(order);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    p.numel = x.numel();
    p.bias_stride = x.stride(dim) > 0 ? x.stride(dim) : 1;
    p.bias_size = b.numel() > 0 ? x.size(dim) : 0;
    at::Tensor y = at::empty_like(x);  // keeps x's strides: x is dense
    TORCH_CHECK(y.strides() == x.strides(), "bias_act: could not allocate an output with x's strides");
    if (x.is_cuda()) {
#ifndef IPL_NO_CUDA
        bias_act_cuda(p, x, b, dy, y);
#else
        TORCH_CHECK(false, "bias_act: this build has no CUDA kernels");
#endif
    } else {
        bias_act_host(p, x, b, dy, y);
    }
    return y;
}

// Upsample by (upx, upy), pad by (px0, px1, py0, py1), correlate with w, keep every (downx, downy)-th
// sample. w is float32 [fh, fw] or, when separable, [fw] used along both axes.
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& w, int64_t upx, int64_t upy, int64_t downx,
                     int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1, bool separable,
                     bool force_int64) {
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.device() == x.device(),
                "upfirdn2d: w must be contiguous float32 on x's device");
    TORCH_CHECK(separable ? w.dim() == 1 : w.dim() == 2, "upfirdn2d: w must be 1-D when separable, else 2-D");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    const int64_t fh = separable ? w.size(0) : w.size(0);
    const int64_t fw = separable ? w.size(0) : w.size(1);
    TORCH_CHECK(fw >= 1 && fh >= 1, "upfirdn2d: empty filter");
    const int64_t in_h = x.size(2), in_w = x.size(3);
    const int64_t pad_h = in_h * upy + py0 + py1, pad_w = in_w * upx + px0 + px1;
    TORCH_CHECK(pad_h >= fh && pad_w >= fw, "upfirdn2d: padded input is smaller than the filter");
    const int64_t out_h = (pad_h - fh + downy) / downy;
    const int64_t out_w = (pad_w - fw + downx) / downx;

    // channels_last in, channels_last out; otherwise NCHW.
    const bool cl = x.size(1) > 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options(),
                             cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    UpFirDnParams p;
    p.batch = x.size(0); p.channels = x.size(1);
    p.in_h = in_h; p.in_w = in_w; p.out_h = out_h; p.out_w = out_w;
    p.sx_n = x.stride(0); p.sx_c = x.stride(1); p.sx_h = x.stride(2); p.sx_w = x.stride(3);
    p.sy_n = y.stride(0); p.sy_c = y.stride(1); p.sy_h = y.stride(2); p.sy_w = y.stride(3);
    p.upx = int(upx); p.upy = int(upy); p.downx = int(downx); p.downy = int(downy);
    p.px0 = int(px0); p.py0 = int(py0);
    p.fw = int(fw); p.fh = int(fh);
    p.separable = separable;
    p.channels_last = cl;
    p.numel = y.numel();
    // int32 indexing when every offset of x and y fits, and the padded upsampled extent does too.
    const bool use_int32 = !force_int64 && fits_int32(max_offset(x), x.numel()) && fits_int32(max_offset(y), y.numel()) &&
                           fits_int32(pad_h * pad_w + int64_t(fh) * fw, 0);
    if (x.is_cuda()) {
#ifndef IPL_NO_CUDA
        upfirdn2d_cuda(p, use_int32, x, w, y);
#else
        TORCH_CHECK(false, "upfirdn2d: this build has no CUDA kernels");
#endif
    } else {
        upfirdn2d_host(p, use_int32, x, w, y);
    }
    return y;
}

}  // namespace ipl_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "ipl custom ops: fused bias + activation, and upfirdn2d";
#ifdef IPL_NO_CUDA
    m.attr("with_cuda") = false;
#else
    m.attr("with_cuda") = true;
#endif
    m.def("bias_act", &ipl_ops::bias_act, "fused bias + activation + gain + clamp, or its derivatives");
    m.def("upfirdn2d", &ipl_ops::upfirdn2d, "upsample, pad, FIR-filter, downsample",
          py::arg("x"), py::arg("w"), py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"),
          py::arg("px0"), py::arg("px1"), py::arg("py0"), py::arg("py1"), py::arg("separable"),
          py::arg("force_int64") = false);
}
