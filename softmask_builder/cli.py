"""`softmask` command line: thin wrappers over the typed API (parse, set up parallelism and
progress, call, summarise)."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softmask")
def main() -> None:
    """Build Soft Mask datasets (trimaps + closed-form matting) into verifiable HDF5 shards."""


if __name__ == "__main__":  # pragma: no cover
    main()
