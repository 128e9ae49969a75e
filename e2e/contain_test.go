package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// The machines of these tests have 512 MiB.
const containMemoryMB = 512

// TestContainForkBomb: a fork bomb run as the template's user (uid 1000)
// is held by the machine's process limit; the machine survives it and
// answers commands afterwards. (Before, the bomb's host stub processes
// filled the sandbox's cgroup and the host OOM-killed the sandbox in ~2 s.)
func TestContainForkBomb(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "base", MemoryMB: containMemoryMB})
	logAgentKills(t, m.ID)
	start := time.Now()
	res, err := env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{
		User: "user", Shell: "bash -c ':(){ :|:& };:'; sleep 4", TimeoutMS: 8000,
	})
	if err != nil {
		t.Fatalf("fork bomb: %v", err)
	}
	t.Logf("fork bomb: %v, exit %d signal %q", time.Since(start).Round(time.Millisecond), res.ExitCode, res.Signal)
	// The bomb's processes outlive its shell: the user ends them all.
	start = time.Now()
	r, err := env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{User: "user", Shell: "kill -KILL -1", TimeoutMS: 20000})
	t.Logf("kill -KILL -1 as user: %v, %v %+v", time.Since(start).Round(time.Millisecond), err, r)
	assertAlive(t, m.ID)
}

// TestContainMemoryHog: a process run as uid 1000 that allocates past the
// machine's memory is killed inside the machine (by the agent's OOM
// watcher) and the machine survives. (Before, the host's OOM killer killed
// the sandbox and the machine failed.)
func TestContainMemoryHog(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "base", MemoryMB: containMemoryMB})
	logAgentKills(t, m.ID)
	run(t, m.ID, "echo kept > /tmp/state") // state the machine must not lose
	hog := "import time\na=[]\nwhile True:\n    a.append(b'x' * (16 << 20))\n"
	start := time.Now()
	res, err := env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{
		User: "user", Cmd: []string{"python3", "-c", hog}, TimeoutMS: 20000,
	})
	if err != nil {
		t.Fatalf("memory hog: %v (the machine: %s)", err, machineState(t, m.ID))
	}
	t.Logf("memory hog ended after %v: exit %d signal %q", time.Since(start).Round(time.Millisecond), res.ExitCode, res.Signal)
	if res.Signal != "SIGKILL" || res.TimedOut {
		t.Errorf("memory hog ended with exit %d signal %q timed out %v, want killed by SIGKILL", res.ExitCode, res.Signal, res.TimedOut)
	}
	assertAlive(t, m.ID)
	if got := strings.TrimSpace(run(t, m.ID, "cat /tmp/state")); got != "kept" {
		t.Errorf("/tmp/state = %q after the hog, want kept", got)
	}
}

// TestContainRootForkBomb: root is not held by the process limit, and a
// root fork bomb still kills the sandbox; the machine then says why
// (failed, reason pids or oom, in its error and its machine.failed event)
// and names its last checkpoint.
func TestContainRootForkBomb(t *testing.T) {
	after := lastSeq(t)
	m := newMachine(t, api.CreateMachineRequest{Template: "base", MemoryMB: containMemoryMB})
	cp, err := env.client.Checkpoint(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{
		Shell: "bash -c ':(){ :|:& };:'; sleep 20", TimeoutMS: 25000,
	})
	var got *api.Machine
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if got, err = env.client.GetMachine(t.Context(), m.ID); err == nil && got.State == api.StateFailed {
			break
		}
	}
	if got == nil || got.State != api.StateFailed {
		t.Logf("the root fork bomb did not kill the machine (%s)", machineState(t, m.ID))
		assertAlive(t, m.ID)
		return
	}
	t.Logf("failed machine's error: %s", got.Error)
	if !strings.Contains(got.Error, "out of memory") && !strings.Contains(got.Error, "pids limit") {
		t.Errorf("error %q does not say out of memory or pids limit", got.Error)
	}
	if !strings.Contains(got.Error, cp.ID) {
		t.Errorf("error %q does not name the last checkpoint %s", got.Error, cp.ID)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{After: after, MachineID: m.ID, Types: []string{api.EventMachineFailed}})
	if err != nil || len(evs) != 1 {
		t.Fatalf("machine.failed events: %v, %v; want one", evs, err)
	}
	if r := evs[0].Details["reason"]; r != api.FailureOOM && r != api.FailurePids {
		t.Errorf("machine.failed reason = %v, want oom or pids (details %v)", r, evs[0].Details)
	}
	if got.FailureReason != api.FailureOOM && got.FailureReason != api.FailurePids {
		t.Errorf("failure_reason = %q, want oom or pids", got.FailureReason)
	}
	if evs[0].Details["last_checkpoint"] != cp.ID {
		t.Errorf("machine.failed last_checkpoint = %v, want %s", evs[0].Details["last_checkpoint"], cp.ID)
	}
	_, err = env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{Shell: "true"})
	wantCode(t, err, "machine_not_running")
}

// assertAlive fails unless the machine is running and runs a command, after
// the server's watch (every 2 s) had the time to notice a dead sandbox.
func assertAlive(t *testing.T, id string) {
	t.Helper()
	time.Sleep(2500 * time.Millisecond)
	if st := machineState(t, id); !strings.HasPrefix(st, api.StateRunning) {
		t.Fatalf("machine is %s, want running", st)
	}
	if out := strings.TrimSpace(run(t, id, "echo alive")); out != "alive" {
		t.Fatalf("echo alive printed %q", out)
	}
}

func machineState(t *testing.T, id string) string {
	got, err := env.client.GetMachine(t.Context(), id)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if got.Error != "" {
		return got.State + ": " + got.Error
	}
	return got.State
}

// logAgentKills logs, when the test ends, the processes the machine's agent
// killed for want of memory (from its console log).
func logAgentKills(t *testing.T, id string) {
	t.Cleanup(func() {
		logs, _ := filepath.Glob(filepath.Join(env.cfg.DataDir, "machines", "*", "console.log"))
		deeper, _ := filepath.Glob(filepath.Join(env.cfg.DataDir, "machines", "*", "*", "console.log"))
		logs = append(logs, deeper...)
		for _, p := range logs {
			b, _ := os.ReadFile(p)
			if !strings.Contains(p, id) {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "out of memory") || strings.Contains(line, "process_limit") {
					t.Logf("agent: %s", line)
				}
			}
		}
	})
}
