"""Synthetic GGUF models: real architectures and tokenizers, random weights, any size, no download.

`rocmforge synth` (see `rocmforge.cli.synth`) writes them for benchmarks at realistic sizes; `presets` has the
shapes, `mixes` the per-tensor quant types, `tensors` the random blocks and `writer` the streaming file writer.
"""

from __future__ import annotations

from rocmforge.synth.errors import SynthError
from rocmforge.synth.mixes import QUANT_SCHEMES, QuantScheme, TensorSpec, get_scheme, plan_tensors
from rocmforge.synth.presets import ARCHITECTURES, PRESETS, Preset, get_preset, public_preset_names
from rocmforge.synth.writer import DEFAULT_TOKENIZER_SOURCES, SynthResult, write_synthetic_model

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_TOKENIZER_SOURCES",
    "PRESETS",
    "QUANT_SCHEMES",
    "Preset",
    "QuantScheme",
    "SynthError",
    "SynthResult",
    "TensorSpec",
    "get_preset",
    "get_scheme",
    "plan_tensors",
    "public_preset_names",
    "write_synthetic_model",
]
