"""The Django AppConfig: settings changes rebuild the broker; actors are discovered."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_ACTORS":
        from .broker import reset_broker
        from .conf import clear_settings_cache

        clear_settings_cache()
        reset_broker()


class DjangoActorsConfig(AppConfig):
    """Registers the system checks and discovers actors modules in ``ready()``.

    Nothing connects anywhere here: the broker is built lazily, on first use
    (``get_broker()``, ``actor.send()``...).
    """

    name = "django_actors"
    verbose_name = "Actors"
    default_auto_field = "django.db.models.BigAutoField"

    #: The actors modules imported by :meth:`ready`.
    discovered_modules: list[str]

    def ready(self) -> None:
        setting_changed.connect(_on_setting_changed, dispatch_uid="django_actors_settings")
        from . import checks  # noqa: F401 - registers the system checks
        from .discovery import autodiscover

        self.discovered_modules = autodiscover()
