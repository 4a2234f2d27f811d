"""StyleGAN2's custom ops: fused bias+activation and upfirdn2d, each with impl='auto'|'cuda'|'ref'.

'auto' runs the CUDA kernels (csrc/, compiled on first use into a cache) for tensors on a GPU, and the
reference PyTorch code otherwise; IPL_CUDA_OPS=ref forces the reference everywhere. See ipl.cuda_ops._build.
"""
from ipl.cuda_ops._build import CudaOpsUnavailable, build_status, set_impl_override
from ipl.cuda_ops.bias_act import bias_act
from ipl.cuda_ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["bias_act", "upfirdn2d", "upsample2d", "downsample2d", "filter2d", "setup_filter",
           "build_status", "set_impl_override", "CudaOpsUnavailable"]
