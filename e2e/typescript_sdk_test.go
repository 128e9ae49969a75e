package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestTypeScriptSDK runs the TypeScript SDK's live suite
// (sdk/typescript/test/live.test.mjs) against this server, once from its
// ESM build and once from its CommonJS build: pause/connect/alias,
// snapshots and children, leases and keepAlive, files in every form,
// commands with callbacks and reattach, typed errors, abort, paging, a
// template built from an uploaded tarball and files' owners. make
// test builds the SDK first (scripts/typescript-sdk.sh); without Node or a
// build the test fails and says so.
func TestTypeScriptSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the TypeScript SDK tests need Node.js 20+: %v", err)
	}
	dir := repoPath("sdk/typescript")
	for _, build := range []string{"esm", "cjs"} {
		if _, err := os.Stat(dir + "/dist/" + build + "/index.js"); err != nil {
			t.Fatalf("sdk/typescript is not built (%v): run `make test`, or scripts/typescript-sdk.sh", err)
		}
	}
	for _, build := range []string{"esm", "cjs"} {
		t.Run(build, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), node, "--test", "--test-reporter=spec", "test/live.test.mjs")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "NULLSPACE_SDK_BUILD="+build,
				"NULLSPACE_API_URL=http://"+env.inst.Addr, "NULLSPACE_API_KEY="+env.key,
				"NULLSPACE_TEST_ROOTFS="+minimalRootfs())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("node --test (%s build): %v\n%s", build, err, out)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, "ℹ tests") || strings.HasPrefix(line, "ℹ pass") {
					t.Log(build, strings.TrimSpace(line))
				}
			}
		})
	}
}
