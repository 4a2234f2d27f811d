// bias_act per-element maths: y = clamp(act(x + b) * gain, -clamp, clamp) and its first and second
// derivatives with respect to x, matching the PyTorch reference (cuda_ops/bias_act.py) at the kinks.
#pragma once

#include "common.h"

namespace ipl_ops {

// Activation ids; the order is the one in cuda_ops/bias_act.py (_ACT_IDS).
enum Act : int {
    kLinear = 0, kRelu = 1, kLrelu = 2, kTanh = 3, kSigmoid = 4,
    kElu = 5, kSelu = 6, kSoftplus = 7, kSwish = 8,
};

struct BiasActParams {
    int act;        // one of Act
    int order;      // 0: value, 1: dy * dvalue/dx, 2: dy * d2value/dx2
    double alpha;   // lrelu slope
    double gain;    // applied after the activation
    double clamp;   // clamp to [-clamp, clamp] after the gain; < 0 disables
    int64_t numel;
    int64_t bias_stride;  // memory stride of the bias dimension (dense tensors)
    int64_t bias_size;    // size of the bias dimension; 0 when there is no bias
};

// Value, first and second derivative of the activation at z.
template <typename T>
IPL_HD void act_eval(int act, T z, T alpha, T& a, T& d1, T& d2) {
    const T one = T(1), zero = T(0);
    switch (act) {
    case kRelu:
        a = z > zero ? z : zero; d1 = z > zero ? one : zero; d2 = zero; break;
    case kLrelu:
        a = z > zero ? z : z * alpha; d1 = z > zero ? one : alpha; d2 = zero; break;
    case kTanh: {
        T t = op_tanh(z);
        a = t; d1 = one - t * t; d2 = T(-2) * t * d1; break;
    }
    case kSigmoid: {
        T s = one / (one + op_exp(-z));
        a = s; d1 = s * (one - s); d2 = d1 * (one - T(2) * s); break;
    }
    case kElu:
        if (z > zero) { a = z; d1 = one; d2 = zero; }
        else { a = op_expm1(z); d1 = op_exp(z); d2 = d1; }
        break;
    case kSelu: {
        const T scale = T(1.0507009873554804934193349852946);
        const T sa = T(1.6732632423543772848170429916717);
        if (z > zero) { a = scale * z; d1 = scale; d2 = zero; }
        else { T e = op_exp(z); a = scale * sa * op_expm1(z); d1 = scale * sa * e; d2 = d1; }
        break;
    }
    case kSoftplus:
        // PyTorch's softplus (beta 1, threshold 20) is the identity above the threshold.
        if (z > T(20)) { a = z; d1 = one; d2 = zero; }
        else {
            T s = one / (one + op_exp(-z));
            a = op_log1p(op_exp(z)); d1 = s; d2 = s * (one - s);
        }
        break;
    case kSwish: {
        T s = one / (one + op_exp(-z));
        a = z * s; d1 = s * (one + z * (one - s)); d2 = s * (one - s) * (T(2) + z * (one - T(2) * s));
        break;
    }
    default:  // kLinear
        a = z; d1 = one; d2 = zero; break;
    }
}

// One output element. z = x + b; dy is only read for order > 0.
template <typename T>
IPL_HD T bias_act_point(const BiasActParams& p, T z, T dy) {
    T a, d1, d2;
    act_eval<T>(p.act, z, T(p.alpha), a, d1, d2);
    const T gain = T(p.gain);
    const T v = a * gain;
    const bool clamped = p.clamp >= 0;
    const T c = T(p.clamp);
    if (p.order == 0) {
        if (!clamped) return v;
        return v > c ? c : (v < -c ? -c : v);
    }
    // The clamp passes gradient where -clamp <= v <= clamp (inclusive, as torch.clamp does).
    if (clamped && (v > c || v < -c)) return T(0);
    return dy * gain * (p.order == 1 ? d1 : d2);
}

// Bias channel of the element at memory offset i of a dense tensor (index_t: see upfirdn_coords).
template <typename index_t>
IPL_HD index_t bias_index(const BiasActParams& p, index_t i) {
    return (i / index_t(p.bias_stride)) % index_t(p.bias_size);
}

}  // namespace ipl_ops
