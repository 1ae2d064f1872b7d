"""Source adapters: the only code that reads inputs. Each turns files into
:class:`~softmask_builder.sources.base.SampleRecord` objects (image in HU, spacing in mm in
(row, col) order, a prior, ids); everything about DeepLesion, LIDC/pylidc and DICOM quirks lives
in its adapter."""
