"""risloc: near-field localization of radio sources through a reconfigurable intelligent surface."""

__version__ = "0.1.0"

__all__ = ["RislocConfig", "SceneConfig", "SystemConfig", "load_config", "__version__"]


def __getattr__(name: str):
    """The configuration names, imported on first use: `import risloc` (and the `risloc`
    command's start, where a Ctrl-C is caught) loads nothing else."""
    if name in ("RislocConfig", "SceneConfig", "SystemConfig", "load_config"):
        from risloc import config

        return getattr(config, name)
    raise AttributeError(f"module 'risloc' has no attribute {name!r}")
