#!/usr/bin/env bash
# Installs E2B's JavaScript SDK at its pinned releases (e2e/e2bsdk,
# package-lock.json) for e2e TestE2BSDK and the benchmark's e2b suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/npm-ci.sh e2e/e2bsdk "E2B's SDKs for the compatibility tests"
