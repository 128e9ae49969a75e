package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestBadCreate checks that bad create requests fail with a clear, typed
// error and leave nothing behind.
func TestBadCreate(t *testing.T) {
	tests := []struct {
		name string
		req  api.CreateMachineRequest
		code string
	}{
		{"unknown template", api.CreateMachineRequest{Template: "no-such-template"}, "template_not_found"},
		{"too many cpus", api.CreateMachineRequest{Template: "minimal", CPUCount: 4096}, "invalid_argument"},
		{"negative cpus", api.CreateMachineRequest{Template: "minimal", CPUCount: -1}, "invalid_argument"},
		{"too much memory", api.CreateMachineRequest{Template: "minimal", MemoryMB: 1 << 30}, "invalid_argument"},
		{"too little memory", api.CreateMachineRequest{Template: "minimal", MemoryMB: 8}, "invalid_argument"},
		{"bad env name", api.CreateMachineRequest{Template: "minimal", Env: map[string]string{"1X": "y"}}, "invalid_argument"},
		{"internet not allowed", api.CreateMachineRequest{Template: "minimal", AllowInternet: true}, "internet_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := env.client.CreateMachine(t.Context(), tt.req)
			wantCode(t, err, tt.code)
		})
	}
	assertNoLeftovers(t)
}

// TestBadRequests covers bad command and file calls and unknown machines.
func TestBadRequests(t *testing.T) {
	ctx := t.Context()
	c := env.client
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	run(t, m.ID, "mkdir -p /workspace/dir && echo x > /workspace/dir/f")

	tests := []struct {
		name string
		call func() error
		code string
	}{
		{"command not found", func() error {
			_, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{Cmd: []string{"no-such-command"}})
			return err
		}, "command_not_found"},
		{"neither cmd nor shell", func() error {
			_, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{})
			return err
		}, "invalid_argument"},
		{"unknown user", func() error {
			_, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{Cmd: []string{"true"}, User: "nobody-here"})
			return err
		}, "invalid_argument"},
		{"unknown pid", func() error { return c.Signal(ctx, m.ID, 999999, "TERM") }, "process_not_found"},
		{"relative path", func() error { _, err := c.ReadFileBytes(ctx, m.ID, "etc/passwd"); return err }, "invalid_argument"},
		{"path into the agent's mount", func() error {
			_, err := c.WriteFileBytes(ctx, m.ID, "/.nullspace/x", []byte("x"), 0)
			return err
		}, "permission_denied"},
		{"missing file", func() error { _, err := c.ReadFileBytes(ctx, m.ID, "/workspace/nope"); return err }, "file_not_found"},
		{"read a directory", func() error { _, err := c.ReadFileBytes(ctx, m.ID, "/workspace/dir"); return err }, "is_a_directory"},
		{"remove non-empty dir", func() error { return c.Remove(ctx, m.ID, "/workspace/dir", false) }, "directory_not_empty"},
		{"file too large", func() error {
			_, err := c.WriteFileBytes(ctx, m.ID, "/workspace/big", make([]byte, testMaxFileBytes+1), 0)
			return err
		}, "file_too_large"},
		{"unknown machine", func() error { _, err := c.GetMachine(ctx, "mch_00000000000000000000"); return err }, "machine_not_found"},
		{"command in unknown machine", func() error {
			_, err := c.RunCommand(ctx, "mch_00000000000000000000", api.RunCommandRequest{Cmd: []string{"true"}})
			return err
		}, "machine_not_found"},
		{"bad state filter", func() error {
			_, err := c.ListMachines(ctx, client.ListOptions{State: "sleeping"})
			return err
		}, "invalid_argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.call(), tt.code) })
	}
	// The oversize upload left nothing, and a failed upload never clobbers.
	if _, err := c.Stat(ctx, m.ID, "/workspace/big"); !client.IsCode(err, "file_not_found") {
		t.Errorf("stat after oversize upload: %v, want file_not_found", err)
	}
	// A command that outlives its timeout is killed and reported.
	res, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{Cmd: []string{"sleep", "30"}, TimeoutMS: 300})
	if err != nil || !res.TimedOut {
		t.Fatalf("timed command: %+v, %v; want timed_out", res, err)
	}
}

// TestAuth checks that the API refuses requests without a valid key with the
// standard error body, and serves health without one.
func TestAuth(t *testing.T) {
	base := "http://" + env.inst.Addr
	tests := []struct {
		name, path, auth string
		status           int
	}{
		{"no key", "/v1/machines", "", 401},
		{"wrong key", "/v1/machines", "Bearer ns_wrong", 401},
		{"not bearer", "/v1/machines", "Basic " + env.key, 401},
		{"valid key", "/v1/machines", "Bearer " + env.key, 200},
		{"health needs no key", "/v1/health", "", 200},
		{"spec needs no key", "/v1/openapi.yaml", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", base+tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == 401 {
				var e api.Error
				if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Code != "unauthenticated" || e.SuggestedAction == "" {
					t.Fatalf("401 body = %+v, %v; want code unauthenticated with a suggested action", e, err)
				}
			}
		})
	}
	// The key file is private to root.
	if fi, err := statMode(env.inst.APIKeyFile); err != nil || fi != 0o600 {
		t.Errorf("api key file mode %o, %v; want 0600", fi, err)
	}
}

// TestUnknownJSONField checks that a typo in a request body is refused.
func TestUnknownJSONField(t *testing.T) {
	body := []byte(`{"template":"minimal","cpus":2}`)
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://"+env.inst.Addr+"/v1/machines", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+env.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(b), "cpus") {
		t.Fatalf("got %d %s, want 400 naming the unknown field", resp.StatusCode, b)
	}
	assertNoLeftovers(t)
}

// TestAgentCrash kills a machine's init (the agent) from outside: the next
// call reports machine_not_running, the machine is failed with a reason, and
// its resources are freed.
func TestAgentCrash(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	cid := containerOf(t, m.ID)
	out, err := exec.Command(runscPath(), "--root="+filepath.Join(env.cfg.DataDir, "runsc"), "kill", cid, "KILL").CombinedOutput()
	if err != nil {
		t.Fatalf("runsc kill: %v: %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := env.client.RunCommand(ctx, m.ID, api.RunCommandRequest{Cmd: []string{"true"}})
		if client.IsCode(err, "machine_not_running") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("command after agent crash: %v, want machine_not_running", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	info, err := env.client.GetMachine(ctx, m.ID)
	if err != nil || info.State != api.StateFailed || info.Error == "" {
		t.Fatalf("after crash: %+v, %v; want state failed with an error", info, err)
	}
	if _, err := env.client.KillMachine(ctx, m.ID); err != nil {
		t.Fatalf("kill failed machine: %v", err)
	}
	assertNoLeftovers(t)
}

// TestServerRestart stops the server with machines running: they keep
// running, and the next server adopts them and removes leftovers that no
// machine owns.
func TestServerRestart(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	pid, err := env.client.StartCommand(ctx, m.ID, api.RunCommandRequest{Shell: "while true; do echo tick; sleep 0.2; done"})
	if err != nil {
		t.Fatal(err)
	}
	cid := containerOf(t, m.ID)
	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			restartServer()
		}
	})
	// While the server is down the machine keeps running.
	st, err := exec.Command(runscPath(), "--root="+filepath.Join(env.cfg.DataDir, "runsc"), "state", cid).Output()
	if err != nil || !strings.Contains(string(st), `"running"`) {
		t.Fatalf("machine after server shutdown: %s, %v; want running", st, err)
	}
	// Leave an orphan network namespace, as a crash mid-create would.
	orphan := "/run/netns/" + testNames.NetnsPrefix + "4000"
	if out, err := exec.Command("ip", "netns", "add", filepath.Base(orphan)).CombinedOutput(); err != nil {
		t.Fatalf("make orphan netns: %v: %s", err, out)
	}
	// And an orphan cgroup, as a crash between a sandbox's death and its
	// deletion would.
	orphanCgroup := "/sys/fs/cgroup/memory" + testNames.CgroupParent + "/ns000000000000000000000000"
	if err := os.MkdirAll(orphanCgroup, 0o755); err != nil {
		t.Fatalf("make orphan cgroup: %v", err)
	}
	if err := restartServer(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	restarted = true
	if _, err := os.Stat(orphanCgroup); err == nil {
		t.Errorf("orphan cgroup %s survived the restart", orphanCgroup)
	}
	procs, err := env.client.ListProcesses(ctx, m.ID)
	if err != nil || !hasRunning(procs, pid) {
		t.Fatalf("after restart: processes %+v, %v; want pid %d running", procs, err, pid)
	}
	if out := run(t, m.ID, "echo still here"); out != "still here\n" {
		t.Fatalf("command after restart: %q", out)
	}
	if _, err := statMode(orphan); err == nil {
		t.Errorf("orphan netns %s survived the restart", orphan)
	}
	assertNoLeftovers(t)
}
