"""What to quantize: a `QuantConfig` (weight scheme, optional activation scheme, mode, exclusions) and the named
presets `nnfuse.compile(quantize=...)` accepts.

A string is a preset name ("w8a8", "w4g128", "fp8", "mxfp4", "nvfp4", "w4a4", ...), a format name of
`nnfuse.ir.quant_formats.FORMATS` (weight-only: "int4_g64", "mxint8"), or "WEIGHTS:ACTS" with two format names
("mxint8:mxint8" quantizes both; an activation format's group runs along the feature axis, group 0 = per token).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Optional

from ...ir import NnfuseError
from ...ir.quant_formats import FORMATS, QuantError, Scheme, scheme

PRESETS: dict[str, str] = {
    "w8": "int8", "w8a8": "int8:int8", "w8a8s": "int8:int8", "w4a8": "int4:int8", "w4a4": "int4:int4",
    "w4g32": "int4_g32", "w4g64": "int4_g64", "w4g128": "int4_g128",
    "fp8": "fp8_e4m3:fp8_e4m3", "fp8w": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2:fp8_e5m2",
}
STATIC_PRESETS = {"w8a8s"}


@dataclass(frozen=True)
class QuantConfig:
    weights: Scheme
    acts: Optional[Scheme] = None
    mode: str = "dynamic"          # activations: "dynamic" (per token, at run time) or "static" (calibrated)
    exclude: str = ""              # regex searched in node.meta["loc"]: matching layers stay in fp32
    name: str = ""

    @property
    def pass_name(self) -> str:
        if self.acts is None:
            return "quantize-weights"
        return "quantize-static" if self.mode == "static" else "quantize-dynamic"

    def excluded(self, loc: str) -> bool:
        return bool(self.exclude) and re.search(self.exclude, loc or "") is not None

    def describe(self) -> str:
        a = (f", acts {self.acts.describe().replace('per-channel', 'per-token')} ({self.mode})" if self.acts is not None
             else " (weight-only)")
        return f"weights {self.weights.describe()}{a}"


def parse_config(q: Any, options: Optional[dict] = None) -> QuantConfig:
    """A QuantConfig from the `quantize=` option (preset / format / "W:A" string, Scheme or QuantConfig)."""
    options = options or {}
    exclude = options.get("exclude") or ""
    if isinstance(exclude, (list, tuple)):
        exclude = "|".join(f"(?:{e})" for e in exclude)
    try:
        re.compile(exclude)
    except re.error as e:
        raise NnfuseError(f"exclude: bad regular expression {exclude!r}: {e}") from None
    mode = options.get("quant_mode") or "dynamic"
    if isinstance(q, QuantConfig):
        cfg = q
    elif isinstance(q, Scheme):
        cfg = QuantConfig(q, name=q.describe())
    elif isinstance(q, str):
        name = q
        spec = PRESETS.get(q, q)
        if q in STATIC_PRESETS:
            mode = "static"
        w, _, a = spec.partition(":")
        try:
            cfg = QuantConfig(scheme(w), scheme(a) if a else None, name=name)
        except QuantError:
            raise NnfuseError(f"unknown quantization scheme '{q}'; presets: {', '.join(PRESETS)}; formats: "
                              f"{', '.join(FORMATS)}; or 'WEIGHTS:ACTS' with two formats") from None
    else:
        raise NnfuseError(f"quantize= takes a preset name, a Scheme or a QuantConfig, not {type(q).__name__}")
    if mode not in ("dynamic", "static"):
        raise NnfuseError(f"quant_mode must be 'dynamic' or 'static', got {mode!r}")
    if cfg.acts is not None and cfg.acts.is_nv:
        raise NnfuseError("NV (two-level fp8-scaled) formats are weight-only here; use an MX or int format for activations")
    clip = options.get("act_clip")      # a ratio, or "mse" (searched per activation by the quantize passes)
    if clip is not None and clip != "mse" and not isinstance(clip, (int, float)):
        raise NnfuseError(f"act_clip must be a ratio in (0, 1] or 'mse', got {clip!r}")
    acts = replace(cfg.acts, clip=float(clip)) if clip not in (None, "mse") and cfg.acts is not None else cfg.acts
    return replace(cfg, acts=acts, mode=mode if cfg.acts is not None else "dynamic", exclude=exclude or cfg.exclude)
