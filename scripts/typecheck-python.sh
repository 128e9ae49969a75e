#!/usr/bin/env bash
# Type-checks the Python SDK with pyright: the package in standard mode and
# a consumer program (sdk/python/typecheck/consumer.py) in strict mode.
# pyright is pinned in sdk/python/typecheck/package-lock.json and installed
# with npm ci once per lock file; npm's download cache is kept outside the
# clone, in $NULLSPACE_CACHE_DIR/npm.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=sdk/python/typecheck
cache="${NULLSPACE_CACHE_DIR:-/var/cache/nullspace}/npm"
if ! command -v npm >/dev/null 2>&1; then
  echo "nullspace: the Python SDK's type check needs Node.js 18+ and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
stamp="$dir/node_modules/.lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing pyright for the Python SDK's type check (npm ci; cached in $cache)"
  npm ci --prefix "$dir" --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
echo "==> type-checking the Python SDK (pyright)"
"$dir/node_modules/.bin/pyright" -p sdk/python
