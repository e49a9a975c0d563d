"""risloc: near-field localization of radio sources through a reconfigurable intelligent surface."""

from risloc.config import RislocConfig, SceneConfig, SystemConfig, load_config

__version__ = "0.1.0"

__all__ = ["RislocConfig", "SceneConfig", "SystemConfig", "load_config", "__version__"]
