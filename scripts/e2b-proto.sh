#!/usr/bin/env bash
# Regenerates the Go code of E2B's envd protocol (internal/e2bcompat/envd/spec:
# process.proto and filesystem.proto, from e2b-dev/E2B spec/envd, Apache-2.0)
# with protoc, protoc-gen-go and protoc-gen-connect-go at pinned versions.
# The generated files are committed; this is only needed when the protos
# change (make e2b-proto).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  echo "==> installing protoc (apt-get install protobuf-compiler)"
  apt-get install -y -qq protobuf-compiler >/dev/null
fi
bin="${NULLSPACE_CACHE_DIR:-/var/cache/nullspace}/protoc-gen"
mkdir -p "$bin"
GOBIN="$bin" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN="$bin" go install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
spec=internal/e2bcompat/envd/spec
mod=nullspace.dev/nullspace
for p in process filesystem; do
  PATH="$bin:$PATH" protoc -I "$spec" \
    --go_out=. --go_opt=module=$mod --go_opt=M$p/$p.proto=$mod/$spec/$p \
    --connect-go_out=. --connect-go_opt=module=$mod --connect-go_opt=M$p/$p.proto=$mod/$spec/$p \
    "$spec/$p/$p.proto"
done
echo "==> generated $spec/{process,filesystem}"
