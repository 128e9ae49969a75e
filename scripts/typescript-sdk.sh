#!/usr/bin/env bash
# Builds and checks the TypeScript SDK (sdk/typescript) for make test: its
# npm dependencies (build-time only, pinned in package-lock.json) installed
# with npm ci once per lock file, npm's download cache outside the clone in
# $NULLSPACE_CACHE_DIR/npm; then the ESM and CJS builds, the unit tests
# (which also check that src/generated/openapi.ts is what api/openapi.yaml
# generates) and the consumer program's type check. The live tests run
# from e2e TestTypeScriptSDK against the test server.
set -euo pipefail
cd "$(dirname "$0")/../sdk/typescript"
cache="${NULLSPACE_CACHE_DIR:-/var/cache/nullspace}/npm"
if ! command -v npm >/dev/null 2>&1; then
  echo "nullspace: the TypeScript SDK needs Node.js 20+ and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
stamp=node_modules/.lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing the TypeScript SDK's build tools (npm ci; cached in $cache)"
  npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
echo "==> building the TypeScript SDK (ESM and CommonJS)"
npm run -s build
echo "==> TypeScript SDK: unit tests, generated types, consumer type check"
npm test --silent
npm run -s typecheck-consumer
