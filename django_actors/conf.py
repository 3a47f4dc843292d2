"""The ``DJANGO_ACTORS`` setting: read once, lazily, validated, and turned
into a broker.

    DJANGO_ACTORS = {
        "BROKER": {"BACKEND": "django_actors.brokers.redis.RedisBroker",
                   "OPTIONS": {"url": "redis://127.0.0.1:6379/0"}},
        "RESULTS": {"BACKEND": "django_actors.results.backends.redis.RedisBackend",
                    "OPTIONS": {}, "STORE_RESULTS": False, "RESULT_TTL": 600000},
        "MIDDLEWARE": [...],          # dotted paths or (path, kwargs)
        "DISCOVER": ["actors"],       # modules imported from each installed app
        "DISCOVER_IGNORE": [],        # app labels or names to skip
        "MAX_MESSAGE_SIZE": 4194304,  # bytes, checked at send and at receive
        "SIGNING_KEY": "...",         # sign messages and results (HMAC-SHA256); see signing.py
        "SIGNING_KEY_FALLBACKS": [],  # older keys still accepted, while rotating
        "REDACT": ["password", ...],  # argument names hidden in the admin's previews
    }

With no setting at all, the broker and the results backend are the
database ones, on the project's default database.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from .broker import Broker
    from .middleware.middleware import Middleware
    from .results.backend import ResultBackend

DEFAULT_BROKER = "django_actors.brokers.database.DatabaseBroker"
DEFAULT_RESULTS = "django_actors.results.backends.database.DatabaseBackend"

#: The middleware every broker built from settings gets when MIDDLEWARE is absent.
DEFAULT_MIDDLEWARE: tuple[str, ...] = (
    "django_actors.middleware.django_db.DbConnections",  # first: its after_* hooks run last
    "django_actors.middleware.AgeLimit",
    "django_actors.middleware.TimeLimit",
    "django_actors.middleware.ShutdownNotifications",
    "django_actors.middleware.Callbacks",
    "django_actors.middleware.Pipelines",
    "django_actors.middleware.Retries",
    "django_actors.middleware.CurrentMessage",
    "django_actors.middleware.signals.DjangoSignals",  # after the middleware that may skip a message
)

TOP_LEVEL_KEYS = frozenset(
    {"BROKER", "RESULTS", "MIDDLEWARE", "DISCOVER", "DISCOVER_IGNORE", "ENCODER", "MAX_MESSAGE_SIZE", "MIRROR"}
    | {"SIGNING_KEY", "SIGNING_KEY_FALLBACKS", "REDACT"}
)
#: Argument and result keys whose values previews hide (``REDACT``): a key
#: containing one of these (case-insensitive) is redacted.
DEFAULT_REDACT: tuple[str, ...] = ("password", "token", "secret", "api_key", "authorization")
BACKEND_KEYS = frozenset({"BACKEND", "OPTIONS"})
RESULTS_KEYS = BACKEND_KEYS | {"STORE_RESULTS", "RESULT_TTL"}
MIRROR_KEYS = frozenset({"ENABLED", "FLUSH_INTERVAL", "RETENTION"})
#: The admin mirror's middleware, put first in the default middleware when enabled.
MIRROR_MIDDLEWARE = "django_actors.middleware.mirror.Mirror"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MirrorConfig:
    """``DJANGO_ACTORS['MIRROR']``: the admin mirror (see :mod:`django_actors.mirror`)."""

    enabled: bool = True
    #: How often buffered events are written, in milliseconds.
    flush_interval: int = 1000
    #: How long mirror rows are kept, in milliseconds (7 days).
    retention: int = 7 * 24 * 3600 * 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """A ``BACKEND`` dotted path with its ``OPTIONS``."""

    backend: str
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActorsSettings:
    """The validated ``DJANGO_ACTORS`` setting."""

    broker: BackendConfig
    results: BackendConfig | None
    store_results: bool
    result_ttl: int | None
    middleware: tuple[str | tuple[str, Mapping[str, Any]], ...]
    discover: tuple[str, ...]
    discover_ignore: tuple[str, ...]
    encoder: str | None
    max_message_size: int | None
    mirror: MirrorConfig = dataclasses.field(default_factory=MirrorConfig)
    #: Signs and verifies every payload when set (see :mod:`django_actors.signing`).
    signing_key: str | None = None
    signing_key_fallbacks: tuple[str, ...] = ()
    redact: tuple[str, ...] = DEFAULT_REDACT


def _backend(key: str, value: Any, allowed: frozenset[str]) -> BackendConfig:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"DJANGO_ACTORS[{key!r}] must be a dict with a 'BACKEND' key.")
    unknown = set(value) - allowed
    if unknown:
        raise ImproperlyConfigured(
            f"DJANGO_ACTORS[{key!r}] has unknown key(s): {', '.join(sorted(unknown))}. "
            f"Allowed: {', '.join(sorted(allowed))}."
        )
    backend = value.get("BACKEND")
    if not isinstance(backend, str) or not backend:
        raise ImproperlyConfigured(f"DJANGO_ACTORS[{key!r}]['BACKEND'] must be a dotted path string.")
    options = value.get("OPTIONS", {})
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"DJANGO_ACTORS[{key!r}]['OPTIONS'] must be a dict.")
    return BackendConfig(backend=backend, options=dict(options))


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ImproperlyConfigured(f"DJANGO_ACTORS[{key!r}] must be a list of strings.")
    return tuple(value)


def _mirror(value: Any) -> MirrorConfig:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured("DJANGO_ACTORS['MIRROR'] must be a dict.")
    unknown = set(value) - MIRROR_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"DJANGO_ACTORS['MIRROR'] has unknown key(s): {', '.join(sorted(map(str, unknown)))}. "
            f"Allowed: {', '.join(sorted(MIRROR_KEYS))}."
        )
    defaults = MirrorConfig()
    enabled = value.get("ENABLED", defaults.enabled)
    if not isinstance(enabled, bool):
        raise ImproperlyConfigured("DJANGO_ACTORS['MIRROR']['ENABLED'] must be a bool.")
    numbers = {}
    for key, default in (("FLUSH_INTERVAL", defaults.flush_interval), ("RETENTION", defaults.retention)):
        number = value.get(key, default)
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            raise ImproperlyConfigured(f"DJANGO_ACTORS['MIRROR'][{key!r}] must be a positive int (ms).")
        numbers[key] = number
    return MirrorConfig(enabled=enabled, flush_interval=numbers["FLUSH_INTERVAL"], retention=numbers["RETENTION"])


def parse_settings(raw: Any) -> ActorsSettings:
    """Validate a raw ``DJANGO_ACTORS`` value.

    Raises:
      ImproperlyConfigured: naming the offending key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"DJANGO_ACTORS must be a dict, not {type(raw).__name__}.")
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"DJANGO_ACTORS has unknown key(s): {', '.join(sorted(map(str, unknown)))}. "
            f"Allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}."
        )
    broker = _backend("BROKER", raw.get("BROKER", {"BACKEND": DEFAULT_BROKER}), BACKEND_KEYS)
    results_raw = raw.get("RESULTS", {"BACKEND": DEFAULT_RESULTS})
    results = None if results_raw is None else _backend("RESULTS", results_raw, RESULTS_KEYS)
    store_results = results_raw.get("STORE_RESULTS", False) if isinstance(results_raw, Mapping) else False
    if not isinstance(store_results, bool):
        raise ImproperlyConfigured("DJANGO_ACTORS['RESULTS']['STORE_RESULTS'] must be a bool.")
    result_ttl = results_raw.get("RESULT_TTL") if isinstance(results_raw, Mapping) else None
    if result_ttl is not None and (not isinstance(result_ttl, int) or isinstance(result_ttl, bool) or result_ttl <= 0):
        raise ImproperlyConfigured("DJANGO_ACTORS['RESULTS']['RESULT_TTL'] must be a positive int (ms).")

    middleware_raw = raw.get("MIDDLEWARE", DEFAULT_MIDDLEWARE)
    if isinstance(middleware_raw, str) or not isinstance(middleware_raw, list | tuple):
        raise ImproperlyConfigured("DJANGO_ACTORS['MIDDLEWARE'] must be a list.")
    middleware: list[str | tuple[str, Mapping[str, Any]]] = []
    for index, item in enumerate(middleware_raw):
        if isinstance(item, str):
            middleware.append(item)
        elif (
            isinstance(item, list | tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Mapping)
        ):
            middleware.append((item[0], dict(item[1])))
        else:
            raise ImproperlyConfigured(
                f"DJANGO_ACTORS['MIDDLEWARE'][{index}] must be a dotted path or a (path, kwargs) pair."
            )
    encoder = raw.get("ENCODER")
    if encoder is not None and not isinstance(encoder, str):
        raise ImproperlyConfigured("DJANGO_ACTORS['ENCODER'] must be a dotted path string.")
    max_size = raw.get("MAX_MESSAGE_SIZE")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size <= 0):
        raise ImproperlyConfigured("DJANGO_ACTORS['MAX_MESSAGE_SIZE'] must be a positive int (bytes).")
    signing_key = raw.get("SIGNING_KEY")
    if signing_key is not None and (not isinstance(signing_key, str) or not signing_key):
        raise ImproperlyConfigured("DJANGO_ACTORS['SIGNING_KEY'] must be a non-empty string.")
    fallbacks = _strings("SIGNING_KEY_FALLBACKS", raw.get("SIGNING_KEY_FALLBACKS", []))
    if fallbacks and signing_key is None:
        raise ImproperlyConfigured("DJANGO_ACTORS['SIGNING_KEY_FALLBACKS'] needs a SIGNING_KEY.")
    if not all(fallbacks):
        raise ImproperlyConfigured("DJANGO_ACTORS['SIGNING_KEY_FALLBACKS'] must not hold an empty key.")
    return ActorsSettings(
        broker=broker,
        results=results,
        store_results=store_results,
        result_ttl=result_ttl,
        middleware=tuple(middleware),
        discover=_strings("DISCOVER", raw.get("DISCOVER", ["actors"])),
        discover_ignore=_strings("DISCOVER_IGNORE", raw.get("DISCOVER_IGNORE", [])),
        encoder=encoder,
        max_message_size=max_size,
        mirror=_mirror(raw.get("MIRROR", {})),
        signing_key=signing_key,
        signing_key_fallbacks=fallbacks,
        redact=_strings("REDACT", raw.get("REDACT", DEFAULT_REDACT)),
    )


@functools.cache
def get_settings() -> ActorsSettings:
    """Return the validated ``DJANGO_ACTORS`` setting (cached until it changes)."""
    from django.conf import settings

    return parse_settings(getattr(settings, "DJANGO_ACTORS", None))


def clear_settings_cache() -> None:
    """Forget the cached settings (on ``setting_changed``)."""
    get_settings.cache_clear()


def load(path: str, what: str) -> Any:
    """Import a dotted path, raising ImproperlyConfigured that names it."""
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"Cannot import {what} {path!r}: {exc}") from exc


def load_class(path: str, what: str, base: type) -> Any:
    """Import a dotted path to a subclass of ``base``, raising ImproperlyConfigured that names it."""
    loaded = load(path, what)
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise ImproperlyConfigured(f"{what} {path!r} is not a {base.__name__} subclass.")
    return loaded


def configure_encoder(config: ActorsSettings | None = None) -> None:
    """Install the encoder the settings name (``ENCODER``), wrapped in a
    :class:`~django_actors.signing.SigningEncoder` when ``SIGNING_KEY`` is
    set. Without either, the global encoder is left as it is."""
    from .encoder import Encoder, JSONEncoder, set_encoder

    config = config or get_settings()
    if not (config.encoder or config.signing_key):
        return
    encoder: Encoder = (
        load_class(config.encoder, "DJANGO_ACTORS['ENCODER']", Encoder)() if config.encoder else JSONEncoder()
    )
    if config.signing_key:
        from .signing import SigningEncoder

        encoder = SigningEncoder(config.signing_key, fallback_keys=config.signing_key_fallbacks, inner=encoder)
    set_encoder(encoder)


def build_results_backend(config: ActorsSettings | None = None) -> ResultBackend | None:
    """Build the results backend named in settings, or ``None``."""
    from .results.backend import ResultBackend

    config = config or get_settings()
    configure_encoder(config)
    if config.results is None:
        return None
    cls = load_class(config.results.backend, "DJANGO_ACTORS['RESULTS']['BACKEND']", ResultBackend)
    try:
        return cls(**config.results.options)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"Bad DJANGO_ACTORS['RESULTS']['OPTIONS'] for {config.results.backend}: {exc}"
        ) from exc


def build_middleware(config: ActorsSettings | None = None) -> list[Middleware]:
    """Build the middleware list named in settings, Results last when configured.

    A ``Results`` listed in ``MIDDLEWARE`` without a backend gets the one
    configured in ``RESULTS``. With ``MIRROR['ENABLED']`` (the default) the
    default middleware starts with the admin mirror's; with it off, a listed
    mirror middleware is dropped.
    """
    from .middleware.middleware import Middleware
    from .results.middleware import Results

    config = config or get_settings()
    middleware: list[Middleware] = []
    items = config.middleware
    if config.mirror.enabled and items == DEFAULT_MIDDLEWARE:
        items = (MIRROR_MIDDLEWARE, *items)  # first: its after_* hooks run once the others are done
    for item in items:
        path, kwargs = (item, {}) if isinstance(item, str) else item
        if path == MIRROR_MIDDLEWARE:
            if not config.mirror.enabled:
                continue
            kwargs = {"flush_interval": config.mirror.flush_interval, "retention": config.mirror.retention, **kwargs}
        cls = load_class(path, "middleware", Middleware)
        try:
            middleware.append(cls(**kwargs))
        except TypeError as exc:
            raise ImproperlyConfigured(f"Bad arguments for middleware {path}: {exc}") from exc
    backend = build_results_backend(config)
    if backend is not None:
        listed = [m for m in middleware if isinstance(m, Results)]
        if not listed:
            middleware.append(
                Results(backend=backend, store_results=config.store_results, result_ttl=config.result_ttl)
            )
        for results in listed:
            if results.backend is None:
                results.backend = backend
    return middleware


def build_broker(config: ActorsSettings | None = None) -> Broker:
    """Build the broker named in settings, with its middleware.

    Raises:
      ImproperlyConfigured: a path cannot be imported or options are wrong.
    """
    from .broker import Broker

    config = config or get_settings()
    configure_encoder(config)
    cls = load_class(config.broker.backend, "DJANGO_ACTORS['BROKER']['BACKEND']", Broker)
    options = dict(config.broker.options)
    if config.max_message_size:
        options.setdefault("max_message_size", config.max_message_size)
    try:
        return cls(middleware=build_middleware(config), **options)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"Bad DJANGO_ACTORS['BROKER']['OPTIONS'] for {config.broker.backend}: {exc}"
        ) from exc
