"""Inference never goes through training: ``dsnet evaluate``, ``predict`` and ``export`` load
their model with :mod:`dsnet_trainer.models.loading`, never through the training modules.

Each command runs in a fresh interpreter on a real seg checkpoint (a DSNet row, so the SR teacher
is rebuilt from the checkpoint's record too); afterwards none of the training modules may be in
``sys.modules``. Importing a module is not enough to tell: the old layout imported the training
code inside the functions, when the model was loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .seg_helpers import trained_run

REPO = Path(__file__).resolve().parents[2]
TRAINING = ("dsnet_trainer.train_seg", "dsnet_trainer.engine", "dsnet_trainer.losses", "dsnet_trainer.sr")

RUNS = {
    "evaluate": "from dsnet_trainer.evaluate import evaluate_checkpoint\n"
                "evaluate_checkpoint(CKPT, data=DATA, out=OUT / 'eval', n_preview=2)",
    "predict": "from dsnet_trainer.predict import predict_shards\n"
               "predict_shards(CKPT, DATA, OUT / 'pred', split='test')",
    "export": "from dsnet_trainer.export import export_checkpoint\n"
              "export_checkpoint(CKPT, OUT / 'model.pt')",
}

_CHECK = """
import json, sys
from pathlib import Path
CKPT, DATA, OUT = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
{run}
training = {training!r}
print(json.dumps(sorted(m for m in sys.modules if m in training or m.startswith("dsnet_trainer.sr."))))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("inference"), epochs=1)


@pytest.mark.parametrize("command", sorted(RUNS))
def test_inference_loads_no_training_module(run, tmp_path, command):
    data, _, run_dir = run
    code = _CHECK.format(run=RUNS[command], training=TRAINING)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(run_dir / "checkpoints" / "best.pt"), str(data),
                          str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{command} imported training code"
