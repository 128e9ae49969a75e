package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPythonSDK runs the Python SDK's own suite (sdk/python/tests) against
// this server: its unit tests, every Python example of the reference
// documents as written, and its whole surface through both the blocking
// and the asyncio transport, on real gVisor machines. It runs under the
// host's python3 and again under Python 3.9, the oldest the SDK supports,
// when one is installed. python3 is part of the host's set-up
// (scripts/install-deps.sh); without it the test fails and says so.
func TestPythonSDK(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("the Python SDK tests need python3 (3.9 or later): %v; install it with apt-get install python3", err)
	}
	pythons := map[string]string{"python3": py}
	if old := python39(); old != "" {
		pythons["python3.9"] = old
	} else {
		t.Log("no Python 3.9 on this host: the SDK's suite runs under python3 only")
	}
	for name, bin := range pythons {
		t.Run(name, func(t *testing.T) { runPythonSuite(t, bin) })
	}
}

func runPythonSuite(t *testing.T, py string) {
	dir := repoPath("sdk/python")
	cmd := exec.CommandContext(t.Context(), py, "-m", "unittest", "discover", "-s", "tests", "-t", "tests", "-v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+dir,
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
		"NULLSPACE_API_URL=http://"+env.inst.Addr,
		"NULLSPACE_API_KEY="+env.key,
		// A root filesystem the suite uploads as a template tarball.
		"NULLSPACE_TEST_ROOTFS="+minimalRootfs(),
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -m unittest (in %s): %v\n%s", py, dir, err, out)
	}
	// The summary line, e.g. "Ran 62 tests in 190s".
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Ran ") {
			t.Log(py, line)
		}
	}
}

// python39 finds a Python 3.9 interpreter that runs: python3.9 on PATH, or
// one installed by pyenv (whose shim on PATH refuses versions that are not
// selected). "" when there is none.
func python39() string {
	cands := []string{}
	if p, err := exec.LookPath("python3.9"); err == nil {
		cands = append(cands, p)
	}
	root := os.Getenv("PYENV_ROOT")
	if root == "" {
		if home, err := os.UserHomeDir(); err == nil {
			root = filepath.Join(home, ".pyenv")
		}
	}
	if m, _ := filepath.Glob(filepath.Join(root, "versions", "3.9*", "bin", "python3.9")); len(m) > 0 {
		cands = append(cands, m...)
	}
	for _, c := range cands {
		if out, err := exec.Command(c, "--version").Output(); err == nil && strings.HasPrefix(string(out), "Python 3.9") {
			return c
		}
	}
	return ""
}

// minimalRootfs is the test server's minimal template (busybox) as a root
// filesystem directory: the SDK suites tar it and upload it as a template
// (NULLSPACE_TEST_ROOTFS), as TestTemplateBuild does with the Go client.
func minimalRootfs() string {
	return filepath.Join(env.cfg.TemplatesDir, "minimal", "rootfs")
}
