"""Writing matplotlib figures as reproducible PNG files (training curves, SR samples, evaluation
overlays): laid out, titled, written atomically, without the metadata that would change the bytes."""

from __future__ import annotations

from pathlib import Path

from softmask_builder.core import atomic

__all__ = ["save_figure"]


def save_figure(fig, path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Lay out, title and write a matplotlib figure as PNG atomically (temp name, then rename),
    without the "Software" metadata (so the same figure gives the same bytes); closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path, keep_suffix=True) as tmp:  # matplotlib picks the format by suffix
        fig.savefig(tmp, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path
