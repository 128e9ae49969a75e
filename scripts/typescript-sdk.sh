#!/usr/bin/env bash
# Builds and checks the TypeScript SDK (sdk/typescript) for make test: its
# npm dependencies (build-time only, pinned in package-lock.json) installed
# by scripts/npm-ci.sh; then the ESM and CJS builds, the unit tests
# (which also check that src/generated/openapi.ts is what api/openapi.yaml
# generates) and the consumer program's type check. The live tests run
# from e2e TestTypeScriptSDK against the test server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/npm-ci.sh sdk/typescript "the TypeScript SDK's build tools"
cd sdk/typescript
echo "==> building the TypeScript SDK (ESM and CommonJS)"
npm run -s build
echo "==> TypeScript SDK: unit tests, generated types, consumer type check"
npm test --silent
npm run -s typecheck-consumer
