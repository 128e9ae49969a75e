package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPythonSDK runs the Python SDK's own suite (sdk/python/tests) against
// this server: its unit tests, every Python example of the reference
// documents as written, and its whole surface through both the blocking
// and the asyncio transport, on real gVisor machines. python3 is part of
// the host's set-up (scripts/install-deps.sh); without it the test fails
// and says so.
func TestPythonSDK(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("the Python SDK tests need python3 (3.9 or later): %v; install it with apt-get install python3", err)
	}
	dir := repoPath("sdk/python")
	cmd := exec.CommandContext(t.Context(), py, "-m", "unittest", "discover", "-s", "tests", "-t", "tests", "-v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+dir,
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
		"NULLSPACE_API_URL=http://"+env.inst.Addr,
		"NULLSPACE_API_KEY="+env.key,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest (in %s): %v\n%s", dir, err, out)
	}
	// The summary line, e.g. "Ran 62 tests in 190s".
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Ran ") {
			t.Log(line)
		}
	}
}
