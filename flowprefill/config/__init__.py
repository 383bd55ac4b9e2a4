"""Config schemas: frozen dataclasses, registered in Hydra's ConfigStore as the groups' schemas.

Owns the typed shape of every config group (`conf/<group>/*.yaml` starts from `<group>_schema`).
Only entry points see Hydra: they call `from_hydra(Cls, cfg)` once and pass typed objects on.
Derived values are properties; nothing writes back into a config.

Hydra cannot compose onto frozen dataclasses, so the ConfigStore holds a mutable twin of each
schema (same fields, same defaults) made by `convert._schema`; `from_hydra` builds the frozen
object. One module per concern: `model` (model, engine), `scheduling` (policy, hardware,
predictor), `runs` (workload, SLOs, server, deploy, logging, peers, metrics, simulation),
`convert` (Hydra to typed objects).
"""

from flowprefill.config.convert import (
    CONF_DIR,
    GROUPS,
    choices,
    from_hydra,
    load_option,
    register_configs,
)
from flowprefill.config.model import (
    MAX_UNIT_MS,
    PKG_PREFIX,
    ROPE_TYPES,
    EngineConfig,
    ModelConfig,
    NotShardable,
    RopeScaling,
    RopeType,
    check_tp,
)
from flowprefill.config.runs import (
    DeployConfig,
    LoggerConfig,
    MetricsConfig,
    PeerConfig,
    ServerConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
)
from flowprefill.config.scheduling import (
    AUTO_HARDWARE,
    HardwareConfig,
    PolicyConfig,
    PredictorConfig,
)

__all__ = [
    "AUTO_HARDWARE",
    "CONF_DIR",
    "GROUPS",
    "MAX_UNIT_MS",
    "PKG_PREFIX",
    "ROPE_TYPES",
    "DeployConfig",
    "EngineConfig",
    "HardwareConfig",
    "LoggerConfig",
    "MetricsConfig",
    "ModelConfig",
    "NotShardable",
    "PeerConfig",
    "PolicyConfig",
    "PredictorConfig",
    "RopeScaling",
    "RopeType",
    "SLOConfig",
    "ServerConfig",
    "SimConfig",
    "WorkloadConfig",
    "check_tp",
    "choices",
    "from_hydra",
    "load_option",
    "register_configs",
]
