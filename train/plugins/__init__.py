"""Spatial plug-ins for the DINO host, behind a registry (``@register_plugin``).

Importing this package registers the built-in plug-ins.
"""

from wherevit.train.plugins import equivariance, gtsa, scrl, sp  # noqa: F401  (register themselves)
from wherevit.train.plugins.base import (
    Plugin,
    PluginConfig,
    create_plugin,
    register_plugin,
    registered_plugins,
)

__all__ = ["Plugin", "PluginConfig", "create_plugin", "register_plugin", "registered_plugins"]
