#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh [pytest args...]
#
# 1. Makes sure redis-server, the PostgreSQL server binaries and Chromium are
#    installed (Debian packages; installed with apt-get when missing). No
#    service is started here: the test suite starts its own servers on free
#    ports, and drives Chromium through Playwright (never `playwright install`).
# 2. Creates or reuses a virtualenv in .venv and installs '.[test]' into it
#    (skipped when setup.cfg and pyproject.toml are unchanged).
# 3. Runs ruff, mypy and pytest. Every step runs; the script exits non-zero
#    when any of them failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
VENV="$REPO_ROOT/.venv"
PYTHON="${PYTHON:-python3.11}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages --------------------------------------------------------

APT_UPDATED=0
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root, and sudo is not available). Install the package yourself or rerun as root."
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "missing system package(s) '$*' and apt-get is not available; install them yourself."
    if [ "$APT_UPDATED" -eq 0 ]; then
        step "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    step "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Highest-versioned Debian PostgreSQL bin dir, if any.
find_pg_bindir() {
    local candidates
    candidates="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V || true)"
    local dir
    for dir in $(printf '%s\n' "$candidates" | tac); do
        if [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

step "Checking for redis-server"
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after installing it."
fi
redis-server --version

step "Checking for Chromium (the admin's browser tests drive it with Playwright)"
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
    [ -x /usr/bin/chromium ] || die "/usr/bin/chromium still missing after installing chromium."
fi
/usr/bin/chromium --version 2>/dev/null || true

step "Checking for PostgreSQL server binaries (pg_ctl)"
if ! PG_BINDIR="$(find_pg_bindir)"; then
    if command -v pg_ctl >/dev/null 2>&1; then
        PG_BINDIR="$(dirname "$(command -v pg_ctl)")"
    else
        apt_install postgresql
        PG_BINDIR="$(find_pg_bindir)" || die "pg_ctl not found after installing postgresql."
    fi
fi
# initdb/pg_ctl/postgres live outside PATH on Debian; the test suite needs them.
export PATH="$PG_BINDIR:$PATH"
echo "using $(command -v pg_ctl) ($(pg_ctl --version))"

# --- virtualenv ---------------------------------------------------------------

step "Preparing virtualenv in .venv"
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "$PYTHON not found. Install Python 3.11 or set PYTHON=/path/to/python3.11."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than Python 3.11."

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian splits venv/ensurepip out of the interpreter package.
        pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install "python${pyver}-venv"
    fi
    "$PYTHON" -m venv "$VENV"
fi

# True when the editable install does not map the package (e.g. it was made
# before django_actors/__init__.py existed). Checked from / so the repo root on
# sys.path cannot hide it.
editable_install_stale() {
    [ -f django_actors/__init__.py ] || return 1
    ! (cd / && "$VENV/bin/python" -c \
        'import importlib.util, sys; sys.exit(importlib.util.find_spec("django_actors") is None)' \
        >/dev/null 2>&1)
}

setup_hash="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
installed_hash="$(cat "$VENV/.setup-hash" 2>/dev/null || true)"
if [ "$setup_hash" != "$installed_hash" ] \
    || ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("django-actors")' >/dev/null 2>&1 \
    || editable_install_stale; then
    step "Installing '.[test]' into .venv"
    rm -f "$VENV/.setup-hash"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    printf '%s\n' "$setup_hash" >"$VENV/.setup-hash"
else
    echo "setup.cfg unchanged since last install; skipping pip install"
fi

# shellcheck disable=SC1091
source "$VENV/bin/activate"

# --- checks -------------------------------------------------------------------

failed=()

lint_paths=()
for p in django_actors tests example_project; do
    [ -e "$p" ] && lint_paths+=("$p")
done

step "ruff check ${lint_paths[*]}"
ruff check "${lint_paths[@]}" || failed+=("ruff")

step "mypy django_actors"
mypy django_actors || failed+=("mypy")

step "python -m pytest $*"
python -m pytest "$@" || failed+=("pytest")

if [ "${#failed[@]}" -ne 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nAll checks passed (ruff, mypy, pytest).\n'
