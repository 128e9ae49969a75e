package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"

	"nullspace.dev/nullspace/internal/template"
)

// The issue-15 measurements: e2e/e2bsdk/bench.mjs runs the same calls
// through E2B's unmodified SDK (against the E2B-compatible API) and
// through Nullspace's TypeScript SDK (against the Nullspace API), in one
// Node process, alternating which goes first: create to the first
// command's result, and a command's round trip on a running machine; and
// the round trip as one bare fetch of each protocol, which is what the
// server adds without either SDK's client-side work. The SDK sides run the
// program E2B's SDK runs, `/bin/bash -l -c true` as user; the wire sides
// /bin/true as user, so that the protocols' cost is not lost in bash's
// start.

const (
	sideE2BSDK        = "e2b_sdk"
	sideTSSDK         = "typescript_sdk"
	sideE2BWire       = "e2b_wire"       // envd's Start stream as one fetch
	sideNullspaceWire = "nullspace_wire" // POST .../commands as one fetch
)

var e2bMetrics = []struct{ metric, name string }{
	{"create_first_command", "create to first command"},
	{"exec_round_trip", "command round trip"},
}

func measureE2B(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("the e2b suite needs Node.js 20+: %w", err)
	}
	if !slices.Contains(ns.extraTemplates, template.Base) {
		return fmt.Errorf("the e2b suite runs on template base (E2B's default): build it first, e.g. with `make run` or the e2e tests")
	}
	if ns.inst.E2BAddr == "" {
		return fmt.Errorf("the bench server runs without its E2B-compatible API")
	}
	dir, err := filepath.Abs("e2e/e2bsdk")
	if err != nil {
		return err
	}
	for _, need := range []string{"node_modules/e2b-latest/package.json", "../../sdk/typescript/dist/esm/index.js"} {
		if _, err := os.Stat(filepath.Join(dir, need)); err != nil {
			return fmt.Errorf("the e2b suite needs E2B's SDK and the TypeScript SDK's build (run scripts/e2b-sdk.sh and scripts/typescript-sdk.sh, or make test): %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "bench: E2B's SDK through the compatibility API beside the TypeScript SDK, %d iterations (template base)\n", cfg.n)
	cmd := exec.CommandContext(ctx, node, "bench.mjs", "-n", strconv.Itoa(cfg.n), "--template", template.Base)
	cmd.Dir = dir
	e2bURL := "http://" + ns.inst.E2BAddr
	cmd.Env = append(os.Environ(), "E2B_API_URL="+e2bURL, "E2B_SANDBOX_URL="+e2bURL, "E2B_API_KEY="+ns.key,
		"NULLSPACE_API_URL=http://"+ns.inst.Addr, "NULLSPACE_API_KEY="+ns.key)
	return runSampler(cmd, res, template.Base, "bench.mjs")
}

func (r *results) printE2B(w io.Writer) {
	if r.get(e2bMetrics[0].metric, sideE2BSDK, template.Base) == nil {
		return
	}
	fmt.Fprintln(w, "\nE2B compatibility (issue 15), p50: E2B's SDK through the E2B-compatible API, beside the TypeScript SDK through the Nullspace API:")
	for _, m := range e2bMetrics {
		e2b, ts := r.p50(m.metric, sideE2BSDK, template.Base), r.p50(m.metric, sideTSSDK, template.Base)
		verdict := "ok"
		if ratio(e2b, ts) > 1.1 {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %s: E2B SDK %.2f ms, TypeScript SDK %.2f ms: %.2fx (target 1.1x) %s\n", m.name, e2b, ts, ratio(e2b, ts), verdict)
	}
	// What the server adds, without either SDK's client-side work.
	e2b, ns := r.p50("exec_round_trip", sideE2BWire, template.Base), r.p50("exec_round_trip", sideNullspaceWire, template.Base)
	fmt.Fprintf(w, "  /bin/true's round trip on the wire (one fetch each): envd Start stream %.2f ms, POST .../commands %.2f ms: %.2fx\n", e2b, ns, ratio(e2b, ns))
}
