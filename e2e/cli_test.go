package e2e

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/cli"
)

// nullspace runs the CLI against the test server and returns its exit code
// and output.
func nullspace(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	root := cli.NewRootCommand("e2e")
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--api-url", "http://" + env.inst.Addr, "--api-key", env.key}, args...))
	code := cli.Execute(t.Context(), root)
	return code, stdout.String(), stderr.String()
}

// TestCLI drives a machine through the CLI: create, exec with streamed
// output and the command's exit code, files, list, kill.
func TestCLI(t *testing.T) {
	code, out, errOut := nullspace(t, "", "--json", "machine", "create", "--template", "minimal", "--metadata", "owner=cli-test")
	if code != 0 {
		t.Fatalf("machine create: exit %d: %s", code, errOut)
	}
	var m api.Machine
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("machine create --json output %q: %v", out, err)
	}
	t.Cleanup(func() { nullspace(t, "", "machine", "kill", m.ID) })

	steps := []struct {
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{[]string{"exec", m.ID, "--", "sh", "-c", "echo out; echo err >&2; exit 5"}, "", 5, "out\n", "err\n"},
		{[]string{"exec", m.ID, "--", "no-such-command"}, "", 127, "", "not found"},
		{[]string{"files", "write", m.ID, "/workspace/cli.txt", "-"}, "from the cli\n", 0, "", ""},
		{[]string{"files", "read", m.ID, "/workspace/cli.txt"}, "", 0, "from the cli\n", ""},
		{[]string{"exec", m.ID, "--", "cat", "/workspace/cli.txt"}, "", 0, "from the cli\n", ""},
		{[]string{"files", "ls", m.ID, "/workspace"}, "", 0, "cli.txt", ""},
		{[]string{"machine", "list", "--metadata", "owner=cli-test"}, "", 0, m.ID, ""},
		{[]string{"machine", "info", "mch_00000000000000000000"}, "", 1, "", "machine_not_found"},
		{[]string{"machine", "kill", m.ID}, "", 0, m.ID, ""},
		{[]string{"exec", m.ID, "--", "true"}, "", 1, "", "machine_not_running"},
	}
	for _, s := range steps {
		code, out, errOut := nullspace(t, s.stdin, s.args...)
		if code != s.wantCode || !strings.Contains(out, s.wantStdout) || !strings.Contains(errOut, s.wantStderr) {
			t.Errorf("nullspace %s: exit %d, stdout %q, stderr %q; want exit %d, stdout containing %q, stderr containing %q",
				strings.Join(s.args, " "), code, out, errOut, s.wantCode, s.wantStdout, s.wantStderr)
		}
	}
}

// TestCLIHibernate drives pause, connect, snapshots, fork and checkpoints
// through the CLI.
func TestCLIHibernate(t *testing.T) {
	code, out, errOut := nullspace(t, "", "machine", "create", "--template", "minimal")
	if code != 0 {
		t.Fatalf("machine create: exit %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	t.Cleanup(func() { nullspace(t, "", "machine", "kill", id) })
	must := func(args ...string) string {
		t.Helper()
		code, out, errOut := nullspace(t, "", args...)
		if code != 0 {
			t.Fatalf("nullspace %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return strings.TrimSpace(out)
	}
	must("exec", id, "--", "sh", "-c", "echo cli > /root/cli.txt")
	snap := must("machine", "pause", id)
	if !strings.HasPrefix(snap, "snp_") {
		t.Fatalf("machine pause printed %q, want a snapshot id", snap)
	}
	if out := must("machine", "list"); !strings.Contains(out, snap) || !strings.Contains(out, "paused") {
		t.Fatalf("machine list does not show the paused machine and its snapshot:\n%s", out)
	}
	head := must("machine", "connect", id)
	if !strings.HasPrefix(head, "mch_") || head == id {
		t.Fatalf("machine connect printed %q, want the new machine id", head)
	}
	t.Cleanup(func() { nullspace(t, "", "machine", "kill", head) })
	if out := must("exec", head, "--", "cat", "/root/cli.txt"); out != "cli" {
		t.Fatalf("file after connect = %q", out)
	}
	cp := must("checkpoint", "create", head)
	if out := must("checkpoint", "ls", head); !strings.Contains(out, cp) || !strings.Contains(out, snap) {
		t.Fatalf("checkpoint ls misses %s or %s:\n%s", cp, snap, out)
	}
	must("exec", head, "--", "sh", "-c", "echo changed > /root/cli.txt")
	must("checkpoint", "restore", head, cp)
	if out := must("exec", head, "--", "cat", "/root/cli.txt"); out != "cli" {
		t.Fatalf("file after checkpoint restore = %q", out)
	}
	kids := strings.Fields(must("machine", "fork", head, "--count", "2"))
	if len(kids) != 2 {
		t.Fatalf("machine fork printed %q, want 2 machine ids", kids)
	}
	for _, k := range kids {
		t.Cleanup(func() { nullspace(t, "", "machine", "kill", k) })
		if out := must("exec", k, "--", "cat", "/root/cli.txt"); out != "cli" {
			t.Fatalf("fork child file = %q", out)
		}
	}
	if out := must("snapshot", "info", cp); !strings.Contains(out, "checkpoint") {
		t.Fatalf("snapshot info %s:\n%s", cp, out)
	}
	if code, _, errOut := nullspace(t, "", "machine", "resume", snap); code == 0 || !strings.Contains(errOut, "snapshot_superseded") {
		t.Fatalf("resuming an old snapshot: exit %d, %s", code, errOut)
	}
}

// TestCLIStopStartWait drives the main process, stop, start and wait
// through the CLI: wait exits with the main process's code (124 when its
// --timeout passes first), stop and start keep the id and the files.
func TestCLIStopStartWait(t *testing.T) {
	code, out, errOut := nullspace(t, "", "machine", "create", "--template", "minimal", "--",
		"/bin/sh", "-c", "trap 'exit 3' TERM; touch /root/trapped; while :; do sleep 1; done")
	if code != 0 {
		t.Fatalf("machine create -- CMD: exit %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	t.Cleanup(func() { nullspace(t, "", "machine", "kill", id) })
	waitTrapped(t, id)
	run(t, id, "echo cli > /root/cli.txt")
	steps := []struct {
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{[]string{"machine", "wait", id, "--timeout", "300ms"}, 124, "", "still running"},
		{[]string{"machine", "info", id}, 0, "trap", ""},
		{[]string{"machine", "stop", id, "--grace", "5s"}, 0, id, "exit code 3"},
		{[]string{"machine", "info", id}, 0, "stopped", ""},
		{[]string{"machine", "wait", id}, 3, "exit code 3", ""},
		{[]string{"exec", id, "--", "true"}, 1, "", "machine start"},
		{[]string{"machine", "start", id}, 0, id, "main process pid"},
		{[]string{"exec", id, "--", "cat", "/root/cli.txt"}, 0, "cli\n", ""},
		{[]string{"snapshot", "ls", "--machine", id, "--kind", "disk"}, 0, "", ""},
	}
	for _, s := range steps {
		code, out, errOut := nullspace(t, "", s.args...)
		if code != s.wantCode || !strings.Contains(out, s.wantStdout) || !strings.Contains(errOut, s.wantStderr) {
			t.Errorf("nullspace %s: exit %d, stdout %q, stderr %q; want exit %d, stdout containing %q, stderr containing %q",
				strings.Join(s.args, " "), code, out, errOut, s.wantCode, s.wantStdout, s.wantStderr)
		}
	}
	if code, _, errOut := nullspace(t, "", "machine", "stop", id, "--grace", "1h"); code == 0 || !strings.Contains(errOut, "invalid_argument") {
		t.Errorf("stop --grace 1h: exit %d, %s", code, errOut)
	}
}
