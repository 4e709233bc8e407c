"""The `rocmforge` command: one sub-module per sub-command, wired together in main.py."""

from __future__ import annotations

from rocmforge.cli.main import main

__all__ = ["main"]
