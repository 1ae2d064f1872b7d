"""Phantoms with known truth: analytic and hybrid (real LIDC shapes) lung slices in DeepLesion layout."""

from softmask_builder.phantom.cases import (KINDS, PHANTOM_VERSION, PhantomCase, generate_case, generate_cases,  # noqa: F401
                                            iter_cases, read_truth, recist_from_mask, write_deeplesion,
                                            write_replicated_sample, write_sample)
