#!/bin/bash
# Runs E2B's own JavaScript SDK tests (packages/js-sdk/tests of e2b-dev/E2B,
# through vitest, unmodified) against a live `nullspace serve --e2b-compat`
# with E2B_DOMAIN and E2B_API_KEY alone: the edge serves TLS with a test CA
# and *.localhost resolves to loopback in Node. By hand only (it needs an E2B
# checkout and the npm registry); not part of `make test`.
#
#   sudo scripts/e2b-upstream-tests.sh E2B_REPO [VITEST_ARGS...]
#
# E2B_REPO is a checkout of e2b-dev/E2B or its git directory; its HEAD is
# exported to $WORK (default /tmp/e2b-upstream), outside this repository,
# and its workspace installed there with pnpm (no browsers, no install
# scripts). Without VITEST_ARGS, the test files of the features the README
# lists as supported run (and git's: git in the sandbox against a git daemon
# on its loopback), then network.test.ts's allowPublicTraffic tests; with
# them, vitest runs just those (e.g. tests/sandbox/files -t read). Logs:
# $WORK/results-*.log and $WORK/server-*.log ($NAME names VITEST_ARGS' run).
# Run `make build` first.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,18p' "$0"; exit 2; }
E2B_REPO=$(realpath "$1")
shift
NS=${NS:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-/tmp/e2b-upstream}
NODE_NAME=${NODE_NAME:-e2bup} CIDR=${CIDR:-10.239.0.0/16}
DATA=${DATA:-/var/lib/nullspace-$NODE_NAME}
API=127.0.0.1:7801 EDGE=127.0.0.1:7802 E2B=127.0.0.1:7803
DOMAIN=e2b.localhost # three labels: TLS refuses a wildcard for *.localhost
SDK=$WORK/packages/js-sdk

# E2B's SDK, exported and installed.
if [ ! -d "$SDK" ]; then
	mkdir -p "$WORK"
	git -C "$E2B_REPO" archive HEAD | tar -x -C "$WORK"
fi
if [ ! -d "$SDK/node_modules" ]; then
	pnpm=$(sed -n 's/.*"packageManager": *"\(pnpm@[^"]*\)".*/\1/p' "$WORK/package.json")
	(cd "$WORK" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 CI=1 npx -y "$pnpm" install \
		--filter 'e2b...' --frozen-lockfile --ignore-scripts --config.engine-strict=false)
fi

# A test CA and a wildcard certificate for the edge.
C=$WORK/certs
if [ ! -f "$C/cert.pem" ]; then
	mkdir -p "$C"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
		-keyout "$C/ca.key" -out "$C/ca.pem" -subj "/CN=nullspace e2b-upstream test CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$C/key.pem" -out "$C/cert.csr" -subj "/CN=$DOMAIN" 2>/dev/null
	openssl x509 -req -in "$C/cert.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial \
		-days 7 -out "$C/cert.pem" 2>/dev/null -extfile <(printf '%s\n' \
		"subjectAltName=DNS:$DOMAIN,DNS:*.$DOMAIN" extendedKeyUsage=serverAuth)
fi

# One set of gVisor tests at a time on this host: hold the lock while our
# server runs machines.
exec 9>/tmp/nullspace-gvisor.lock
echo "waiting for /tmp/nullspace-gvisor.lock" >&2
flock 9

SERVER=
cleanup() {
	set +e
	if [ -n "$SERVER" ]; then
		export NULLSPACE_API_URL=http://$API NULLSPACE_API_KEY=$(cat "$DATA/api-key" 2>/dev/null)
		"$NS/bin/nullspace" --json machine list | python3 -c \
			'import json,sys; [print(m["id"]) for m in json.load(sys.stdin) if m["state"] not in ("killed","failed")]' |
			xargs -r "$NS/bin/nullspace" machine kill >/dev/null
		kill -TERM "$SERVER"
		wait "$SERVER"
	fi
	ip route del unreachable "$CIDR" 2>/dev/null
	# The node's nftables table (nft(8) may be missing: Go's nftables, as
	# the server uses; bin/ is ignored by git).
	cat >"$NS/bin/e2bup-nftdel.go" <<-'EOF'
		package main

		import ("os"; "github.com/google/nftables")

		func main() {
			c, err := nftables.New()
			if err != nil { panic(err) }
			c.DelTable(&nftables.Table{Name: os.Args[1], Family: nftables.TableFamilyINet})
			c.Flush() // ENOENT: no table left
		}
	EOF
	(cd "$NS" && go run bin/e2bup-nftdel.go "nullspace-$NODE_NAME")
	rm -f "$NS/bin/e2bup-nftdel.go"
	rmdir /sys/fs/cgroup/nullspace-"$NODE_NAME" /sys/fs/cgroup/*/nullspace-"$NODE_NAME" 2>/dev/null
	findmnt -rn -o TARGET | grep "^$DATA/" | sort -r | xargs -r -n1 umount -l
	rm -rf "$DATA"
	ip netns list | grep "nullspace-$NODE_NAME-" && echo "netns left behind" >&2
}
trap cleanup EXIT

"$NS/bin/nullspace" serve --e2b-compat --data-dir "$DATA" --node-name "$NODE_NAME" \
	--network-cidr "$CIDR" --addr "$API" --edge-addr "$EDGE" --e2b-addr "$E2B" --ssh-addr "" \
	--spares 0 --builtin-templates base --edge-domain "$DOMAIN" \
	--edge-tls-cert "$C/cert.pem" --edge-tls-key "$C/key.pem" --log-level debug >"$WORK/server-${NAME:-all}.log" 2>&1 &
SERVER=$!
for _ in $(seq 600); do
	curl -sf "http://$E2B/health" >/dev/null && [ -s "$DATA/api-key" ] && break
	kill -0 "$SERVER" || { tail "$WORK/server-${NAME:-all}.log"; exit 1; }
	sleep 1
done

# E2B_DOMAIN and E2B_API_KEY alone, as on E2B (E2B's e2b_ form of our key).
key=$(cat "$DATA/api-key")
run_vitest() {
	local name=$1
	shift
	(cd "$SDK" && env -u E2B_API_URL -u E2B_SANDBOX_URL -u E2B_DEBUG \
		E2B_DOMAIN="$DOMAIN:${EDGE##*:}" E2B_API_KEY="e2b_${key#ns_}" \
		NODE_EXTRA_CA_CERTS="$C/ca.pem" NO_COLOR=1 \
		NODE_OPTIONS="--import $NS/e2e/e2bsdk/resolve-localhost.mjs" \
		npx vitest run --project unit --reporter=verbose --no-file-parallelism \
		--testTimeout=120000 --hookTimeout=120000 "$@") 2>&1 | tee "$WORK/results-$name.log" || true
}
if [ $# -gt 0 ]; then
	run_vitest "${NAME:-args}" "$@"
else
	run_vitest supported tests/sandbox/commands tests/sandbox/files tests/sandbox/pty \
		tests/sandbox/connect.test.ts tests/sandbox/create.test.ts tests/sandbox/kill.test.ts \
		tests/sandbox/host.test.ts tests/sandbox/timeout.test.ts tests/sandbox/metrics.test.ts \
		tests/sandbox/snapshot tests/sandbox/fork.test.ts tests/sandbox/secure.test.ts \
		tests/sandbox/urls.test.ts tests/sandbox/lifecycle tests/sandbox/rpcHeaders.test.ts \
		tests/sandbox/configPropagation.test.ts tests/sandbox/abortSignal.test.ts tests/sandbox/git \
		tests/api tests/envd
	run_vitest network tests/sandbox/network.test.ts -t allowPublicTraffic
fi
