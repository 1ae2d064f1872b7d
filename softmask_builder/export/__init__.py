"""Hand-off of a verified build to other tools: nnU-Net v2 raw datasets and MONAI datalists.

Every export reads the build through :mod:`softmask_builder.shards` after ``softmask verify``
passes, writes NIfTI with nibabel (the ``export`` extra), is deterministic (same build, same
bytes), atomic, checksummed (its own ``SHA256SUMS``) and refuses to overwrite without
``overwrite=True``.
"""

from ._common import BuildNotVerified, ExportError
from .monai_datalist import export_monai
from .nnunet import export_nnunet

__all__ = ["export_nnunet", "export_monai", "ExportError", "BuildNotVerified"]
