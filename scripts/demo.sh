#!/usr/bin/env bash
# The example project's main job, end to end, on the embedded default (the
# database broker on SQLite): ./scripts/demo.sh
#
# Creates or reuses .venv, installs the project into it, then runs
# `manage.py demo`: migrate, start runworkers, run a pipeline and groups with
# progress bars, print the results, stop the workers with SIGTERM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> Creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import django_actors, django" >/dev/null 2>&1; then
    echo "==> Installing django-actors into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e .
fi
exec "$VENV/bin/python" manage.py demo "$@"
