"""A fair nnU-Net v2 row for the truth study (issue 25; docs/TRAINING.md): ``nnUNetTrainer_Steps``
trains for exactly the number of gradient steps of the U-Net row, instead of one of nnU-Net's
``_Xepochs`` debugging trainers (``nnUNetTrainer_1epoch`` ran 250 of the default 250,000
iterations, 0.1 %).

Design (not run yet; nnunetv2 lives in ``.venv-nnunet``, which ``make nnunet-baseline`` creates):

* nnU-Net's schedule is ``num_epochs`` (1000) x ``num_iterations_per_epoch`` (250) with a poly
  learning-rate decay over the epochs. The subclass keeps everything else of ``nnUNetTrainer``
  (plans, batch size, augmentation, deep supervision, validation) and sets the two numbers so that
  their product is exactly ``NNUNET_TOTAL_STEPS`` (an environment variable, since
  ``nnUNetv2_train -tr NAME`` instantiates the class by name and passes no options; default 3810,
  the U-Net row's steps on the 1500-case sample), with about 250 iterations per epoch
  (:func:`schedule_for_steps`). The table reports its fraction of the default schedule
  (``total / 250000``) and, because nnU-Net's 2d batch size comes from its plans, the number of
  crops seen next to the U-Net row's.
* nnU-Net finds trainers by searching its own package, so the file is copied there before
  training::

      cp scripts/nnunet_steps_trainer.py \\
         "$(.venv-nnunet/bin/python -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')/training/nnUNetTrainer/variants/"
      NNUNET_TOTAL_STEPS=3810 scripts/nnunet_baseline.sh BUILD WORK nnUNetTrainer_Steps 0

:func:`schedule_for_steps` is pure and tested (``tests/dsnet_trainer/test_tables.py``); the class is
defined only where ``nnunetv2`` imports.
"""

from __future__ import annotations

import os

#: nnU-Net v2's default schedule (nnUNetTrainer.__init__): 1000 epochs of 250 iterations.
DEFAULT_EPOCHS = 1000
DEFAULT_ITERATIONS = 250
#: The U-Net row's gradient steps on the 1500-case sample (record C).
DEFAULT_TOTAL_STEPS = 3810


def schedule_for_steps(total_steps: int, *, iterations_near: int = DEFAULT_ITERATIONS) -> tuple[int, int]:
    """``(num_epochs, num_iterations_per_epoch)`` whose product is exactly ``total_steps``, with
    iterations per epoch as close to ``iterations_near`` as a divisor allows (ties: more
    epochs, so the poly decay has more steps). Raises ValueError for ``total_steps < 1``."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    divisors = [e for e in range(1, total_steps + 1) if total_steps % e == 0]
    epochs = min(divisors, key=lambda e: (abs(total_steps // e - iterations_near), -e))
    return epochs, total_steps // epochs


def total_steps_from_env() -> int:
    """``NNUNET_TOTAL_STEPS`` as an int (default :data:`DEFAULT_TOTAL_STEPS`)."""
    raw = os.environ.get("NNUNET_TOTAL_STEPS", str(DEFAULT_TOTAL_STEPS))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"NNUNET_TOTAL_STEPS must be an integer, got {raw!r}") from None


try:  # only inside nnU-Net's environment
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
except ImportError:  # pragma: no cover - the project's own venv has no nnunetv2
    nnUNetTrainer = None

if nnUNetTrainer is not None:  # pragma: no cover - needs nnunetv2

    class nnUNetTrainer_Steps(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
        """nnUNetTrainer with ``NNUNET_TOTAL_STEPS`` gradient steps (see the module docstring)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_epochs, self.num_iterations_per_epoch = schedule_for_steps(total_steps_from_env())
