"""Hand-off of a verified build to other tools: nnU-Net v2 raw datasets and MONAI datalists.

Every export reads the build through :mod:`softmask_builder.formats.shards` after ``softmask verify``
passes, writes NIfTI with nibabel (a core dependency), is deterministic (same build, same
bytes), atomic, checksummed (its own ``SHA256SUMS``) and refuses to overwrite without
``overwrite=True``.
"""

from softmask_builder.export._common import BuildNotVerified, ExportError
from softmask_builder.export.monai_datalist import export_monai
from softmask_builder.export.nnunet import export_nnunet

__all__ = ["export_nnunet", "export_monai", "ExportError", "BuildNotVerified"]
