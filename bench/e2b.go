package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process/processconnect"
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
	sideEnvdGo        = "envd_go"        // envd's Start from the Go Connect client
	sideAPIGo         = "api_go"         // POST .../commands from the Go client
	sideRunscExec     = "runsc_exec"     // runsc exec /bin/true in a raw sandbox

	metricBinTrue = "bin_true_round_trip"
)

var e2bMetrics = []struct{ metric, name string }{
	{"create_first_command", "create to first command"},
	{"exec_round_trip", "command round trip"},
}

func measureE2B(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results) error {
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
	if err := runSampler(cmd, res, template.Base, "bench.mjs"); err != nil {
		return err
	}
	return measureEnvdGo(ctx, cfg, ns, raw, res)
}

// measureEnvdGo times /bin/true through envd's Start stream (the Go
// Connect client) and through POST .../commands (the Go client) on one
// machine, and `runsc exec /bin/true` in a raw sandbox, in turn: what the
// layer adds on the server, with the same client stack on both sides, and
// the raw baseline.
func measureEnvdGo(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results) error {
	fmt.Fprintf(os.Stderr, "bench: /bin/true through envd and through the API from Go, %d round trips each\n", cfg.n*5)
	e2bURL := "http://" + ns.inst.E2BAddr
	body := strings.NewReader(`{"templateID":"base","timeout":300}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e2bURL+"/sandboxes", body)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-KEY", ns.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("e2b create: %w", err)
	}
	var sb struct{ SandboxID, EnvdAccessToken string }
	err = json.NewDecoder(resp.Body).Decode(&sb)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("e2b create: %d, %v", resp.StatusCode, err)
	}
	id := "mch_" + sb.SandboxID
	ns.live[id] = true
	defer func() {
		if _, err := ns.client.KillMachine(context.WithoutCancel(ctx), id); err == nil {
			delete(ns.live, id)
		}
	}()
	pc := processconnect.NewProcessClient(http.DefaultClient, e2bURL, connect.WithProtoJSON())
	envd := func() error {
		r := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/true"}})
		r.Header().Set("E2b-Sandbox-Id", sb.SandboxID)
		r.Header().Set("X-Access-Token", sb.EnvdAccessToken)
		s, err := pc.Start(ctx, r)
		if err != nil {
			return err
		}
		ended := false
		for s.Receive() {
			ended = ended || s.Msg().GetEvent().GetEnd() != nil
		}
		if err := s.Err(); err != nil || !ended {
			return fmt.Errorf("envd start: %v (end seen: %v)", err, ended)
		}
		return nil
	}
	apiRun := func() error {
		_, err := ns.client.RunCommand(ctx, id, api.RunCommandRequest{Cmd: []string{"/bin/true"}, User: "user", Cwd: "/home/user"})
		return err
	}
	rc, err := raw.warm(ctx, 2)
	if err != nil {
		return err
	}
	defer raw.kill(context.WithoutCancel(ctx), rc, nil)
	type side struct {
		name string
		f    func() error
	}
	for i := range cfg.n*5 + 5 {
		order := []side{{sideEnvdGo, envd}, {sideAPIGo, apiRun}, {sideRunscExec, func() error { return raw.execTrueIn(ctx, rc) }}}
		if i%2 == 1 {
			slices.Reverse(order) // alternate which goes first
		}
		for _, side := range order {
			t0 := time.Now()
			if err := side.f(); err != nil {
				return err
			}
			if i >= 5 { // the first five warm up
				res.addDuration(metricBinTrue, side.name, template.Base, time.Since(t0))
			}
		}
	}
	return nil
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
	fmt.Fprintf(w, "  /bin/true's round trip, one fetch from Node: envd Start stream %.2f ms, POST .../commands %.2f ms: %.2fx\n", e2b, ns, ratio(e2b, ns))
	e2b, ns = r.p50(metricBinTrue, sideEnvdGo, template.Base), r.p50(metricBinTrue, sideAPIGo, template.Base)
	fmt.Fprintf(w, "  /bin/true's round trip from Go: envd Start stream %.2f ms, POST .../commands %.2f ms: %.2fx (+%.2f ms)\n", e2b, ns, ratio(e2b, ns), e2b-ns)
	raw := r.p50(metricBinTrue, sideRunscExec, template.Base)
	fmt.Fprintf(w, "  beside raw runsc: `runsc exec /bin/true` %.2f ms; envd %.2fx of it, POST .../commands %.2fx\n", raw, ratio(e2b, raw), ratio(ns, raw))
}
