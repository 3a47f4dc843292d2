"""Keep secrets out of logs, command output and the admin.

- :func:`mask_url` hides the password of a URL (``redis://:***@host/0``);
  :func:`mask_urls` does it for every URL inside a text (an error message).
- :func:`redact` hides the values of keys named in ``DJANGO_ACTORS["REDACT"]``
  (default: password, token, secret, api_key, authorization), recursively
  in dicts, lists and tuples, and the passwords of URLs inside strings. The
  admin mirror's argument and result previews go through it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

#: What replaces a hidden value.
MASK = "***"
#: Query parameters whose value is a password.
_PASSWORD_PARAMETERS = frozenset({"password", "pass", "pwd", "passwd"})
#: ``scheme://user:password@`` inside a text: group 1 keeps all but the password.
_CREDENTIALS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@")
#: ``?password=...`` / ``&password=...`` inside a text.
_QUERY_PASSWORD_RE = re.compile(r"([?&](?:password|pass|pwd|passwd)=)[^&\s#]*", re.IGNORECASE)
#: The deepest a value is followed; deeper parts are replaced by ``MASK``.
MAX_DEPTH = 32


def mask_url(url: str) -> str:
    """Return ``url`` with its password (in the authority or the query) replaced by ``***``.

    Everything else is kept as written. A URL that cannot be parsed is not shown at all.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{userinfo}@{host}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key, has_value, _ = pair.partition("=")
        secret = urllib.parse.unquote_plus(key).lower() in _PASSWORD_PARAMETERS
        pairs.append(f"{key}={MASK}" if secret and has_value else pair)
    separator = "://" if url.startswith(f"{parts.scheme}://") else ":"
    masked = f"{parts.scheme}{separator}{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    if pairs:
        masked += "?" + "&".join(pairs)
    if parts.fragment:
        masked += "#" + parts.fragment
    return masked


def mask_urls(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``***``."""
    if "://" not in text and "pass" not in text.lower() and "pwd" not in text.lower():
        return text
    return _QUERY_PASSWORD_RE.sub(rf"\g<1>{MASK}", _CREDENTIALS_RE.sub(rf"\g<1>{MASK}@", text))


def redact_keys() -> tuple[str, ...]:
    """The key names to redact: ``DJANGO_ACTORS["REDACT"]``, or the defaults
    when Django settings are not configured."""
    from django.conf import settings

    from .conf import DEFAULT_REDACT, get_settings

    if not settings.configured:
        return DEFAULT_REDACT
    return get_settings().redact


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_")


def is_sensitive(name: object, keys: Iterable[str]) -> bool:
    """Whether a key called ``name`` holds a secret: it contains one of
    ``keys``, ignoring case and ``-`` versus ``_`` (``X-Api-Key``, ``db_password``)."""
    if not isinstance(name, str):
        return False
    normalised = _normalise(name)
    return any(_normalise(key) in normalised for key in keys if key)


def redact(value: Any, keys: Iterable[str] | None = None) -> Any:
    """Return a copy of ``value`` with secrets hidden.

    Parameters:
      value: arguments or a result: dicts, lists, tuples and scalars.
      keys: key names to hide (default: :func:`redact_keys`).

    Returns:
      The same structure, where the value of every dict key that
      :func:`is_sensitive` is ``***``, and URLs in strings have no password.
      Other objects are returned as they are.
    """
    names = tuple(redact_keys() if keys is None else keys)
    return _redact(value, names, 0)


def _redact(value: Any, keys: tuple[str, ...], depth: int) -> Any:
    if isinstance(value, str):
        return mask_urls(value)
    if depth >= MAX_DEPTH:
        return value if isinstance(value, int | float | bool | None) else MASK
    if isinstance(value, dict):
        return {
            name: MASK if is_sensitive(name, keys) else _redact(item, keys, depth + 1) for name, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item, keys, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item, keys, depth + 1) for item in value)
    return value


def redact_call(args: Iterable[Any], kwargs: dict[str, Any], keys: Iterable[str] | None = None) -> tuple[Any, Any]:
    """Redact a call's arguments: keyword arguments by name, and what is inside each.

    Returns:
      ``(args, kwargs)``, redacted copies.
    """
    names = tuple(redact_keys() if keys is None else keys)
    return _redact(tuple(args), names, 0), _redact(dict(kwargs), names, 0)
