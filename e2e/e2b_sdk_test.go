package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"nullspace.dev/nullspace/internal/apikey"
)

// e2bSDKs are the pinned releases of E2B's JavaScript SDK (npm aliases in
// e2e/e2bsdk/package.json): the newest 2.x, 2.45.0 (the last of the
// releases that refuse keys not spelt e2b_ + hex on the client), 2.30.5
// (in the middle of that range) and the oldest supported, 2.16.0.
var e2bSDKs = []string{"e2b-latest", "e2b-validating", "e2b-keyrange", "e2b-older"}

// TestE2BSDK runs E2B's documented examples (e2e/e2bsdk/test/e2b.test.mjs)
// with E2B's unmodified SDK against this server's E2B-compatible API, once
// per pinned release, configured only by the variables `nullspace e2b env`
// prints: create, commands (foreground, background, callbacks, stdin,
// kill), files (write, read, list, watch; metadata and watch entries on the
// releases that have them), setTimeout, getInfo, pause and
// connect with files and a process intact, a pause without memory (by
// pause({keepMemory: false}) or at the timeout) booting afresh on connect,
// auto-resume, paging, getHost through the edge, private ports and their
// traffic token, kill (E2B's 502 on the gone sandbox's host, and under a
// running command), signed file URLs, and the SDK's error paths. make test
// installs the SDKs (scripts/e2b-sdk.sh); without Node or them the test
// fails and says so.
func TestE2BSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the E2B SDK tests need Node.js 20+: %v", err)
	}
	dir := repoPath("e2e/e2bsdk")
	for _, sdk := range e2bSDKs {
		if _, err := os.Stat(dir + "/node_modules/" + sdk + "/package.json"); err != nil {
			t.Fatalf("E2B's SDK %s is not installed (%v): run `make test`, or scripts/e2b-sdk.sh", sdk, err)
		}
	}
	out, err := exec.CommandContext(t.Context(), repoPath("bin/nullspace"), "e2b", "env",
		"--api-url", "http://"+env.inst.Addr, "--api-key", env.key).CombinedOutput()
	if err != nil {
		t.Fatalf("nullspace e2b env: %v\n%s", err, out)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		kv, ok := strings.CutPrefix(line, "export ")
		k, v, ok2 := strings.Cut(kv, "=")
		if !ok || !ok2 {
			t.Fatalf("nullspace e2b env printed %q, not export lines", out)
		}
		vars[k] = v
	}
	want := map[string]string{"E2B_API_URL": "http://" + env.inst.E2BAddr, "E2B_SANDBOX_URL": "http://" + env.inst.E2BAddr,
		"E2B_API_KEY": apikey.E2BForm(env.key)}
	for k, v := range want {
		if vars[k] != v {
			t.Fatalf("nullspace e2b env: %s=%q, want %q (all: %s)", k, vars[k], v, out)
		}
	}
	if vars["E2B_DOMAIN"] == "" {
		t.Fatalf("nullspace e2b env printed no E2B_DOMAIN with an edge: %s", out)
	}
	for _, sdk := range e2bSDKs {
		t.Run(sdk, func(t *testing.T) {
			runE2BTests(t, node, sdk, vars)
		})
	}
}

// runE2BTests runs e2e/e2bsdk/test/e2b.test.mjs with release sdk and only
// the variables vars (beside the process's own): *.localhost resolves to
// loopback in it (resolve-localhost.mjs), as wildcard DNS would.
func runE2BTests(t *testing.T, node, sdk string, vars map[string]string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), node, "--import", "./resolve-localhost.mjs", "--test", "--test-reporter=spec", "test/e2b.test.mjs")
	cmd.Dir = repoPath("e2e/e2bsdk")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "E2B_") { // only what the test says
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "E2B_SDK="+sdk)
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test (%s): %v\n%s", sdk, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ℹ tests") || strings.HasPrefix(line, "ℹ pass") || strings.HasPrefix(line, "ℹ skipped") {
			t.Log(sdk, strings.TrimSpace(line))
		}
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "﹣") { // the spec reporter's skipped test, with its reason
			t.Log(sdk, "skipped:", strings.TrimSpace(strings.TrimPrefix(l, "﹣")))
		}
	}
}
