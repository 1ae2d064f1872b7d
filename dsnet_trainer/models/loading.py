"""Segmentation networks from their config or from a seg checkpoint, for training and inference.

:func:`build_from_config` builds ``(net, discriminator, teacher_arch)`` for a
:class:`~dsnet_trainer.seg_config.SegModelConfig`, the frozen SR teacher coming from a module, a
teacher record or a teacher file (:mod:`.teacher`). :func:`load_seg_model` rebuilds a trained
network from a seg checkpoint alone: this is how ``dsnet evaluate``, ``predict`` and ``export`` get
their model, without importing the training code.

torch and the networks are imported when a model is built, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError, TrainerError
from ..seg_config import SegConfig, SegDataConfig, SegModelConfig

__all__ = ["CHECKPOINT_KIND", "build_from_config", "load_seg_model"]

#: ``kind`` of the checkpoints ``dsnet train`` writes (:mod:`dsnet_trainer.checkpoint`).
CHECKPOINT_KIND = "seg"


def _teacher_from_file(path: str | Path, data_cfg: SegDataConfig | None):
    """Load the frozen SR teacher (:func:`~dsnet_trainer.models.teacher.load_teacher`) and its
    architecture record; refuse a teacher trained with another HU window than ``data_cfg``'s."""
    from .teacher import load_teacher, read_teacher_arch

    path = Path(path)
    teacher = load_teacher(path)  # CheckpointError names the file
    if data_cfg is not None and (teacher.window_level_hu, teacher.window_width_hu) != (data_cfg.level_hu,
                                                                                         data_cfg.width_hu):
        raise CheckpointError(
            f"model.teacher {path} was trained on images windowed at level {teacher.window_level_hu} / width "
            f"{teacher.window_width_hu} HU but data uses {data_cfg.level_hu} / {data_cfg.width_hu} HU; "
            "retrain the teacher or set data.level_hu / data.width_hu to match")
    return teacher, read_teacher_arch(path)


def build_from_config(model_cfg: SegModelConfig, *, data_cfg: SegDataConfig | None = None, teacher=None,
                      teacher_arch: Mapping[str, Any] | None = None):
    """Build ``(net, discriminator_or_None, teacher_arch)`` for ``model_cfg``.

    The teacher comes from, in order: ``teacher`` (a module, e.g. a test stand-in), ``teacher_arch``
    (an :class:`~dsnet_trainer.models.teacher.SRTeacher` rebuilt from the record a seg checkpoint
    keeps; its weights come with the checkpoint), ``model_cfg.teacher`` (a teacher file). Variants
    without a teacher ignore all three.

    Raises
    ------
    ConfigError : the variant needs a teacher and none is given; ``data_cfg.input_shrink > 1``
        with a teacher whose scale differs from it or in ``native`` mode (arms B1/B2 need a
        x``input_shrink`` teacher in ``upscale`` mode).
    CheckpointError : the teacher file is unreadable, was trained on another HU window, or its
        outputs do not fit DSNet (wrong shapes).
    """
    from .discriminator import PixelDiscriminator
    from .dsnet import build_seg_model, get_variant

    variant = get_variant(model_cfg.variant)
    arch: dict[str, Any] | None = None
    source = "<given module>"
    if variant.uses_teacher:
        if teacher is not None:
            arch = dict(teacher_arch) if teacher_arch else None
        elif teacher_arch:
            from .teacher import teacher_from_arch

            arch = dict(teacher_arch)
            teacher = teacher_from_arch(arch)
            source = "the checkpoint's teacher record"
        elif model_cfg.teacher:
            teacher, arch = _teacher_from_file(model_cfg.teacher, data_cfg)
            source = model_cfg.teacher
        else:
            raise ConfigError(f"variant {variant.name!r} needs the SR teacher: set model.teacher to a teacher "
                              "file (dsnet pretrain-sr writes teacher.pt) or pick an LR variant (unet, backbone)")
    shrink = data_cfg.input_shrink if data_cfg is not None else 1
    if shrink > 1 and variant.uses_teacher:
        # arms B1/B2: the crop shrunk x`shrink` is the teacher's LR input, so its scale must be `shrink`
        from .dsnet import check_teacher_for_shrink, probe_teacher

        scale = getattr(teacher, "scale", None)
        try:
            if model_cfg.teacher_mode != "upscale":
                check_teacher_for_shrink(shrink, teacher_scale=0, teacher_mode=model_cfg.teacher_mode)
            if scale is None:
                scale, _ = probe_teacher(teacher, mode=model_cfg.teacher_mode)
            check_teacher_for_shrink(shrink, teacher_scale=int(scale), teacher_mode=model_cfg.teacher_mode)
        except ValueError as exc:
            raise ConfigError(f"data.input_shrink={shrink} and model.teacher {source} (x{scale}, "
                              f"model.teacher_mode={model_cfg.teacher_mode}) do not fit: {exc}") from exc
    try:
        net = build_seg_model(variant, widths=model_cfg.widths, reduction=model_cfg.cbam_reduction,
                              spatial_kernel=model_cfg.cbam_spatial_kernel, teacher=teacher,
                              teacher_mode=model_cfg.teacher_mode, drtm_fc=model_cfg.drtm_fc,
                              input_shrink=shrink)
    except TrainerError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"model.teacher {source} does not fit DSNet: {exc}") from exc
    disc = PixelDiscriminator(ndf=model_cfg.disc_ndf) if variant.gan else None
    return net, disc, arch


def load_seg_model(checkpoint: str | Path, *, map_location: str = "cpu"):
    """Rebuild a trained segmentation network from a seg checkpoint alone (eval mode).

    Returns ``(net, info)``; ``info`` holds ``config`` (the run's :class:`SegConfig` as a dict),
    ``seg_config`` (the same, typed), ``variant``, ``crop_px``, ``level_hu``, ``width_hu``,
    ``epoch``, ``teacher_arch`` (the teacher record, with its training patients; None without a teacher).

    Raises
    ------
    CheckpointError : missing/unreadable file, not a seg checkpoint, weights that do not fit.
    """
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location=map_location, expect_kind=CHECKPOINT_KIND)
    extra = ckpt.get("extra", {})
    try:
        cfg = from_dict(SegConfig, extra["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{checkpoint}: no usable run config inside ({exc})") from exc
    arch = extra.get("teacher_arch") or None
    net, _, _ = build_from_config(cfg.model, data_cfg=cfg.data, teacher_arch=arch)
    try:
        net.load_state_dict(ckpt["modules"]["model"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit variant {cfg.model.variant!r}: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    net.eval()
    trained = soft_head_trained(cfg)
    if net.soft_head and not trained:
        # a Soft Mask head that no loss reached (lambda2 = 0, no GAN: the truth study's A0 and A4)
        # holds its random init; its soft map is then the probability map, as for a variant without one
        net.soft_head = False
    info = {"config": to_dict(cfg), "variant": cfg.model.variant, "crop_px": cfg.data.crop_px,
            "level_hu": cfg.data.level_hu, "width_hu": cfg.data.width_hu, "epoch": int(ckpt.get("epoch", 0)),
            "teacher_arch": arch, "seg_config": cfg, "soft_head_trained": trained}
    return net, info


def soft_head_trained(cfg) -> bool:
    """Whether a run of ``cfg`` (a :class:`SegConfig`) trained its variant's Soft Mask head: the
    variant has one and a loss reaches it (``optim.l1_weight > 0``, or the GAN term of a variant with
    the discriminator, ``optim.gan_weight > 0``). False for the truth study's Dice-only arms (A0, A4:
    ``unet_soft`` with lambda2 = 0), whose head output is its random init: :func:`load_seg_model`
    then serves the probability map as the soft map (``2 p - 1``), so SAD/MSE score what the model learnt."""
    from .dsnet import get_variant

    v = get_variant(cfg.model.variant)
    return bool(v.soft_head and (cfg.optim.l1_weight > 0 or (v.gan and cfg.optim.gan_weight > 0)))
