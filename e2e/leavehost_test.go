package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/mountinfo"
	"nullspace.dev/nullspace/internal/objstore/s3test"
	"nullspace.dev/nullspace/internal/server"
	"nullspace.dev/nullspace/internal/store/pgtest"
)

// TestStateLeavesHost: with PostgreSQL and an object store, a machine's
// whole state leaves the host that ran it. Server A creates a machine,
// writes a file, starts a process that holds a value in memory, takes a
// checkpoint and pauses; once both snapshots are durable, A stops and its
// data dir is deleted. Server B (a new data dir, the same database and
// bucket) resumes the machine by its original id: the file and the
// process's memory are there, and the lineage's snapshots, checkpoints and
// events are all listed; B makes a new machine of A's checkpoint, and two
// children of A's reusable snapshot.
func TestStateLeavesHost(t *testing.T) {
	ctx := t.Context()
	dbURL := pgtest.URL(t)
	bucket := s3test.Start(t)
	for _, kv := range bucket.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	root, err := os.MkdirTemp("/var/lib", "nullspace-e2e-leave-")
	if err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(env.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var a, b *twoServer
	var lineage string
	t.Cleanup(func() {
		for _, s := range []*twoServer{a, b} {
			if s != nil {
				if lineage != "" {
					s.client.KillMachine(context.Background(), lineage)
				}
				s.inst.Shutdown(context.Background())
			}
		}
		lf.Close()
		if err := mountinfo.UnmountUnder(root); err != nil {
			t.Error(err)
		}
		os.RemoveAll(root)
		removeNodeObjects(t, twoNodeA, twoCIDRA)
		removeNodeObjects(t, twoNodeB, twoCIDRB)
	})
	config := func(dir, node, cidr string) server.Config {
		cfg := twoConfig(filepath.Join(root, dir), node, cidr)
		cfg.DatabaseURL, cfg.ObjectStore = dbURL, bucket.URL
		return cfg
	}

	a = startTwo(t, lf, config("a", twoNodeA, twoCIDRA))
	key, err := os.ReadFile(a.inst.APIKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	m := a.newMachine(t)
	lineage = m.ID
	a.run(t, m.ID, "echo kept > /root/file")
	// The value lives only in the shell's memory; the loop writes it out.
	a.run(t, m.ID, `(x=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'); echo $x > /root/secret; `+
		`while true; do echo $x > /tmp/now.new; mv /tmp/now.new /tmp/now; sleep 0.1; done) >/dev/null 2>&1 &`)
	secret := a.run(t, m.ID, "sleep 0.3; cat /root/secret")
	cp, err := a.client.Checkpoint(ctx, m.ID)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	reusable, err := a.client.CreateSnapshot(ctx, m.ID)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	sn, err := a.client.Pause(ctx, m.ID)
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	for _, id := range []string{cp.ID, reusable.ID, sn.ID} {
		waitDurable(t, a.client, id)
	}
	if err := a.inst.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	a = nil
	if err := mountinfo.UnmountUnder(filepath.Join(root, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "a")); err != nil {
		t.Fatal(err)
	}

	// B makes no key of its own (the database has a team): A's works.
	b = startTwoKey(t, lf, config("b", twoNodeB, twoCIDRB), strings.TrimSpace(string(key)))
	resumed, err := b.client.Connect(ctx, m.ID)
	if err != nil {
		t.Fatalf("connect on B to the machine A paused: %v", err)
	}
	if resumed.LineageID != m.ID || resumed.State != api.StateRunning {
		t.Fatalf("resumed on B: %+v", resumed)
	}
	if got := b.run(t, resumed.ID, "cat /root/file"); got != "kept\n" {
		t.Fatalf("file on B: %q", got)
	}
	// The process runs on B with the value it held in memory on A.
	if got := b.run(t, resumed.ID, "rm -f /tmp/now; sleep 0.5; cat /tmp/now"); got != secret {
		t.Fatalf("the process's value on B: %q, want %q (written on A)", got, secret)
	}
	// A's snapshots, checkpoints and events are B's too.
	snaps, err := b.client.ListSnapshots(ctx, m.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	ids := func(ss []api.Snapshot) (out []string) {
		for _, s := range ss {
			out = append(out, s.ID)
		}
		return out
	}
	if got := ids(snaps); !slices.Contains(got, sn.ID) || !slices.Contains(got, cp.ID) {
		t.Fatalf("snapshots listed on B: %v, want %s and %s", got, sn.ID, cp.ID)
	}
	cps, err := b.client.Checkpoints(ctx, m.ID)
	if err != nil || !slices.Contains(ids(cps), cp.ID) {
		t.Fatalf("checkpoints listed on B: %v %v", ids(cps), err)
	}
	evs, err := b.client.ListEvents(ctx, client.EventQuery{MachineID: m.ID})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	for _, want := range []string{api.EventMachineCreated, api.EventMachinePaused, api.EventSnapshotDurable} {
		if !slices.Contains(types, want) {
			t.Fatalf("events of the machine on B: %v, want %s among them", types, want)
		}
	}
	// B makes a new machine of the checkpoint A took.
	back, err := b.client.CreateMachine(ctx, api.CreateMachineRequest{SnapshotID: cp.ID})
	if err != nil {
		t.Fatalf("a machine on B from A's checkpoint: %v", err)
	}
	t.Cleanup(func() { b.client.KillMachine(context.Background(), back.ID) })
	if got := b.run(t, back.ID, "cat /root/file /root/secret"); got != "kept\n"+secret {
		t.Fatalf("files of the checkpoint on B: %q", got)
	}
	// A snapshot B deletes leaves the object store too.
	manifest := filepath.Join(bucket.Root, bucket.Loc.Bucket, "snapshots", cp.ID, "manifest.json")
	if _, err := os.Stat(manifest); err != nil {
		t.Fatalf("the checkpoint's manifest in versitygw's directory: %v", err)
	}
	if err := b.client.DeleteSnapshot(ctx, cp.ID, true); err != nil { // its running child is unaffected
		t.Fatalf("delete A's checkpoint on B: %v", err)
	}
	if _, err := os.Stat(manifest); !os.IsNotExist(err) {
		t.Fatalf("the deleted checkpoint's manifest: %v, want it gone", err)
	}
	// Children of A's reusable snapshot, on B, run its process.
	for i := range 2 {
		child, err := b.client.CreateMachine(ctx, api.CreateMachineRequest{SnapshotID: reusable.ID})
		if err != nil {
			t.Fatalf("child %d of A's snapshot on B: %v", i, err)
		}
		t.Cleanup(func() { b.client.KillMachine(context.Background(), child.ID) })
		if got := b.run(t, child.ID, "rm -f /tmp/now; sleep 0.5; cat /tmp/now"); got != secret {
			t.Fatalf("child %d's process value: %q, want %q", i, got, secret)
		}
	}
}

// waitDurable waits for a snapshot's upload to the object store.
func waitDurable(t *testing.T, c *client.Client, id string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		sn, err := c.GetSnapshot(t.Context(), id)
		if err != nil {
			t.Fatalf("snapshot %s: %v", id, err)
		}
		if sn.Durable {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s not durable after 2 minutes", id)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
