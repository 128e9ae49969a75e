#!/usr/bin/env bash
# Builds runsc from the gVisor Go module pinned in tools/runsc/go.mod into
# the cache directory (outside the clone), once per pinned version.
# Usage: build-runsc.sh <cache dir>   Prints the path of the binary.
set -euo pipefail
cache=${1:?cache dir}
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -oE "gvisor.dev/gvisor v[^ ]+" "$here/tools/runsc/go.mod" | head -n1 | cut -d" " -f2)
[ -n "$version" ] || { echo "nullspace: no gvisor version in tools/runsc/go.mod" >&2; exit 1; }
out="$cache/runsc/$version/runsc"
if [ ! -x "$out" ]; then
  echo "==> building runsc $version from its Go module (about 2 minutes, once; cached in $cache)" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$here/tools/runsc" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" gvisor.dev/gvisor/runsc)
  mv "$out.tmp" "$out"
fi
# The server records this in every snapshot: a checkpoint restores only
# under the runsc version that wrote it.
[ -f "$out.version" ] || echo "$version" > "$out.version"
echo "$out"
