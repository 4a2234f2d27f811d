// upfirdn2d per-output maths: zero-insert upsampling, zero padding (negative crops), correlation with
// the (already flipped and gain-scaled) filter, decimation. Only the taps that land on a real input
// sample are visited, so the zeros of the upsampled image are never read or multiplied.
#pragma once

#include "common.h"

namespace ipl_ops {

struct UpFirDnParams {
    int64_t batch, channels, in_h, in_w, out_h, out_w;
    int64_t sx_n, sx_c, sx_h, sx_w;  // input strides in elements
    int64_t sy_n, sy_c, sy_h, sy_w;  // output strides in elements
    int upx, upy, downx, downy;
    int px0, py0;                    // leading padding (the trailing one only sets out_w/out_h)
    int fw, fh;                      // filter taps along x and y
    bool separable;                  // filter is 1-D: weight(i, j) = f[i] * f[j]
    bool channels_last;              // linear output index runs over channels fastest
    int64_t numel;                   // batch * channels * out_h * out_w
};

// Output coordinates of the idx-th element in the output's memory order. index_t is int32_t when every
// offset fits (64-bit division is slow on GPUs), else int64_t.
template <typename index_t>
IPL_HD void upfirdn_coords(const UpFirDnParams& p, index_t idx, index_t& n, index_t& c, index_t& oy, index_t& ox) {
    const index_t channels = index_t(p.channels), out_w = index_t(p.out_w), out_h = index_t(p.out_h);
    if (p.channels_last) {
        c = idx % channels; idx /= channels;
        ox = idx % out_w; idx /= out_w;
        oy = idx % out_h; n = idx / out_h;
    } else {
        ox = idx % out_w; idx /= out_w;
        oy = idx % out_h; idx /= out_h;
        c = idx % channels; n = idx / channels;
    }
}

// out[n, c, oy, ox] = sum_{i,j} up(x)[oy*downy + i - py0, ox*downx + j - px0] * w[i, j].
template <typename scalar_t, typename acc_t, typename index_t>
IPL_HD acc_t upfirdn_point(const UpFirDnParams& p, const scalar_t* x, const float* w,
                           index_t n, index_t c, index_t oy, index_t ox) {
    const index_t upx = p.upx, upy = p.upy, fw = p.fw, fh = p.fh;
    const index_t y0 = oy * index_t(p.downy) - index_t(p.py0);  // upsampled row under tap i = 0
    const index_t x0 = ox * index_t(p.downx) - index_t(p.px0);
    const index_t up_h = index_t(p.in_h) * upy, up_w = index_t(p.in_w) * upx;
    // First tap on a real (non-inserted, non-padding) sample, and one past the last.
    const index_t i0 = y0 < 0 ? -y0 : index_t(pos_mod(-y0, upy));
    const index_t j0 = x0 < 0 ? -x0 : index_t(pos_mod(-x0, upx));
    const index_t i1 = (up_h - y0) < fh ? (up_h - y0) : fh;
    const index_t j1 = (up_w - x0) < fw ? (up_w - x0) : fw;
    const index_t sx_h = index_t(p.sx_h), sx_w = index_t(p.sx_w);
    const scalar_t* xp = x + n * index_t(p.sx_n) + c * index_t(p.sx_c);
    // y0 + i0 and x0 + j0 are multiples of up: the input row/column then advance by one per visited tap.
    const index_t ix0 = (x0 + j0) / upx;
    index_t iy = (y0 + i0) / upy;
    acc_t acc = acc_t(0);
    for (index_t i = i0; i < i1; i += upy, ++iy) {
        const scalar_t* row = xp + iy * sx_h;
        const acc_t wy = p.separable ? acc_t(w[i]) : acc_t(1);
        const float* wrow = p.separable ? w : w + i * fw;
        acc_t racc = acc_t(0);
        index_t ix = ix0;
        for (index_t j = j0; j < j1; j += upx, ++ix)
            racc += static_cast<acc_t>(row[ix * sx_w]) * acc_t(wrow[j]);
        acc += racc * wy;
    }
    return acc;
}

}  // namespace ipl_ops
