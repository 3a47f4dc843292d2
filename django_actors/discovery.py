"""Import the actors modules of installed apps."""

from __future__ import annotations

import importlib
import logging
from importlib.util import find_spec

from django.apps import apps

from .conf import get_settings

logger = logging.getLogger(__name__)


def autodiscover() -> list[str]:
    """Import each ``DISCOVER`` module (default ``actors``) of every installed app.

    Apps listed in ``DISCOVER_IGNORE`` (by label or name) are skipped. An
    error raised while importing an existing module propagates with its
    traceback; only a module that does not exist is passed over.

    Returns the names of the modules imported.
    """
    config = get_settings()
    ignored = set(config.discover_ignore)
    imported = []
    for app_config in apps.get_app_configs():
        if app_config.label in ignored or app_config.name in ignored:
            continue
        for module in config.discover:
            name = f"{app_config.name}.{module}"
            try:
                spec = find_spec(name)
            except ModuleNotFoundError:
                spec = None
            if spec is None:
                continue
            importlib.import_module(name)
            imported.append(name)
            logger.debug("Discovered actors module %s.", name)
    return imported
