#!/usr/bin/env bash
# Installs E2B's JavaScript SDK at its pinned releases (e2e/e2bsdk,
# package-lock.json) for e2e TestE2BSDK: npm ci once per lock file, with
# npm's download cache outside the clone in $NULLSPACE_CACHE_DIR/npm.
set -euo pipefail
cd "$(dirname "$0")/../e2e/e2bsdk"
cache="${NULLSPACE_CACHE_DIR:-/var/cache/nullspace}/npm"
if ! command -v npm >/dev/null 2>&1; then
  echo "nullspace: the E2B SDK tests need Node.js 20+ and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
stamp=node_modules/.lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing E2B's SDKs for the compatibility tests (npm ci; cached in $cache)"
  npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
