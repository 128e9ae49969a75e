package e2e

import (
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
)

// TestBaseTools runs, as the user account of a base machine, what code
// written for E2B's base template calls: python (not only python3), pip
// installing a package, node, and sudo, which must take the user to root
// inside gVisor without a password and without a word on stderr.
func TestBaseTools(t *testing.T) {
	ctx := t.Context()
	c := env.client
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	files := map[string]string{
		"/workspace/hello/setup.py": "from setuptools import setup\n" +
			"setup(name='nullspace-hello', version='1.0', py_modules=['nullspace_hello'])\n",
		"/workspace/hello/nullspace_hello.py": "GREETING = 'hello'\n",
	}
	for name, data := range files {
		if _, err := c.WriteFileBytes(ctx, m.ID, name, []byte(data), 0); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	run(t, m.ID, "chown -R user:user /workspace/hello")
	for _, tc := range []struct{ shell, want string }{
		{"id -un", "user\n"},
		{"sudo -n true && echo yes", "yes\n"},
		{"sudo whoami", "root\n"},
		{"sudo touch /root/by-sudo && sudo ls /root", "by-sudo\n"},
		// E2B's own test: sudo runs with a clean environment.
		{`sudo echo "$FOO"`, "\n"},
		{"python --version", "Python 3.11."},
		{"node -e 'console.log(6*7)'", "42\n"},
		// No index is reachable: a local package stands for `pip install`.
		{"cd /workspace/hello && pip install -q --no-index --no-build-isolation . && cd / && " +
			"python -c 'import nullspace_hello; print(nullspace_hello.GREETING)'", "hello\n"},
	} {
		res, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{Shell: tc.shell, User: "user", TimeoutMS: 120_000})
		if err != nil {
			t.Fatalf("%s: %v", tc.shell, err)
		}
		if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, tc.want) || (strings.HasPrefix(tc.shell, "sudo") && res.Stderr != "") {
			t.Errorf("as user, %s: exit %d, stdout %q, stderr %q; want 0, %q and no stderr from sudo",
				tc.shell, res.ExitCode, res.Stdout, res.Stderr, tc.want)
		}
	}
}
