#!/usr/bin/env bash
# Type-checks the Python SDK with pyright: the package in standard mode and
# a consumer program (sdk/python/typecheck/consumer.py) in strict mode.
# pyright is pinned in sdk/python/typecheck/package-lock.json and installed
# by scripts/npm-ci.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=sdk/python/typecheck
scripts/npm-ci.sh "$dir" "pyright for the Python SDK's type check"
echo "==> type-checking the Python SDK (pyright)"
"$dir/node_modules/.bin/pyright" -p sdk/python
