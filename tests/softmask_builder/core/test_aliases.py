"""Old module paths (before the grouping by role) give the very module at the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import softmask_builder

# Imports the README and docs/*.md printed before the modules moved: users' code has them.
DOCUMENTED_BEFORE = [
    ("softmask_builder.phantom", "generate_case"),
    ("softmask_builder.pipeline", "LabelParams"), ("softmask_builder.pipeline", "label_from_mask"),
    ("softmask_builder.pipeline", "label_from_readers"), ("softmask_builder.pipeline", "label_from_recist"),
    ("softmask_builder.metrics", "dice"), ("softmask_builder.matting", "closed_form_alpha"),
    ("softmask_builder.executor", "TaskRunner"), ("softmask_builder.executor", "keep_freed_memory"),
    ("softmask_builder.shards", "open_shard"), ("softmask_builder.shards", "read_sample"),
    ("softmask_builder.recipes", "load_recipe"), ("softmask_builder.build", "plan_build"),
    ("softmask_builder.build", "run_build"), ("softmask_builder.release", "verify"),
    ("softmask_builder.agreement", "agreement_report"), ("softmask_builder.errors", "SoftMaskError"),
    ("softmask_builder.hybrid", "simulate_readers"),
]


@pytest.mark.parametrize("old, new", sorted(softmask_builder.MOVED_MODULES.items()))
def test_old_path_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    module = sys.modules[new]
    assert module.__spec__.name == new and module.__name__ == new  # the alias does not rename it


@pytest.mark.parametrize("module, name", DOCUMENTED_BEFORE)
def test_documented_imports_still_work(module, name):
    assert getattr(importlib.import_module(module), name) is not None


def test_every_new_path_exists_and_no_old_file_is_left():
    root = Path(softmask_builder.__path__[0]).parent
    for old, new in softmask_builder.MOVED_MODULES.items():
        assert (root / (new.replace(".", "/") + ".py")).is_file()
        assert not (root / (old.replace(".", "/") + ".py")).exists()  # a real file would shadow the alias


def test_old_path_in_a_fresh_interpreter():
    """The alias works as the first import of a process (``from X import Y`` form)."""
    code = ("from softmask_builder.matting import closed_form_alpha; "
            "import softmask_builder.labelling.matting as m; assert closed_form_alpha is m.closed_form_alpha")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("softmask_builder.no_such_module")
