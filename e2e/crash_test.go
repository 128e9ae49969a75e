package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/faults"
)

// TestCrashDuringLifecycle kills the server with SIGKILL in the middle of a
// pause, a snapshot, a resume, a stop and a start (at the points named in
// internal/faults), restarts it on the same data dir, and checks that every
// machine is in exactly one consistent state: running with its files, or
// paused or stopped with a complete snapshot that resumes or starts; and
// that nothing half-made is left.
func TestCrashDuringLifecycle(t *testing.T) {
	pauseOp := func(c *client.Client, id string) error { _, err := c.Pause(context.Background(), id); return err }
	snapOp := func(c *client.Client, id string) error {
		_, err := c.CreateSnapshot(context.Background(), id)
		return err
	}
	connectOp := func(c *client.Client, id string) error { _, err := c.Connect(context.Background(), id); return err }
	stopOp := func(c *client.Client, id string) error { _, err := c.Stop(context.Background(), id, nil); return err }
	startOp := func(c *client.Client, id string) error { _, err := c.Start(context.Background(), id); return err }
	// A request to the machine's URL on the child's edge wakes it.
	edgeOp := func(c *client.Client, id string) error {
		u, err := c.MachineURL(context.Background(), id, 8080, 0)
		if err != nil {
			return nil // not the crash: the test fails
		}
		resp, err := edgeClient.Get(u.URL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	for _, tc := range []struct {
		point        string
		pausedFirst  bool
		stoppedFirst bool
		autoResume   bool
		op           func(*client.Client, string) error
		want         string
	}{
		{point: "pause.checkpointed", op: pauseOp, want: api.StateRunning},
		{point: "pause.committed", op: pauseOp, want: api.StatePaused},
		{point: "snapshot.checkpointed", op: snapOp, want: api.StateRunning},
		{point: "snapshot.committed", op: snapOp, want: api.StateRunning},
		{point: "restore.restored", pausedFirst: true, op: connectOp, want: api.StatePaused},
		{point: "restore.restored", pausedFirst: true, autoResume: true, op: edgeOp, want: api.StatePaused},
		{point: "stop.checkpointed", op: stopOp, want: api.StateRunning},
		{point: "stop.committed", op: stopOp, want: api.StateStopped},
		{point: "restore.restored", stoppedFirst: true, op: startOp, want: api.StateStopped},
	} {
		name := tc.point
		if tc.stoppedFirst {
			name += "/start"
		}
		if tc.autoResume {
			name += "/edge"
		}
		t.Run(name, func(t *testing.T) {
			req := api.CreateMachineRequest{Template: "minimal"}
			if tc.autoResume {
				req.OnTimeout, req.AutoResume = api.TimeoutPause, true
			}
			m := newMachine(t, req)
			run(t, m.ID, "echo kept > /root/keep.txt")
			if tc.pausedFirst {
				pause(t, m.ID)
			}
			if tc.stoppedFirst {
				stopMachine(t, m.ID, 0)
			}
			crashServerDuring(t, tc.point, func(c *client.Client) error { return tc.op(c, m.ID) })

			info := getMachine(t, m.ID)
			if info.State != tc.want {
				t.Fatalf("after the crash at %s and a restart: state %s, want %s", tc.point, info.State, tc.want)
			}
			cur := m.ID
			if info.State == api.StateStopped {
				disks, err := env.client.ListSnapshots(t.Context(), m.ID, api.SnapshotDisk)
				if err != nil || len(disks) != 1 || disks[0].ID != info.SnapshotID {
					t.Fatalf("stopped machine's disk %s is not committed: %v %v", info.SnapshotID, disks, err)
				}
				if _, err := env.client.Start(t.Context(), m.ID); err != nil {
					t.Fatalf("start after the crash: %v", err)
				}
			}
			if info.State == api.StatePaused {
				snaps, err := env.client.ListSnapshots(t.Context(), m.ID, "")
				if err != nil || len(snaps) == 0 || snaps[len(snaps)-1].ID != info.SnapshotID {
					t.Fatalf("paused machine's snapshot %s is not committed: %v %v", info.SnapshotID, snaps, err)
				}
				if tc.autoResume {
					// The restarted server's edge wakes it (nothing listens
					// on the port: the edge says so once it is awake).
					resp, b := edgeGet(t, edgeURL(t, m.ID, 8080).URL)
					wantEdgeError(t, resp, b, 502, "port_not_listening")
					cur = getMachine(t, m.ID).LatestID
				} else {
					r, err := env.client.Connect(t.Context(), m.ID)
					if err != nil {
						t.Fatalf("resume after the crash: %v", err)
					}
					cur = r.ID
				}
				t.Cleanup(func() { env.client.KillMachine(context.Background(), cur) })
			}
			if got := run(t, cur, "cat /root/keep.txt"); got != "kept\n" {
				t.Fatalf("file after the crash = %q", got)
			}
			assertNoLeftovers(t)
		})
	}
}

// crashServerDuring stops the shared server, runs a child server that
// SIGKILLs itself at point, calls op against it, and starts the shared
// server again on the same data dir.
func crashServerDuring(t *testing.T, point string, op func(*client.Client) error) {
	t.Helper()
	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatalf("stop server: %v", err)
	}
	defer func() {
		if err := restartServer(); err != nil {
			t.Fatalf("restart server after the crash: %v", err)
		}
	}()
	addr := freeAddr(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveAddrEnv+"="+addr, edgeAddrEnv+"="+freeAddr(t), "NULLSPACE_E2E_DATA_DIR="+env.cfg.DataDir,
		"NULLSPACE_E2E_LOG="+env.logFile, faults.Env+"="+point)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	c := client.New("http://"+addr, env.key)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := c.Health(context.Background()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("child server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := op(c); err == nil {
		cmd.Process.Kill()
		<-done
		t.Fatalf("the call succeeded: the server did not crash at %s", point)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("child server ended with %v, want SIGKILL at %s", err, point)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("child server still running after the call")
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDiskFullDuringPause: a pause that cannot write its checkpoint fails
// with a clear error, and the machine keeps running with its processes and
// files; nothing of the snapshot remains.
func TestDiskFullDuringPause(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	startCounter(t, m.ID)
	run(t, m.ID, "head -c 3000000 /dev/urandom > /root/big && echo kept > /root/keep.txt")
	dir := filepath.Join(env.cfg.DataDir, "snapshots")
	// A 1 MiB filesystem over the snapshot store: the checkpoint cannot fit.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "nse2e-full", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	_, err := env.client.Pause(t.Context(), m.ID)
	// Lazily: the sandbox keeps the failed image file open (gVisor does not
	// close it when a checkpoint fails) until the machine stops.
	if out, uerr := exec.Command("umount", "-l", dir).CombinedOutput(); uerr != nil {
		t.Fatalf("umount: %v: %s", uerr, out)
	}
	wantCode(t, err, "resource_exhausted")
	if info := getMachine(t, m.ID); info.State != api.StateRunning {
		t.Fatalf("state after a failed pause = %s", info.State)
	}
	before := readCount(t, m.ID)
	time.Sleep(200 * time.Millisecond)
	if after := readCount(t, m.ID); after <= before {
		t.Fatalf("counter stopped after the failed pause: %d then %d", before, after)
	}
	if got := run(t, m.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after the failed pause = %q", got)
	}
	// With room again, the pause works.
	pause(t, m.ID)
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	assertNoLeftovers(t)
}

// TestSnapshotIncompatible: a server whose runsc differs from the one that
// wrote a snapshot refuses to restore it, saying which part differs, and
// never boots the machine fresh instead.
func TestSnapshotIncompatible(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	run(t, m.ID, "echo kept > /root/keep.txt")
	pause(t, m.ID)

	// The same binary under another version: what the server sees after an
	// upgrade of runsc.
	other := filepath.Join(t.TempDir(), "runsc")
	real, err := filepath.EvalSymlinks(env.cfg.Runsc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(real, other); err != nil {
		if out, err := exec.Command("cp", real, other).CombinedOutput(); err != nil {
			t.Fatalf("copy runsc: %v: %s", err, out)
		}
	}
	if err := os.WriteFile(other+".version", []byte("v0.0.0-other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	restartWith := func(runsc string) {
		t.Helper()
		if err := env.inst.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		env.cfg.Runsc = runsc
		if err := restartServer(); err != nil {
			t.Fatalf("restart with runsc %s: %v", runsc, err)
		}
	}
	orig := env.cfg.Runsc
	restartWith(other)
	defer func() {
		if env.cfg.Runsc != orig {
			restartWith(orig)
		}
	}()

	before, _ := env.client.ListMachines(t.Context(), client.ListOptions{})
	_, err = env.client.Connect(t.Context(), m.ID)
	wantCode(t, err, "snapshot_incompatible")
	var ae *client.APIError
	if errors.As(err, &ae) && !strings.Contains(ae.Message, "runsc version") {
		t.Fatalf("incompatibility message %q does not name the runsc version", ae.Message)
	}
	after, _ := env.client.ListMachines(t.Context(), client.ListOptions{})
	if len(after) != len(before) || getMachine(t, m.ID).State != api.StatePaused {
		t.Fatalf("a refused restore changed the machines: %d before, %d after", len(before), len(after))
	}
	restartWith(orig)
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("resume on the matching runsc: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if got := run(t, r.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file = %q", got)
	}
}

// TestCrashDuringPrune: the server SIGKILLed while a pause prunes the
// history (its oldest state marked, its files not yet removed) restarts
// with the pause committed, the pruned state neither listed nor
// restorable, its files swept, and the newest state resumable.
func TestCrashDuringPrune(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CheckpointRetention: ptr(1)})
	killLineage(t, m.ID)
	run(t, m.ID, "echo kept > /root/keep.txt")
	old := pause(t, m.ID)
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	crashServerDuring(t, "prune.marked", func(c *client.Client) error {
		_, err := c.Pause(context.Background(), r.ID)
		return err
	})
	if s := getMachine(t, r.ID).State; s != api.StatePaused {
		t.Fatalf("after the crash: %s, want paused (the pause committed before the prune)", s)
	}
	hist, err := env.client.Checkpoints(t.Context(), m.ID)
	if err != nil || len(hist) != 1 || hist[0].ID == old.ID {
		t.Fatalf("history after the crash: %+v %v, want only the newest state", hist, err)
	}
	_, err = env.client.RestoreCheckpoint(t.Context(), m.ID, old.ID)
	wantCode(t, err, "snapshot_not_found")
	if s := snapshotDirsMatch(t); s != "" {
		t.Fatalf("snapshot store after the crash: %s", s)
	}
	again, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, again.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after the crash = %q", got)
	}
	assertNoLeftovers(t)
}
