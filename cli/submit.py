"""CLI: submit (work in progress)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
