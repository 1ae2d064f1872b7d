"""Soft Mask dataset builder.

Turns lesion priors (DeepLesion RECIST marks, LIDC-IDRI multi-reader contours, plain binary
masks) into trimaps and then into Soft Masks by closed-form matting (Levin et al. 2008), as in
Wang, Xu et al., DSNet (TNNLS 2023) Sec. III-A, and writes them to verifiable HDF5 shards.

Array conventions used everywhere in this package: axes are (row, col); images are in HU
(float or int16) unless a name says otherwise (``image01`` = windowed to [0, 1]); spacing is
``spacing_mm = (row_mm, col_mm)``; trimaps are uint8 with 0 = background, 128 = unknown,
255 = lesion (see :mod:`softmask_builder.trimap`).
"""

__version__ = "0.1.0"
