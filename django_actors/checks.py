"""System checks (``manage.py check``) for the ``DJANGO_ACTORS`` setting and the actors.

The checks import the configured classes and compare signatures; they never
build the broker or a results backend, so they connect nowhere.

==========================  ====================================================
``django_actors.E001``      ``DJANGO_ACTORS`` is malformed.
``django_actors.E002``      A dotted path (broker, results backend, encoder,
                            middleware) cannot be imported.
``django_actors.E003``      A dotted path names something of the wrong kind.
``django_actors.E004``      ``OPTIONS`` (or middleware arguments) do not fit
                            the class.
``django_actors.E005``      An actor's queue name is not valid.
``django_actors.E006``      An actor uses an option no configured middleware
                            declares.
``django_actors.W001``      ``DISCOVER_IGNORE`` names no installed app.
``django_actors.W002``      A ``DISCOVER`` entry is not a module name.
==========================  ====================================================
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .actor import registered_actors
from .broker import Broker, validate_queue_name
from .conf import ActorsSettings, parse_settings
from .encoder import Encoder
from .middleware.middleware import Middleware
from .results.backend import ResultBackend

#: The tag of these checks: ``manage.py check --tag django_actors``.
TAG = "django_actors"

_MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _error(number: int, msg: str, hint: str) -> Error:
    return Error(msg, hint=hint, obj="settings.DJANGO_ACTORS", id=f"django_actors.E{number:03d}")


def _import(path: str, what: str, base: type, errors: list[CheckMessage]) -> Any:
    """Import ``path``; record E002/E003 and return ``None`` when it is not usable."""
    try:
        obj = import_string(path)
    except Exception as exc:
        errors.append(
            _error(
                2,
                f"{what} {path!r} cannot be imported: {type(exc).__name__}: {exc}",
                "Check the dotted path (module.ClassName) and that its package is installed.",
            )
        )
        return None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        errors.append(
            _error(
                3,
                f"{what} {path!r} is not a subclass of {base.__module__}.{base.__qualname__}.",
                f"Point {what} at a {base.__name__} subclass.",
            )
        )
        return None
    return obj


def _check_arguments(cls: type, kwargs: Mapping[str, Any], what: str, errors: list[CheckMessage]) -> None:
    """Record E004 when ``cls(**kwargs)`` would not bind to its signature."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
        errors.append(
            _error(
                4,
                f"{what} do not fit {cls.__module__}.{cls.__qualname__}: {exc}.",
                f"Accepted arguments: {', '.join(accepted) or '(none)'}.",
            )
        )


def _middleware_options(config: ActorsSettings, errors: list[CheckMessage]) -> set[str] | None:
    """The actor options the configured middleware declare; ``None`` if one is broken."""
    from .results.middleware import Results

    options: set[str] = set()
    complete = True
    has_results = False
    for index, item in enumerate(config.middleware):
        path, kwargs = (item, {}) if isinstance(item, str) else item
        what = f"DJANGO_ACTORS['MIDDLEWARE'][{index}]"
        cls = _import(path, what, Middleware, errors)
        if cls is None:
            complete = False
            continue
        has_results = has_results or issubclass(cls, Results)
        try:
            instance = cls(**kwargs)
        except Exception as exc:
            complete = False
            errors.append(
                _error(
                    4,
                    f"{what} ({path}) cannot be built with {dict(kwargs)!r}: {type(exc).__name__}: {exc}",
                    "Give the middleware the arguments its __init__ accepts: (path, {kwargs}).",
                )
            )
            continue
        options |= set(instance.actor_options)
    if config.results is not None and not has_results:
        options |= set(Results.actor_options)
    return options if complete else None


def _providers(option: str) -> list[str]:
    """Dotted names of the imported middleware classes that declare ``option``."""
    found = []
    pending: list[type[Middleware]] = [Middleware]
    while pending:
        cls = pending.pop()
        if option in getattr(cls, "actor_options", ()):
            found.append(f"{cls.__module__}.{cls.__qualname__}")
        pending.extend(cls.__subclasses__())
    return sorted(found)


def _check_actors(known_options: set[str] | None, errors: list[CheckMessage]) -> None:
    for actor in registered_actors():
        where = f"{actor.fn.__module__}.{actor.actor_name}"
        try:
            validate_queue_name(actor.queue_name)
        except ValueError as exc:
            errors.append(
                Error(
                    f"Actor {actor.actor_name!r} has an invalid queue name: {exc}",
                    hint="Use 1 to 128 letters, digits, '_', '-' or '.' in queue_name.",
                    obj=where,
                    id="django_actors.E005",
                )
            )
        if known_options is None or actor.explicit_broker is not None:
            continue
        for option in sorted(set(actor.options) - known_options):
            providers = _providers(option)
            hint = (
                f"Add {' or '.join(providers)} to DJANGO_ACTORS['MIDDLEWARE'], or remove the option."
                if providers
                else "No middleware class declares it: check its spelling, or remove it."
            )
            errors.append(
                Error(
                    f"Actor {actor.actor_name!r} uses the option {option!r}, which no configured "
                    "middleware declares.",
                    hint=hint,
                    obj=where,
                    id="django_actors.E006",
                )
            )


def _check_discovery(config: ActorsSettings, app_configs: Sequence[AppConfig], errors: list[CheckMessage]) -> None:
    installed = {c.label for c in app_configs} | {c.name for c in app_configs}
    for entry in config.discover_ignore:
        if entry not in installed:
            errors.append(
                CheckWarning(
                    f"DJANGO_ACTORS['DISCOVER_IGNORE'] names {entry!r}, which is not an installed app.",
                    hint="Use an app label (e.g. 'shop') or an app name (e.g. 'myproject.shop').",
                    obj="settings.DJANGO_ACTORS",
                    id="django_actors.W001",
                )
            )
    for entry in config.discover:
        if not _MODULE_NAME_RE.match(entry) or entry.endswith(".py"):
            errors.append(
                CheckWarning(
                    f"DJANGO_ACTORS['DISCOVER'] entry {entry!r} is not a module name; nothing will be "
                    "discovered for it.",
                    hint="Use module names relative to each app, without '.py' (e.g. 'actors' or 'tasks.actors').",
                    obj="settings.DJANGO_ACTORS",
                    id="django_actors.W002",
                )
            )


@register(TAG)
def check_django_actors(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``DJANGO_ACTORS`` and the registered actors; build nothing."""
    try:
        config = parse_settings(getattr(settings, "DJANGO_ACTORS", None))
    except ImproperlyConfigured as exc:
        return [
            _error(
                1,
                f"DJANGO_ACTORS is malformed: {exc}",
                "DJANGO_ACTORS is a dict with the keys BROKER, RESULTS, MIDDLEWARE, DISCOVER, "
                "DISCOVER_IGNORE, ENCODER and MAX_MESSAGE_SIZE, all optional.",
            )
        ]
    errors: list[CheckMessage] = []
    broker_cls = _import(config.broker.backend, "DJANGO_ACTORS['BROKER']['BACKEND']", Broker, errors)
    if broker_cls is not None:
        broker_kwargs: dict[str, Any] = {"middleware": [], **config.broker.options}
        if config.max_message_size:
            broker_kwargs.setdefault("max_message_size", config.max_message_size)
        _check_arguments(broker_cls, broker_kwargs, "DJANGO_ACTORS['BROKER']['OPTIONS']", errors)
    if config.results is not None:
        results_cls = _import(config.results.backend, "DJANGO_ACTORS['RESULTS']['BACKEND']", ResultBackend, errors)
        if results_cls is not None:
            _check_arguments(results_cls, config.results.options, "DJANGO_ACTORS['RESULTS']['OPTIONS']", errors)
    if config.encoder:
        _import(config.encoder, "DJANGO_ACTORS['ENCODER']", Encoder, errors)
    known_options = _middleware_options(config, errors)
    _check_actors(known_options, errors)
    _check_discovery(config, list(apps.get_app_configs()), errors)
    return errors
