package e2e

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/netns"
	"nullspace.dev/nullspace/internal/store"
)

// sparesOf returns the server's idle spares made for template's machines.
func sparesOf(template string) []store.Spare {
	var out []store.Spare
	for _, s := range env.inst.Manager.Spares() {
		var shape struct{ Template string }
		if json.Unmarshal([]byte(s.Shape), &shape) == nil && shape.Template == template {
			out = append(out, s)
		}
	}
	return out
}

// waitSpares waits until the server holds spares of template and returns
// them.
func waitSpares(t *testing.T, template string) []store.Spare {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if sp := sparesOf(template); len(sp) > 0 {
			return sp
		}
		if time.Now().After(deadline) {
			t.Fatalf("server holds spares %+v, none of template %s", env.inst.Manager.Spares(), template)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func spareIDs(sp []store.Spare) []string {
	var ids []string
	for _, s := range sp {
		ids = append(ids, s.MachineID)
	}
	return ids
}

// TestResumeIntoSpare: after a pause the server creates spare containers of
// the paused machine's shape, and the resume restores into one (the new
// execution gets the spare's id, address and hostname) with its memory and
// files whole. A spare whose sandbox died is discarded and the resume
// restores into a fresh container instead.
func TestResumeIntoSpare(t *testing.T) {
	// Only this test's machine and snapshots may decide which spares the
	// server keeps.
	killAll()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	startCounter(t, m.ID)
	run(t, m.ID, "echo kept > /root/keep.txt")
	pause(t, m.ID)
	spares := waitSpares(t, "minimal")

	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if !slices.Contains(spareIDs(spares), r.ID) {
		t.Fatalf("resumed as %s, not into a spare (spares %v)", r.ID, spareIDs(spares))
	}
	if got := run(t, r.ID, "cat /root/keep.txt; hostname"); got != "kept\n"+strings.ReplaceAll(r.ID, "_", "-")+"\n" {
		t.Fatalf("file and hostname after resume into a spare = %q", got)
	}
	before := readCount(t, r.ID)
	time.Sleep(200 * time.Millisecond)
	if after := readCount(t, r.ID); after <= before {
		t.Fatalf("counter stopped after resume into a spare: %d then %d", before, after)
	}
	// It took the spare's network slot (and answered there just now).
	pool, err := netns.NewPool(testCIDR)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(spares, func(s store.Spare) bool { return s.MachineID == r.ID })
	if _, guest, _ := pool.Addrs(spares[i].Slot); getMachine(t, r.ID).IP != guest.String() {
		t.Fatalf("resumed machine's address %s is not its spare's %s", getMachine(t, r.ID).IP, guest)
	}

	// Kill every spare's sandbox: the next resume must notice and restore
	// into a fresh container.
	pause(t, r.ID)
	spares = waitSpares(t, "minimal")
	for _, sp := range spares {
		killCgroup(t, sp.ContainerID)
	}
	r2, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("resume with dead spares: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r2.ID) })
	if slices.Contains(spareIDs(spares), r2.ID) {
		t.Fatalf("resumed into dead spare %s", r2.ID)
	}
	if got := run(t, r2.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after resume past dead spares = %q", got)
	}

	if _, err := env.client.KillMachine(t.Context(), r2.ID); err != nil {
		t.Fatal(err)
	}
	// The spares stay (the shape was used a moment ago) and hold exactly
	// their own host objects.
	assertNoLeftovers(t)
}

// killCgroup SIGKILLs the processes of a container the test server made
// (its sandbox and gofer), found through the container's cgroup.
func killCgroup(t *testing.T, containerID string) {
	t.Helper()
	b, err := os.ReadFile("/sys/fs/cgroup/pids" + testNames.CgroupParent + "/" + containerID + "/cgroup.procs")
	if err != nil {
		t.Fatalf("spare's cgroup: %v", err)
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
