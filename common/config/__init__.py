"""One configuration tree for every luffy-async process.

- ``sections``: ``Config`` and its sections (the schema; a docstring under every field).
- ``loader``: TOML, then ``LUFFY_*`` env, then dotted CLI flags; errors name the key, its
  source and a suggestion; ``write_resolved`` writes what a process runs with.

Import from here (``from common.config import Config, load_config``). No torch import.
"""

from common.config.loader import (
    ENV_PREFIX,
    ConfigError,
    cli_overrides,
    env_overrides,
    iter_fields,
    load_config,
    write_resolved,
)
from common.config.sections import (
    AlgorithmConfig,
    Config,
    GeneratorConfig,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    RedisConfig,
    RunConfig,
    ServicesConfig,
    SyncConfig,
    TensorBoardConfig,
    TinyModelConfig,
    TrackingConfig,
    VerifierConfig,
    WandbConfig,
)

__all__ = [
    "ENV_PREFIX",
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "GeneratorConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "RedisConfig",
    "RunConfig",
    "ServicesConfig",
    "SyncConfig",
    "TensorBoardConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "VerifierConfig",
    "WandbConfig",
    "cli_overrides",
    "env_overrides",
    "iter_fields",
    "load_config",
    "write_resolved",
]
