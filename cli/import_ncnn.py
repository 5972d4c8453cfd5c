"""CLI: import_ncnn (work in progress)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
