"""Validated, frozen configuration dataclasses, shared by the API, the CLI and config files.

Every field has a default a user who gives only a model and data can live with; __post_init__
checks values and raises ConfigError naming the option and what to do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError


def _check(cond: bool, option: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"option '{option}': {message}")


@dataclass(frozen=True)
class QuantConfig:
    """Bit ranges and where quantizers go (geta-algorithm.md section 1)."""

    weight_bits: tuple[int, int] = (4, 8)  # [b_l, b_u] for weights
    act_bits: tuple[int, int] = (4, 8)  # [b_l, b_u] for activations
    weight_bits_start: int = 16  # upper bound at the start of the projection stage
    act_bits_start: int = 16
    per_channel: bool = False  # weights: one (d, q_m) per output channel instead of per tensor
    learn_t: bool = False  # learn the exponent t (default t = 1, the linear quantizer)
    quantize_activations: bool = True
    skip_first: bool = False  # keep the first weighted layer in float
    skip_last: bool = False  # keep the last weighted layer in float
    exclude: tuple[str, ...] = ()  # fnmatch patterns of ONNX node names kept in float
    calibration_batches: int = 8
    calibration_percentile: float = 99.99  # of |activation|, for q_m of activation quantizers

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            lo, hi = getattr(self, name)
            _check(2 <= lo <= hi <= 32, name, f"expected 2 <= low <= high <= 32, got {lo}:{hi}")
        _check(self.weight_bits_start >= self.weight_bits[1], "weight_bits_start", "must be >= the upper weight bit bound")
        _check(self.act_bits_start >= self.act_bits[1], "act_bits_start", "must be >= the upper activation bit bound")
        _check(0 < self.calibration_percentile <= 100, "calibration_percentile", "must be in (0, 100]")
        _check(self.calibration_batches >= 1, "calibration_batches", "must be >= 1")


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, data: dict, *, section: str = ""):
    """Build a config dataclass from a dict (a TOML / YAML section), rejecting unknown keys
    with a suggestion."""
    import difflib

    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown option '{section + '.' if section else ''}{key}'{hint}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{section or cls.__name__}: {e}") from None


__all__ = ["QuantConfig", "field", "from_dict", "to_dict"]
