"""``python -m softmask_builder.cli`` runs the ``softmask`` command (as before the CLI became a package)."""

from softmask_builder.cli import main

if __name__ == "__main__":
    main()
