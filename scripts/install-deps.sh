#!/usr/bin/env bash
# Installs the Debian packages Nullspace needs on the host, once.
# Idempotent: does nothing (and needs no network) when all are present.
set -euo pipefail
pkgs=(debootstrap busybox-static ca-certificates tar iproute2 curl)
# The Python SDK's tests need a python3 (3.9+); any one on PATH will do.
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
# The SSH gateway's tests use OpenSSH's client as a second client.
command -v ssh >/dev/null 2>&1 || pkgs+=(openssh-client)
# The PostgreSQL store's tests start a throwaway cluster from these binaries
# (internal/store/pgtest); the package's own `main` cluster is never used.
pkgs+=(postgresql-15)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "nullspace: need root to install Debian packages: ${missing[*]}" >&2
  exit 1
fi
echo "==> installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
