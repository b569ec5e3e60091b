"""Spatial plug-ins for the DINO host, behind a registry (``@register_plugin`` or the
``wherevit.plugins`` entry-point group). The interface is documented in ``plugins/base.py``.

Importing this package registers the built-in plug-ins.
"""

from wherevit.train.plugins import equivariance, gtsa, posfield, scrl, sp  # noqa: E402,F401  (register the built-ins)
from wherevit.train.plugins.base import (
    ENTRY_POINT_GROUP,
    HostSpec,
    Plugin,
    PluginConfig,
    PluginError,
    StepContext,
    create_plugin,
    plain_backbone_state,
    register_plugin,
    registered_plugins,
    view_major,
)

__all__ = [
    "ENTRY_POINT_GROUP", "HostSpec", "Plugin", "PluginConfig", "PluginError", "StepContext", "create_plugin",
    "plain_backbone_state", "register_plugin", "registered_plugins", "view_major",
]
