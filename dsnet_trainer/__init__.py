"""DSNet trainer: reads Soft Mask shards, pretrains an SRGAN x4 teacher on CT slices, trains
DSNet (CBAM residual U-Net + Detailed Representation Transfer + binary and Soft Mask heads,
pixel-wise conditional discriminator), baselines and ablations; evaluates and predicts.

torch is an optional dependency of the distribution (extra ``train``); importing this package
does not import torch.
"""

__version__ = "0.1.0"
