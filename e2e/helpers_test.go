package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// newMachine creates a machine and kills it when the test ends.
func newMachine(t *testing.T, req api.CreateMachineRequest) *api.Machine {
	t.Helper()
	m, err := env.client.CreateMachine(t.Context(), req)
	if err != nil {
		t.Fatalf("create machine %+v: %v", req, err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), m.ID) })
	if m.State != api.StateRunning {
		t.Fatalf("new machine state = %q, want running", m.State)
	}
	return m
}

// run runs a shell command in a machine and fails the test unless it exits 0.
func run(t *testing.T, id, shell string) string {
	t.Helper()
	res, err := env.client.RunCommand(t.Context(), id, api.RunCommandRequest{Shell: shell})
	if err != nil {
		t.Fatalf("run %q: %v", shell, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run %q: exit %d, stdout %q, stderr %q", shell, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res.Stdout
}

// wantCode fails unless err is an API error with the given code.
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", code)
	}
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("got %v (%T), want API error %s", err, err, code)
	}
	if ae.Code != code {
		t.Fatalf("got error code %q (%v), want %q", ae.Code, err, code)
	}
	if ae.Message == "" {
		t.Errorf("error %s has no message", code)
	}
}

// hostObjects lists what the test server has made on the host.
type hostObjects struct {
	netns, veths, cgroups, containers, dirs []string
}

func listHost(t *testing.T) hostObjects {
	t.Helper()
	var h hostObjects
	h.netns = globBase("/run/netns/" + testNames.NetnsPrefix + "*")
	h.veths = globBase("/sys/class/net/" + testNames.VethPrefix + "*")
	h.cgroups = dirsIn("/sys/fs/cgroup/memory" + testNames.CgroupParent)
	h.dirs = dirsIn(filepath.Join(env.cfg.DataDir, "machines"))
	out, err := exec.Command(runscPath(), "--root="+filepath.Join(env.cfg.DataDir, "runsc"), "list", "--quiet").Output()
	if err != nil {
		t.Fatalf("runsc list: %v", err)
	}
	h.containers = strings.Fields(string(out))
	return h
}

func globBase(pattern string) []string {
	ms, _ := filepath.Glob(pattern)
	for i := range ms {
		ms[i] = filepath.Base(ms[i])
	}
	sort.Strings(ms)
	return ms
}

func dirsIn(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// assertNoLeftovers checks that the host holds exactly one of each object per
// live machine: no netns, veth, cgroup, container or directory is left behind
// by killed machines or failed operations. It waits a little for kills that
// are still finishing in other goroutines.
func assertNoLeftovers(t *testing.T) {
	t.Helper()
	var h hostObjects
	var live int
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms, err := env.client.ListMachines(context.Background(), client.ListOptions{})
		if err != nil {
			t.Fatalf("list machines: %v", err)
		}
		live = 0
		for _, m := range ms {
			// Failed, paused and stopped machines hold nothing on the host.
			if m.State != api.StateFailed && m.State != api.StatePaused && m.State != api.StateStopped {
				live++
			}
		}
		// Spares (containers created ahead of restores) hold host objects
		// like live machines.
		live += len(env.inst.Manager.Spares())
		h = listHost(t)
		if len(h.netns) == live && len(h.veths) == live && len(h.cgroups) == live &&
			len(h.containers) == live && len(h.dirs) == live && snapshotDirsMatch(t) == "" {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("host objects do not match %d live machines: netns %v, veths %v, cgroups %v, containers %v, dirs %v; snapshots: %s",
		live, h.netns, h.veths, h.cgroups, h.containers, h.dirs, snapshotDirsMatch(t))
}

// snapshotDirsMatch says how the snapshot store's directories differ from
// the committed snapshots the API lists ("" when they match): no temporary
// directory and no orphan may remain.
func snapshotDirsMatch(t *testing.T) string {
	t.Helper()
	snaps, err := env.client.ListSnapshots(context.Background(), "", "")
	if err != nil {
		return err.Error()
	}
	want := map[string]bool{}
	for _, s := range snaps {
		want[s.ID] = true
	}
	got := dirsIn(filepath.Join(env.cfg.DataDir, "snapshots"))
	if len(got) != len(want) {
		return fmt.Sprintf("dirs %v, committed %d", got, len(want))
	}
	for _, d := range got {
		if !want[d] {
			return fmt.Sprintf("dir %s is not a committed snapshot", d)
		}
	}
	return ""
}

// containerOf returns the runsc container id of a machine.
func containerOf(t *testing.T, id string) string {
	t.Helper()
	rec, err := env.inst.Manager.Record(context.Background(), id)
	if err != nil {
		t.Fatalf("machine record %s: %v", id, err)
	}
	return rec.ContainerID
}

func statMode(path string) (os.FileMode, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Mode().Perm(), nil
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// copyTree copies a directory tree with cp -a (modes, owners, links).
func copyTree(src, dst string) error {
	if out, err := execOut("cp", "-a", src, dst); err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
	return nil
}
