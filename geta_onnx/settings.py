"""Run settings from a config file (TOML or YAML) and command-line overrides.

A file has one section per config dataclass, with the same keys:

    [prune]                 # PruneConfig
    target_sparsity = 0.5
    [quant]                 # QuantConfig
    weight_bits = [4, 8]
    [optim]                 # OptimConfig
    [schedule]              # ScheduleConfig
    [train]                 # TrainConfig
    [data]                  # DataConfig
    [export]                # ExportConfig (compress: profile, latency batches, plots)

Unknown sections or keys are errors that name the key (and suggest the closest one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .config import (BUDGETS, DataConfig, ExportConfig, OptimConfig, PruneConfig, QuantConfig, ScheduleConfig, TrainConfig,
                     from_dict)
from .errors import ConfigError

SECTIONS = {"quant": QuantConfig, "prune": PruneConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
            "train": TrainConfig, "data": DataConfig,
            "export": ExportConfig}


@dataclass(frozen=True)
class Settings:
    quant: QuantConfig = field(default_factory=QuantConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def latency_at(self, static_batch: bool = False) -> tuple[int, int]:
        """(threads, batch) a latency budget is predicted at: the validation's threads and its
        largest batch (1 for a model whose input takes a static batch of 1)."""
        return self.export.threads, 1 if static_batch else max(int(b) for b in self.export.batches)

    def override(self, section: str, **values) -> "Settings":
        """A copy with `values` set in `section` (None values are ignored)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        return self.replace(section, **values)

    def replace(self, section: str, **values) -> "Settings":
        """A copy with `values` set in `section`, None values included (validated again)."""
        current = dataclasses.asdict(getattr(self, section))
        current.update(values)
        return dataclasses.replace(self, **{section: from_dict(SECTIONS[section], current, section=section)})


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; give a .toml or .yaml file")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; check the path given to --config")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}': cannot read it ({e.strerror})") from None
    try:
        if path.suffix.lower() in (".toml", ".tml"):
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            return tomllib.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"config file '{path}': expected sections (a mapping) at the top level")
            return data
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse error: one line naming the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file '{path}': {first}") from None
    raise ConfigError(f"config file '{path}': use a .toml or .yaml file")


def load_settings(path: str | Path | None = None) -> Settings:
    if path is None:
        return Settings()
    data = read_file(path)
    parts = {}
    for section, values in data.items():
        if section not in SECTIONS:
            import difflib

            near = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; sections: {', '.join(SECTIONS)}"
            raise ConfigError(f"config file '{path}': unknown section '{section}'{hint}")
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{path}': section '{section}' must hold keys")
        budgets = [k for k in BUDGETS if values.get(k) is not None] if section == "prune" else []
        if len(budgets) > 1:
            raise ConfigError(f"config file '{path}': [prune] gives {len(budgets)} budgets ({', '.join(budgets)}); "
                              "keep one")
        try:
            parts[section] = from_dict(SECTIONS[section], values, section=section)
        except ConfigError as e:
            raise ConfigError(f"config file '{path}': {e}") from None
    return Settings(**parts)
