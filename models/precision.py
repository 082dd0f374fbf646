"""Precision policy: which float type the CLIP weights are cast to, once, when they load.

``auto`` (``VIDSEEK_PRECISION``, the default) picks what the hardware runs fastest without
changing results beyond rounding:

* CUDA -> ``fp16`` (what clip-retrieval and clip-as-service run);
* a CPU with bf16 matrix units (Intel AMX tiles, or AVX512-BF16) -> ``bf16``;
* any other CPU (AVX2, plain AVX-512, ARM without them) -> ``fp32``: emulated bf16 is slower
  than fp32 there, so such a machine must not get slower.

The weights are cast once (open_clip's own ``precision`` argument of ``create_model``: matrices
in fp16/bf16, LayerNorm computed in fp32); there is no per-call autocast, which on CPU re-casts
every weight on every call. The CPU probe is a parameter so that tests can hand in each
capability without patching torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from models.registry import AUTO, PRECISIONS

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
FP32: Precision = "fp32"
BF16: Precision = "bf16"
FP16: Precision = "fp16"
DTYPES: dict[str, torch.dtype] = {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}


@dataclass(frozen=True)
class CpuCapability:
    """What the CPU offers for matrix work.

    Attributes:
        isa: torch's vector ISA for its CPU kernels (``torch.backends.cpu.get_cpu_capability()``:
            ``"AVX2"``, ``"AVX512"``, ``"DEFAULT"``, ...).
        amx: Intel AMX tiles (bf16 matrix units).
        avx512_bf16: the AVX512-BF16 instructions.
        vnni: the AVX512-VNNI int8 dot-product instructions (without them, int8 matrix kernels
            multiply u8 x s8 pairs into int16 sums that can saturate, see ``models.text_onnx``).
    """

    isa: str
    amx: bool = False
    avx512_bf16: bool = False
    vnni: bool = False

    @property
    def has_bf16_units(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        """e.g. ``"AVX512 +AMX +AVX512-BF16 +VNNI"``, ``"AVX512 +VNNI (no bf16 units)"`` or ``"AVX2 (no bf16 units)"``."""
        extras = [name for name, on in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16), ("VNNI", self.vnni)) if on]
        text = " ".join([self.isa, *(f"+{e}" for e in extras)])
        return text if self.has_bf16_units else f"{text} (no bf16 units)"


def detect_cpu_capability() -> CpuCapability:
    """This machine's :class:`CpuCapability`, as torch sees it.

    The ISA comes from the public ``torch.backends.cpu.get_cpu_capability()``; torch has no public
    call for the bf16 units, so AMX, AVX512-BF16 and VNNI come from ``torch.cpu._is_amx_tile_supported``,
    ``torch.cpu._is_avx512_bf16_supported`` and ``torch.cpu._is_vnni_supported`` (taken as absent in a
    torch without them).
    """

    def has(name: str) -> bool:
        probe = getattr(torch.cpu, name, None)
        return bool(probe()) if probe is not None else False

    return CpuCapability(
        isa=torch.backends.cpu.get_cpu_capability(),
        amx=has("_is_amx_tile_supported"),
        avx512_bf16=has("_is_avx512_bf16_supported"),
        vnni=has("_is_vnni_supported"),
    )


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a process runs its CLIP model at, and why."""

    precision: Precision
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


FP32_DEFAULT = PrecisionChoice(FP32, "default")


def choose_precision(
    requested: str, device: torch.device, cpu_probe: Callable[[], CpuCapability] = detect_cpu_capability
) -> PrecisionChoice:
    """Resolve ``VIDSEEK_PRECISION`` for ``device``; ``cpu_probe`` is only called for ``auto`` on CPU."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != AUTO:
        return PrecisionChoice(requested, "set by VIDSEEK_PRECISION")  # type: ignore[arg-type]
    if device.type == "cuda":
        return PrecisionChoice(FP16, "auto: CUDA device")
    if device.type != "cpu":
        return PrecisionChoice(FP32, f"auto: {device.type} device")
    cpu = cpu_probe()
    if cpu.has_bf16_units:
        return PrecisionChoice(BF16, f"auto: CPU {cpu.describe()}")
    return PrecisionChoice(FP32, f"auto: CPU {cpu.describe()}")
