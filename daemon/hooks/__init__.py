"""Salon's plugin system: pluggy hooks for authentication, moderation and topics.

A plugin is a module or a class whose functions (methods) are marked with :data:`hookimpl`
and named after a hook of :mod:`.hookspecs`; it is installed as an entry point of the
``salon.plugins`` group and enabled by name in ``[plugins] enabled``. See
docs/writing_plugins.md and docs/plugin_hooks.md.
"""

from __future__ import annotations

from .api import SalonAPI
from .hookspecs import hookimpl
from .manager import DEFAULT_PLUGINS, ENTRY_POINT_GROUP, PluginHost, installed_plugins
from .policy import PluginAuthenticator, PluginPolicy
from .results import Approve, AudioLevel, Deny, Failure
from .settings import PluginSettings

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Approve",
    "AudioLevel",
    "Deny",
    "Failure",
    "PluginAuthenticator",
    "PluginHost",
    "PluginPolicy",
    "PluginSettings",
    "SalonAPI",
    "hookimpl",
    "installed_plugins",
]
