#!/usr/bin/env bash
# Builds versitygw, the S3-compatible server the object-store tests run
# against (Apache-2.0, S3 over a POSIX directory), from the module pinned in
# tools/versitygw/go.mod into the cache directory (outside the clone), once
# per pinned version. It is a test tool: nothing links it.
# Usage: build-versitygw.sh <cache dir>   Prints the path of the binary.
set -euo pipefail
cache=${1:?cache dir}
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -oE "github.com/versity/versitygw v[^ ]+" "$here/tools/versitygw/go.mod" | head -n1 | cut -d" " -f2)
[ -n "$version" ] || { echo "nullspace: no versitygw version in tools/versitygw/go.mod" >&2; exit 1; }
out="$cache/versitygw/$version/versitygw"
if [ ! -x "$out" ]; then
  echo "==> building versitygw $version from its Go module (about 1 minute, once; cached in $cache)" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$here/tools/versitygw" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" github.com/versity/versitygw/cmd/versitygw)
  mv "$out.tmp" "$out"
fi
echo "$out"
