"""Phantoms with known truth: analytic and hybrid (real LIDC shapes) lung slices in DeepLesion layout.

Modules, bottom up: :mod:`.anatomy` (the synthetic chest), :mod:`.analytic_shapes` (analytic nodule
solids and their partial-volume fraction), :mod:`.recist_marks` (RECIST of a truth mask),
:mod:`.shapes` (LIDC nodule shapes), :mod:`.cases` (analytic case generation), :mod:`.hybrid`
(LIDC shapes in synthetic or real slices), :mod:`.deeplesion_writer` (the DeepLesion layout and the
truth file), :mod:`.backgrounds` (real slices as hybrid backgrounds).
"""

from softmask_builder.phantom.cases import (KINDS, PHANTOM_VERSION, PhantomCase, generate_case,  # noqa: F401
                                            generate_cases, iter_cases)
from softmask_builder.phantom.deeplesion_writer import (read_truth, write_deeplesion,  # noqa: F401
                                                        write_replicated_sample, write_sample)
from softmask_builder.phantom.recist_marks import recist_from_mask  # noqa: F401
