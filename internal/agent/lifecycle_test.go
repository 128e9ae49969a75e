package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

const testMachineID = "m-before"

// newLifecycleAgent runs an agent with a machine id, its own workdir and
// run dir.
func newLifecycleAgent(t *testing.T) (ta testAgent, workdir, runDir string) {
	t.Helper()
	workdir, runDir = t.TempDir(), filepath.Join(t.TempDir(), "run", "nullspace")
	ta = newAgent(t, func(c *agent.Config) {
		c.MachineID = testMachineID
		c.Workdir = workdir
		c.RunDir = runDir
	})
	return ta, workdir, runDir
}

// hostname is the name restores in these tests set: the current one, so
// that a test run as root does not rename the host it runs on.
func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPrepareHooks(t *testing.T) {
	ta, workdir, _ := newLifecycleAgent(t)
	long := strings.Repeat("a", 10000)
	tests := []struct {
		name  string
		hooks []string
		want  []api.HookResult // Command is the hook; DurationMS is not compared
	}{
		{name: "none"},
		{
			name: "in order, with the hook environment",
			hooks: []string{
				"echo one >> order",
				"echo two >> order; cat order",
				`echo "$NULLSPACE_EVENT $NULLSPACE_MACHINE_ID $(id -u) $(pwd)"`,
			},
			want: []api.HookResult{
				{},
				{Output: "one\ntwo\n"},
				{Output: "pause " + testMachineID + " 0 " + workdir + "\n"},
			},
		},
		{
			name:  "failing hook does not stop the next",
			hooks: []string{"echo failing; exit 3", "echo next"},
			want:  []api.HookResult{{ExitCode: 3, Output: "failing\n"}, {Output: "next\n"}},
		},
		{
			name:  "stdout and stderr combined in order",
			hooks: []string{"echo out; echo err >&2; echo out2"},
			want:  []api.HookResult{{Output: "out\nerr\nout2\n"}},
		},
		{
			name:  "output keeps the last 4 KiB",
			hooks: []string{"printf %s " + long + "; echo END"},
			want:  []api.HookResult{{Output: (long + "END\n")[len(long)+4-4096:]}},
		},
		{
			name:  "killed by a signal",
			hooks: []string{"kill -TERM $$"},
			want:  []api.HookResult{{ExitCode: 128 + 15}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(filepath.Join(workdir, "order"))
			res, err := ta.c.Prepare(t.Context(), api.AgentPrepareRequest{Hooks: tt.hooks})
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if len(res.Hooks) != len(tt.want) {
				t.Fatalf("got %d hook results %+v, want %d", len(res.Hooks), res.Hooks, len(tt.want))
			}
			for i, got := range res.Hooks {
				want := tt.want[i]
				want.Command = tt.hooks[i]
				got.DurationMS = 0
				if got != want {
					t.Errorf("hook %d: got %+v, want %+v", i, got, want)
				}
			}
			if res.SyncMS < 1 {
				t.Errorf("got sync_ms %d, want the sync reported (>= 1)", res.SyncMS)
			}
			if res.ClockSkewMS != 0 {
				t.Errorf("got clock_skew_ms %d, want 0 on prepare", res.ClockSkewMS)
			}
		})
	}
}

// A hook still running at the deadline is killed with its process group;
// the hooks after it do not run.
func TestPrepareTimeout(t *testing.T) {
	ta, workdir, _ := newLifecycleAgent(t)
	hooks := []string{
		"echo first",
		"echo $$ > pgid; echo started; sleep 100 & sleep 100",
		"touch skipped",
	}
	start := time.Now()
	res, err := ta.c.Prepare(t.Context(), api.AgentPrepareRequest{Hooks: hooks, TimeoutMS: 500})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("took %v, want the hook killed at the 500 ms deadline", elapsed)
	}
	if len(res.Hooks) != 2 {
		t.Fatalf("got %d hook results %+v, want 2 (the last one skipped)", len(res.Hooks), res.Hooks)
	}
	if h := res.Hooks[0]; h.ExitCode != 0 || h.TimedOut || h.Output != "first\n" {
		t.Errorf("hook 0: got %+v, want exit 0 with output first", h)
	}
	h := res.Hooks[1]
	if !h.TimedOut || h.ExitCode != -1 || h.Output != "started\n" {
		t.Errorf("hook 1: got %+v, want timed out, exit -1, output started", h)
	}
	if h.DurationMS < 400 {
		t.Errorf("hook 1: got duration %d ms, want about 500", h.DurationMS)
	}
	if _, err := os.Stat(filepath.Join(workdir, "skipped")); err == nil {
		t.Errorf("the hook after the timed-out one ran, want it skipped")
	}
	b, err := os.ReadFile(filepath.Join(workdir, "pgid"))
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the hook's process group to die", func() bool { return len(groupMembers(pgid)) == 0 })
}

func TestPrepareErrors(t *testing.T) {
	ta, _, _ := newLifecycleAgent(t)
	tests := []struct {
		name string
		req  api.AgentPrepareRequest
	}{
		{"negative timeout", api.AgentPrepareRequest{Hooks: []string{"true"}, TimeoutMS: -1}},
		{"NUL in a hook", api.AgentPrepareRequest{Hooks: []string{"true", "echo a\x00b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ta.c.Prepare(t.Context(), tt.req)
			wantCode(t, err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
		})
	}
	bad := agentclient.New(ta.url, "wrong", nil)
	defer bad.Close()
	_, err := bad.Prepare(t.Context(), api.AgentPrepareRequest{})
	wantCode(t, err, errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated)
}

func TestRestored(t *testing.T) {
	ta, workdir, runDir := newLifecycleAgent(t)
	ctx := t.Context()

	h, err := ta.c.Health(ctx)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if want := (api.AgentRestoreInfo{MachineID: testMachineID}); h.Restore != want {
		t.Errorf("before the restore: got health restore %+v, want %+v", h.Restore, want)
	}
	run := func(c *agentclient.Client, shell string) string {
		t.Helper()
		res, err := c.Run(ctx, api.RunCommandRequest{Shell: shell})
		if err != nil {
			t.Fatalf("Run(%q): %v", shell, err)
		}
		return res.Stdout
	}
	if got := run(ta.c, "echo $NULLSPACE_MACHINE_ID"); got != testMachineID+"\n" {
		t.Errorf("before the restore: got machine id %q, want %q", got, testMachineID)
	}

	hostsFile := filepath.Join(workdir, "etc", "hosts")
	if err := os.MkdirAll(filepath.Dir(hostsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostsFile, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(workdir, "new", "dir", "hostname")
	const newID, newToken = "m-after", "new-token"
	req := api.AgentRestoredRequest{
		MachineID: newID,
		Hostname:  hostname(t),
		Token:     newToken,
		Now:       time.Now().Add(-2 * time.Second), // the agent's clock is 2 s ahead
		Files:     map[string]string{hostsFile: "10.0.0.2 m-after\n", newFile: "m-after\n"},
		Hooks: []string{
			`echo "$NULLSPACE_EVENT $NULLSPACE_MACHINE_ID"`,
			"cat " + filepath.Join(runDir, "restore.json"),
		},
	}
	before := time.Now()
	res, err := ta.c.Restored(ctx, req)
	if err != nil {
		t.Fatalf("Restored: %v", err)
	}
	if res.ClockSkewMS < 2000 || res.ClockSkewMS > 2000+patience.Milliseconds() {
		t.Errorf("got clock_skew_ms %d, want about 2000", res.ClockSkewMS)
	}
	if len(res.Hooks) != 2 {
		t.Fatalf("got %d hook results %+v, want 2", len(res.Hooks), res.Hooks)
	}
	if got, want := res.Hooks[0].Output, "resume "+newID+"\n"; got != want || res.Hooks[0].ExitCode != 0 {
		t.Errorf("resume hook: got output %q exit %d, want %q 0", got, res.Hooks[0].ExitCode, want)
	}

	// The hooks see restore.json, and it says what health says.
	var info api.AgentRestoreInfo
	if err := json.Unmarshal([]byte(res.Hooks[1].Output), &info); err != nil {
		t.Fatalf("restore.json as seen by a hook: %q: %v", res.Hooks[1].Output, err)
	}
	if info.MachineID != newID || info.RestoreCount != 1 || info.RestoredAt.Before(before.Add(-time.Second)) {
		t.Errorf("got restore.json %+v, want machine %s, count 1, restored after %v", info, newID, before)
	}
	fi, err := os.Stat(filepath.Join(runDir, "restore.json"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("restore.json: got %v, %v, want mode 0644", fi, err)
	}

	for path, want := range req.Files {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			t.Errorf("%s: got %q, %v, want %q", path, b, err, want)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: got %v, %v, want mode 0644", path, fi, err)
		}
	}

	// The old token is rejected from now on; the new one works.
	_, err = ta.c.Run(ctx, api.RunCommandRequest{Cmd: []string{"true"}})
	wantCode(t, err, errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated)
	ta.c.SetToken(newToken)
	if got := run(ta.c, "echo $NULLSPACE_MACHINE_ID"); got != newID+"\n" {
		t.Errorf("after the restore: got machine id %q, want %q", got, newID)
	}
	h, err = ta.c.Health(ctx)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if h.Restore.MachineID != newID || h.Restore.RestoreCount != 1 || !h.Restore.RestoredAt.Equal(info.RestoredAt) {
		t.Errorf("after the restore: got health restore %+v, want %+v", h.Restore, info)
	}

	// A second restore authenticates with the token of the first.
	req2 := api.AgentRestoredRequest{MachineID: "m-third", Hostname: hostname(t), Token: "third-token"}
	if _, err := ta.c.Restored(ctx, req2); err != nil {
		t.Fatalf("second Restored: %v", err)
	}
	ta.c.SetToken(req2.Token)
	if h, err := ta.c.Health(ctx); err != nil || h.Restore.RestoreCount != 2 || h.Restore.MachineID != "m-third" {
		t.Errorf("after the second restore: got health %+v, %v, want count 2, machine m-third", h, err)
	}
}

// A restore that fails (bad input, or a file it cannot write) changes
// nothing: the old token still works and no restore is counted.
func TestRestoredErrors(t *testing.T) {
	ta, workdir, runDir := newLifecycleAgent(t)
	aFile := filepath.Join(workdir, "file")
	if err := os.WriteFile(aFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	valid := api.AgentRestoredRequest{MachineID: "m-new", Hostname: "m-new", Token: "new-token"}
	tests := []struct {
		name     string
		mutate   func(*api.AgentRestoredRequest)
		wantCode string
	}{
		{"no machine id", func(r *api.AgentRestoredRequest) { r.MachineID = "" }, errdefs.CodeInvalidArgument},
		{"no token", func(r *api.AgentRestoredRequest) { r.Token = "" }, errdefs.CodeInvalidArgument},
		{"no hostname", func(r *api.AgentRestoredRequest) { r.Hostname = "" }, errdefs.CodeInvalidArgument},
		{"hostname with a space", func(r *api.AgentRestoredRequest) { r.Hostname = "a b" }, errdefs.CodeInvalidArgument},
		{"hostname with an underscore", func(r *api.AgentRestoredRequest) { r.Hostname = "a_b" }, errdefs.CodeInvalidArgument},
		{"hostname starting with a hyphen", func(r *api.AgentRestoredRequest) { r.Hostname = "-ab" }, errdefs.CodeInvalidArgument},
		{"hostname with an empty label", func(r *api.AgentRestoredRequest) { r.Hostname = "a..b" }, errdefs.CodeInvalidArgument},
		{"hostname too long", func(r *api.AgentRestoredRequest) { r.Hostname = strings.Repeat("a.", 32) + "a" }, errdefs.CodeInvalidArgument},
		{"relative file path", func(r *api.AgentRestoredRequest) { r.Files = map[string]string{"etc/hosts": "x"} }, errdefs.CodeInvalidArgument},
		{"negative timeout", func(r *api.AgentRestoredRequest) { r.TimeoutMS = -1 }, errdefs.CodeInvalidArgument},
		{"file below a file", func(r *api.AgentRestoredRequest) { r.Files = map[string]string{aFile + "/x": "x"} }, errdefs.CodeNotADirectory},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := valid
			tt.mutate(&req)
			_, err := ta.c.Restored(t.Context(), req)
			wantCode(t, err, errdefs.ErrInvalidArgument, tt.wantCode)
		})
	}
	h, err := ta.c.Health(t.Context())
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if want := (api.AgentRestoreInfo{MachineID: testMachineID}); h.Restore != want {
		t.Errorf("got health restore %+v, want %+v (unchanged)", h.Restore, want)
	}
	if _, err := ta.c.Stat(t.Context(), "/"); err != nil {
		t.Errorf("the old token after failed restores: %v, want it still accepted", err)
	}
	if _, err := os.Stat(filepath.Join(runDir, "restore.json")); err == nil {
		t.Errorf("restore.json written by a failed restore")
	}

	// The restore route takes the current token only.
	bad := agentclient.New(ta.url, "wrong", nil)
	defer bad.Close()
	req := valid
	req.Hostname = hostname(t)
	_, err = bad.Restored(t.Context(), req)
	wantCode(t, err, errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated)
}

// A file bind-mounted over (as /etc/hosts may be) cannot be replaced by a
// rename; the restore rewrites it in place.
func TestRestoredBindMountedFile(t *testing.T) {
	ta, workdir, _ := newLifecycleAgent(t)
	src, target := filepath.Join(t.TempDir(), "hosts"), filepath.Join(workdir, "hosts")
	for _, p := range []string{src, target} {
		if err := os.WriteFile(p, []byte("old content that is longer\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount a file here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	req := api.AgentRestoredRequest{MachineID: "m-new", Hostname: hostname(t), Token: "new-token",
		Files: map[string]string{target: "new\n"}}
	if _, err := ta.c.Restored(t.Context(), req); err != nil {
		t.Fatalf("Restored: %v", err)
	}
	ta.c.SetToken(req.Token)
	for _, p := range []string{target, src} {
		if b, err := os.ReadFile(p); err != nil || string(b) != "new\n" {
			t.Errorf("%s: got %q, %v, want %q", p, b, err, "new\n")
		}
	}
	entries, err := os.ReadDir(workdir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "hosts" {
			t.Errorf("left behind %s, want no temp file", e.Name())
		}
	}
}

// TestStop: a stop sends SIGTERM, waits out the grace for what ignores it,
// then kills it; it reports how the running commands ended and forgets
// every command, so a main process can start again.
func TestStop(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	main, err := ta.c.StartMain(ctx, []string{"/bin/sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.c.StartMain(ctx, []string{"/bin/true"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second main process while one runs: %v, want a conflict", err)
	}
	stubborn, err := ta.c.Start(ctx, api.RunCommandRequest{Shell: "trap '' TERM; while :; do sleep 0.05; done", Background: true})
	if err != nil {
		t.Fatal(err)
	}
	done, err := ta.c.Run(ctx, api.RunCommandRequest{Shell: "true"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the shells set their traps

	waited := make(chan api.MainExit, 1)
	go func() {
		exit, err := ta.c.Wait(context.Background(), main.PID)
		if err != nil {
			t.Errorf("wait for the main process: %v", err)
		}
		waited <- exit
	}()
	t0 := time.Now()
	res, err := ta.c.Stop(ctx, api.AgentStopRequest{GraceMS: 300})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < 300*time.Millisecond {
		t.Errorf("stop took %v: it did not wait out the grace for the command that ignores SIGTERM", took)
	}
	if res.Ended != 2 || !res.Killed || res.Main == nil || res.Main.ExitCode != 7 || res.Main.Signal != "" {
		t.Fatalf("stop result %+v: want 2 running commands ended (the exited pid %d is not counted), one of them (pid %d) killed, and main exit 7",
			res, done.PID, stubborn.PID)
	}
	select {
	case exit := <-waited:
		if exit.ExitCode != 7 || exit.At.IsZero() {
			t.Fatalf("wait = %+v, want exit code 7 and a time", exit)
		}
	case <-time.After(patience):
		t.Fatal("wait did not return when the stop ended the main process")
	}
	list, err := ta.c.ListProcesses(ctx)
	if err != nil || len(list.Processes) != 0 {
		t.Fatalf("processes after a stop: %+v, %v; want none", list.Processes, err)
	}
	again, err := ta.c.StartMain(ctx, []string{"/bin/sh", "-c", "exit 3"})
	if err != nil {
		t.Fatalf("main process after a stop: %v", err)
	}
	if exit, err := ta.c.Wait(ctx, again.PID); err != nil || exit.ExitCode != 3 {
		t.Fatalf("wait = %+v, %v", exit, err)
	}
	// A main process that exited before the stop is reported too.
	if res, err := ta.c.Stop(ctx, api.AgentStopRequest{}); err != nil || res.Main == nil || res.Main.ExitCode != 3 || res.Ended != 0 {
		t.Fatalf("stop after the main process exited = %+v, %v; want main exit code 3 and nothing ended", res, err)
	}
	if _, err := ta.c.Stop(ctx, api.AgentStopRequest{GraceMS: -1}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("negative grace: %v", err)
	}
}

// TestMainOutlivesEviction: the main process's record stays after it
// exits, however many commands exit after it, so wait can always answer.
func TestMainOutlivesEviction(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	main, err := ta.c.StartMain(ctx, []string{"/bin/sh", "-c", "exit 5"})
	if err != nil {
		t.Fatal(err)
	}
	if exit, err := ta.c.Wait(ctx, main.PID); err != nil || exit.ExitCode != 5 {
		t.Fatalf("wait = %+v, %v", exit, err)
	}
	for range 70 { // more than the agent keeps
		if _, err := ta.c.Run(ctx, api.RunCommandRequest{Cmd: []string{"/bin/true"}}); err != nil {
			t.Fatal(err)
		}
	}
	if exit, err := ta.c.Wait(ctx, main.PID); err != nil || exit.ExitCode != 5 {
		t.Fatalf("wait after 70 more commands = %+v, %v; want exit code 5", exit, err)
	}
}
