"""From Hydra to typed configs: the frozen schemas' mutable twins in the ConfigStore,
`from_hydra`, `load_option`."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from flowprefill.config.model import EngineConfig, ModelConfig
from flowprefill.config.runs import (
    DeployConfig,
    LoggerConfig,
    MetricsConfig,
    ServerConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
)
from flowprefill.config.scheduling import HardwareConfig, PolicyConfig, PredictorConfig

# --------------------------------------------------------------------------- conversion


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def choices(tp: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` field type (None: not a choice field)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _twin(value: Any) -> Any:
    """`value` with every frozen schema instance in it replaced by its mutable twin."""
    if not _is_schema(type(value)):
        return value
    return _schema(type(value))(**{f.name: _twin(getattr(value, f.name))
                                   for f in dataclasses.fields(value)})


@functools.cache
def _schema(cls: type) -> type:
    """A mutable twin of frozen dataclass `cls` for Hydra to compose onto (nested schemas too;
    a `Literal` choice field is a plain `str` there and is checked by `from_hydra`)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = _is_schema(tp)
        tp = _schema(tp) if nested else (str if choices(tp) else tp)
        if f.default is not dataclasses.MISSING:
            default = f.default
            spec = (field(default_factory=functools.partial(_twin, default)) if nested
                    else field(default=default))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            spec = field(default_factory=(lambda fac=factory: _twin(fac())) if nested else factory)
        else:
            spec = field()
        fields.append((f.name, tp, spec))
    return dataclasses.make_dataclass(cls.__name__, fields)


def from_hydra(cls: type, cfg: Any, key: str | None = None) -> Any:
    """Build frozen dataclass `cls` from a composed (Dict)Config or a plain dict; a choice
    field outside its choices or an unknown key is an error naming the key (`key` prefixes
    it: the group, e.g. `engine`; by default the group `cls` is registered as)."""
    from omegaconf import DictConfig, OmegaConf

    key = key or next((g for g, c in GROUPS.items() if c is cls), cls.__name__)
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        if _is_schema(tp) and value is not None:
            value = from_hydra(tp, value, f"{key}.{f.name}")
        elif (allowed := choices(tp)) is not None and value not in allowed:
            raise ValueError(f"{key}.{f.name}: {value!r} is not one of "
                             f"{' | '.join(map(str, allowed))}")
        kwargs[f.name] = value
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise KeyError(f"{key}: unknown config key(s) {sorted(unknown)}")
    return cls(**kwargs)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_option(group: str, name: str) -> dict[str, Any]:
    """The values of option `name` of config group `group` (`conf/<group>/<name>.yaml`), for
    code that picks an option without Hydra (the offline API, `auto` resolution)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ValueError(f"no {group} config {name!r}; options: {options}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    data.pop("defaults", None)
    return data


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "engine": EngineConfig,
    "policy": PolicyConfig,
    "hardware": HardwareConfig,
    "predictor": PredictorConfig,
    "workload": WorkloadConfig,
    "slo": SLOConfig,
    "server": ServerConfig,
    "logger": LoggerConfig,
    "sim": SimConfig,
    "deploy": DeployConfig,
    "metrics": MetricsConfig,
}


def register_configs() -> None:
    """Register each group's schema as `<group>/<group>_schema`, and the entry-point roots."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, cls in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=_schema(cls))
