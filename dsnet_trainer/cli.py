"""`dsnet` command line: thin wrappers over the typed API."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsnet")
def main() -> None:
    """Train, evaluate and run DSNet and its SRGAN teacher on Soft Mask shards."""


if __name__ == "__main__":  # pragma: no cover
    main()
