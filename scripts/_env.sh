# Shared by scripts/quickstart and scripts/test: make uv available and
# install the locked environment. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9
if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "installing uv ${UV_VERSION}…" >&2
    python3 -m pip install --quiet "uv==${UV_VERSION}"
fi
uv() { python3 -m uv "$@"; }
uv sync --locked --quiet
# Node packages: configurable-http-proxy for the JupyterHub tests, and the
# GraphiQL sources the vendored assets are regenerated from.  `npm ci` only
# when the lock file changed since the last install.
if [ -f package-lock.json ] && ! cmp -s package-lock.json node_modules/.noteburst-lock 2>/dev/null; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.noteburst-lock
fi
