#!/usr/bin/env bash
# npm-ci.sh DIR WHAT: installs the npm packages pinned in DIR's
# package-lock.json with npm ci, once per lock file (a stamp of its hash in
# node_modules), npm's download cache outside the clone in
# $NULLSPACE_CACHE_DIR/npm. WHAT names them in the progress line. The
# project's Node parts (the TypeScript SDK's build tools, pyright, E2B's
# SDKs for the compatibility tests) are all installed by it.
set -euo pipefail
dir=$1 what=$2
cache="${NULLSPACE_CACHE_DIR:-/var/cache/nullspace}/npm"
if ! command -v npm >/dev/null 2>&1; then
  echo "nullspace: $what needs Node.js 20+ and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
stamp="$dir/node_modules/.lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing $what (npm ci; cached in $cache)"
  npm ci --prefix "$dir" --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
