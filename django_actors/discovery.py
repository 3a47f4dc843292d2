"""Import the actors modules of installed apps."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.util import find_spec

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import get_settings

logger = logging.getLogger(__name__)

#: What is discovered when ``DJANGO_ACTORS`` is malformed (the system checks
#: report the problem; ``manage.py check`` must still be able to start).
FALLBACK_DISCOVER = ("actors",)


def _module_exists(name: str) -> bool:
    """Whether the module ``name`` exists, without importing it.

    Its parent packages are imported to find it: an error raised while
    importing one of them propagates, except the parent itself not existing.
    """
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError as exc:
        # "app.tasks.actors" when "app.tasks" does not exist: nothing to import.
        # Any other missing module was imported by a parent package: a real error.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return False
        raise


def discover_settings() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The module names to discover and the apps to skip.

    Falls back to the defaults when ``DJANGO_ACTORS`` is malformed: the
    system checks report it (``django_actors.E001``).
    """
    try:
        config = get_settings()
    except ImproperlyConfigured as exc:
        logger.warning("DJANGO_ACTORS is malformed (%s); discovering the default modules.", exc)
        return FALLBACK_DISCOVER, ()
    return config.discover, config.discover_ignore


def import_middleware_classes() -> None:
    """Import the configured middleware classes, so that the actor options they
    declare are known when actors modules are imported (``@actor`` checks
    options against the middleware classes imported so far). Paths that fail
    to import are left to the system checks (``django_actors.E002``)."""
    try:
        config = get_settings()
    except ImproperlyConfigured:
        return
    for item in config.middleware:
        path = item if isinstance(item, str) else item[0]
        try:
            import_string(path)
        except ImportError:
            logger.debug("Middleware %s cannot be imported; the system checks report it.", path)


def autodiscover(
    modules: Iterable[str] | None = None, *, ignore: Iterable[str] | None = None
) -> list[str]:
    """Import each ``DISCOVER`` module (default ``actors``) of every installed app.

    The configured middleware classes are imported first (see
    :func:`import_middleware_classes`). Apps listed in ``DISCOVER_IGNORE``
    (by label or name) are skipped. A
    module that does not exist is passed over; an error raised while
    importing one that exists propagates with its traceback (and a note
    naming the module), including an ``ImportError`` of something the module
    itself imports.

    Parameters:
      modules: the module names to look for; ``DISCOVER`` by default.
      ignore: app labels or names to skip; ``DISCOVER_IGNORE`` by default.

    Returns:
      The names of the modules imported, in app order.
    """
    if modules is None or ignore is None:
        configured_modules, configured_ignore = discover_settings()
        modules = configured_modules if modules is None else modules
        ignore = configured_ignore if ignore is None else ignore
    modules = tuple(modules)
    ignored = set(ignore)
    import_middleware_classes()
    imported = []
    for app_config in apps.get_app_configs():
        if app_config.label in ignored or app_config.name in ignored:
            continue
        for module in modules:
            name = f"{app_config.name}.{module}"
            if not _module_exists(name):
                continue
            try:
                importlib.import_module(name)
            except Exception as exc:
                exc.add_note(
                    f"(raised while django_actors imported {name!r}, a DISCOVER module of app {app_config.label!r})"
                )
                raise
            imported.append(name)
            logger.debug("Discovered actors module %s.", name)
    return imported
