"""The one error `rocmforge synth` raises on purpose (bad preset, quant type, tokenizer source or output path)."""

from __future__ import annotations

from rocmforge.errors import RocmForgeError


class SynthError(RocmForgeError):
    """A synthetic model cannot be written as asked; the message says what to change."""
