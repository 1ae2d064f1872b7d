"""Networks chosen by name from a config, through an explicit registry (BasicSR style).

Each entry maps a name to ``"module:attribute"``; the module is imported only when the model is
built, so ``import dsnet_trainer.models`` does not import torch. Add a network by adding one
line to :data:`REGISTRY` (no folder scanning, no decorators with import side effects).

API
---
``build_model(name, **kwargs) -> torch.nn.Module`` -- construct by name (kwargs go to the class).
``model_class(name)`` -- the class itself; ``available_models()`` -- sorted names.
Unknown names raise :class:`~dsnet_trainer.errors.ConfigError` listing the known ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

REGISTRY: dict[str, str] = {
    # SR teacher (Sec. III-B3 (1)): SRResNet generator and SRGAN's VGG-style discriminator.
    "srresnet": "dsnet_trainer.models.srresnet:SRResNet",
    "sr_vgg": "dsnet_trainer.models.sr_discriminator:VGGDiscriminator",
    # DSNet (Sec. III-B/C) and its parts; "segnet" builds any Table III/IV/V variant by name.
    "unet": "dsnet_trainer.models.unet:UNet",
    "cbam_unet": "dsnet_trainer.models.unet:CBAMUNet",
    "drtm": "dsnet_trainer.models.drtm:DRTM",
    "pixel_disc": "dsnet_trainer.models.discriminator:PixelDiscriminator",
    "segnet": "dsnet_trainer.models.dsnet:build_seg_model",
}


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(REGISTRY)


def model_class(name: str) -> type:
    """The class registered as ``name`` (imports its module)."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(available_models())})") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def build_model(name: str, **kwargs: Any):
    """Instantiate the model registered as ``name`` with ``kwargs``; a bad keyword raises
    :class:`ConfigError` naming the model and the argument."""
    cls = model_class(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from exc
