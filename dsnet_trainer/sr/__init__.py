"""The self-supervised x4 super-resolution teacher (DSNet, Sec. III-B3 (1)):
SRResNet + adversarial fine-tuning, no VGG content loss.

CT slices are down-sampled x4 (512 -> 128) and an SR network learns to restore them (the paper
uses an SRGAN; without its VGG content loss ours is not SRGAN, though stage names and paths keep
"srgan"); its generator, frozen, later gives DSNet's DRTM its detail features. Training runs in
two stages, as SRGAN training must (Ledig et al. 2017):

1. **SRResNet** -- the generator alone with a pixel loss (L1 or MSE).
2. **adversarial fine-tuning** (stage "srgan") -- *starting from stage 1's generator* with a VGG-style
   discriminator: pixel loss + ``adv_weight`` x BCE adversarial loss + optional
   ``feature_weight`` x discriminator feature matching. No pretrained network (VGG) can be
   downloaded here, so the paper's VGG content loss is replaced by these offline terms.

Validation reports PSNR and SSIM of the SR output and of bicubic up-sampling of the same LR
against the HR slice (border of ``eval.shave_px`` ignored), in ``report.json``/``report.md``.

Run folder (``out``)::

    config.yaml, run_info.json        resolved config, seed, git commit, versions
    srresnet/ srgan/                  per stage: checkpoints/{last,best,epoch_XXXX}.pt,
                                      metrics.jsonl/.csv, curves.png, samples.png
    teacher.pt                        frozen teacher for DRTM (see export_teacher / load_teacher)
    report.json, report.md            bicubic vs SRResNet vs SRGAN on the validation slices

Modules, one job each: :mod:`.config` (``SRConfig`` and its sections), :mod:`.data` (patches and
validation slices), :mod:`.evaluation` (PSNR/SSIM vs bicubic, previews, ``report.md``),
:mod:`.stages` (the two training stages), :mod:`.pretrain` (``pretrain_sr``). The teacher file
format and the frozen teacher live beside the model registry, in
:mod:`dsnet_trainer.models.teacher`, so that DSNet's inference never imports this package.

Public API (all importable from ``dsnet_trainer.sr``)
-----------------------------------------------------
``SRConfig`` (+ sections), ``pretrain_sr(cfg, data=..., out=..., resume=...) -> SRRunResult``,
``evaluate_sr(generator, loader, ...)``, ``export_teacher(generator, cfg, path)``,
``load_teacher(path) -> SRTeacher`` (``teacher(lr) -> TeacherOutput(sr, features)``).
"""

from ..models.teacher import (TEACHER_FORMAT, TEACHER_VERSION, SRTeacher, TeacherOutput, export_teacher,
                              load_teacher, read_teacher_file, teacher_summary)
from .config import (DiscriminatorConfig, GeneratorConfig, SRConfig, SRDataConfig, SREvalConfig, Stage1Config,
                     Stage2Config)
from .data import SRData, build_sr_datasets
from .evaluation import DATA_RANGE, bicubic_upsample, evaluate_sr, format_report, save_sr_samples
from .pretrain import SRRunResult, pretrain_sr
from .stages import SRHooks

__all__ = ["SRConfig", "SRDataConfig", "GeneratorConfig", "DiscriminatorConfig", "Stage1Config", "Stage2Config",
           "SREvalConfig", "SRHooks", "SRRunResult", "SRTeacher", "TeacherOutput", "build_sr_datasets",
           "bicubic_upsample", "evaluate_sr", "export_teacher", "load_teacher", "read_teacher_file", "pretrain_sr",
           "format_report", "save_sr_samples", "teacher_summary", "SRData", "DATA_RANGE", "TEACHER_FORMAT",
           "TEACHER_VERSION"]
