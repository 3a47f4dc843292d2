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
    """Discovers actors modules in ``ready()``; the broker is built lazily on first use."""

    name = "django_actors"
    verbose_name = "Actors"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        setting_changed.connect(_on_setting_changed, dispatch_uid="django_actors_settings")
        from .discovery import autodiscover

        autodiscover()
