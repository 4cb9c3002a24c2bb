"""matshift pipeline: one thin module per DVC stage, plus the CLI, config and I/O helpers."""

__version__ = "0.1.0"
