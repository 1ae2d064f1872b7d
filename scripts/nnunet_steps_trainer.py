"""A fair nnU-Net v2 row for the truth study (issue 25; docs/TRAINING.md): ``nnUNetTrainer_Steps``
trains for exactly the number of gradient steps of the U-Net row, instead of one of nnU-Net's
``_Xepochs`` debugging trainers (``nnUNetTrainer_1epoch`` ran 250 of the default 250,000
iterations, 0.1 %).

Design (run on the truth study's primary build, 2026-12-07: docs/TRAINING.md, the nnU-Net row;
nnunetv2 lives in ``.venv-nnunet``, which ``make nnunet-baseline`` creates):

* nnU-Net's schedule is ``num_epochs`` (1000) x ``num_iterations_per_epoch`` (250) with a poly
  learning-rate decay over the epochs. The subclass keeps everything else of ``nnUNetTrainer``
  (plans, batch size, augmentation, deep supervision, validation) and sets the two numbers so that
  their product is exactly ``NNUNET_TOTAL_STEPS`` (an environment variable, since
  ``nnUNetv2_train -tr NAME`` instantiates the class by name and passes no options; default 3810,
  the U-Net row's steps on the 1500-case sample), with about 250 iterations per epoch
  (:func:`schedule_for_steps`). The table reports its fraction of the default schedule
  (``total / 250000``) and, because nnU-Net's 2d batch size comes from its plans, the number of
  crops seen next to the U-Net row's.
* ``NNUNET_BATCH_SIZE`` (optional) replaces the plans' batch size (:func:`batch_size_from_env`):
  the truth study's CPU row runs the U-Net row's steps *and* batch (2500 x 8), because the plans'
  GPU-sized batch makes a step 42 times dearer on the CPU; the table says so.
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


def batch_size_from_env(planned: int) -> int:
    """``NNUNET_BATCH_SIZE`` as an int >= 1, or ``planned`` (the plans' batch size) when unset or empty.

    On the CPU the plans' 2d batch (285 crops of 64 px on the truth study's build: nnU-Net caps it at
    5 % of the dataset, sized for a GPU) costs 18.7 s of CPU per gradient step (batch 8: 0.44 s;
    ``benchmarks/bench_nnunet_step.py``), so 2500 steps would be 13 CPU-hours of steps alone; the
    truth study's CPU row sets the U-Net row's batch (8) instead and says so."""
    raw = os.environ.get("NNUNET_BATCH_SIZE", "").strip()
    if not raw:
        return planned
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"NNUNET_BATCH_SIZE must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"NNUNET_BATCH_SIZE must be >= 1, got {value}")
    return value


try:  # only inside nnU-Net's environment
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
except ImportError:  # pragma: no cover - the project's own venv has no nnunetv2
    nnUNetTrainer = None

if nnUNetTrainer is not None:  # pragma: no cover - needs nnunetv2

    class nnUNetTrainer_Steps(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
        """nnUNetTrainer with ``NNUNET_TOTAL_STEPS`` gradient steps (see the module docstring).

        The signature is nnU-Net's own, spelled out: ``nnUNetTrainer.__init__`` records its init
        arguments by the names of ``inspect.signature(self.__init__)`` (to re-create the trainer
        from a checkpoint), so ``*args, **kwargs`` fails there with ``KeyError: 'args'``."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch = schedule_for_steps(total_steps_from_env())
            # a checkpoint every epoch (nnU-Net: every 50), so `nnUNetv2_train ... --c` resumes a CPU
            # run cut off mid-way (a few epochs of ~250 steps here)
            self.save_every = 1

        def _set_batch_size_and_oversample(self):
            super()._set_batch_size_and_oversample()
            if self.is_ddp and os.environ.get("NNUNET_BATCH_SIZE", "").strip():
                raise RuntimeError("NNUNET_BATCH_SIZE is for one device; leave it unset with DDP")
            if not self.is_ddp:
                self.batch_size = batch_size_from_env(self.configuration_manager.batch_size)
