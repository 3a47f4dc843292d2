"""Reports each worker process's boot and stop to the tests' Redis list."""

from __future__ import annotations

import os
from typing import Any

from django_actors.middleware import Middleware


class Lifecycle(Middleware):
    def after_process_boot(self, broker: Any) -> None:
        from .actors import event

        event("process_boot", type(broker).__name__)

    def before_process_stop(self, broker: Any) -> None:
        from .actors import event

        event("process_stop", str(os.getpid()))
