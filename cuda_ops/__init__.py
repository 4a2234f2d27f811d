"""StyleGAN2's custom ops: fused bias+activation and upfirdn2d, each with impl='auto'|'cuda'|'ref'."""
from cuda_ops.bias_act import bias_act
from cuda_ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["bias_act", "upfirdn2d", "upsample2d", "downsample2d", "filter2d", "setup_filter"]
