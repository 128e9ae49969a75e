package machine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// fakeDriver records containers; Start fails when failStart is set.
type fakeDriver struct {
	mu         sync.Mutex
	containers map[string]runtime.Status
	failStart  error
	// checkpoint, if set, is called by Checkpoint (a hanging or failing
	// runsc).
	checkpoint func(ctx context.Context) error
	// restore, if set, is called by Restore (a hanging runsc restore).
	restore func(ctx context.Context) error
	// memory, if set, is what MemoryPressure reads (no limit otherwise).
	memory func(id string) (used, limit uint64)
	// specs are the specs containers were started, created or restored
	// with, by container id.
	specs map[string]runtime.Spec
}

func (d *fakeDriver) MemoryPressure(id string) (used, limit uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.memory == nil {
		return 0, 0, nil
	}
	used, limit = d.memory(id)
	return used, limit, nil
}

func (d *fakeDriver) Start(_ context.Context, s runtime.Spec) error {
	return d.add(s, runtime.StatusRunning)
}

func (d *fakeDriver) Create(_ context.Context, s runtime.Spec) error {
	return d.add(s, runtime.StatusCreated)
}

func (d *fakeDriver) add(s runtime.Spec, st runtime.Status) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failStart != nil {
		return d.failStart
	}
	d.containers[s.ID] = st
	if d.specs == nil {
		d.specs = map[string]runtime.Spec{}
	}
	d.specs[s.ID] = s
	return nil
}

// spec returns the spec a container was last given.
func (d *fakeDriver) spec(id string) runtime.Spec {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.specs[id]
}

func (d *fakeDriver) Delete(_ context.Context, id, dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.containers, id)
	return nil
}

func (d *fakeDriver) State(_ context.Context, id string) (runtime.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.containers[id]
	if !ok {
		return runtime.State{}, runtime.ErrNotExist
	}
	return runtime.State{ID: id, Status: st}, nil
}

func (d *fakeDriver) List(context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for id := range d.containers {
		ids = append(ids, id)
	}
	return ids, nil
}

func (d *fakeDriver) Freeze(_ context.Context, id string) error {
	return d.setStatus(id, runtime.StatusPaused)
}
func (d *fakeDriver) Thaw(_ context.Context, id string) error {
	return d.setStatus(id, runtime.StatusRunning)
}

func (d *fakeDriver) setStatus(id string, st runtime.Status) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.containers[id]; !ok {
		return runtime.ErrNotExist
	}
	d.containers[id] = st
	return nil
}

func (d *fakeDriver) Checkpoint(ctx context.Context, id, dir string) error {
	if d.checkpoint != nil {
		if err := d.checkpoint(ctx); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "checkpoint.img"), []byte(id), 0o600)
}

// Running answers from the recorded status, as the gvisor driver does
// from the container's cgroup.
func (d *fakeDriver) Running(id string) (running, known bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.containers[id]
	return ok && st != runtime.StatusStopped, true
}

func (d *fakeDriver) Restore(ctx context.Context, s runtime.Spec, _ string) error {
	if d.restore != nil {
		if err := d.restore(ctx); err != nil {
			return err
		}
	}
	return d.Start(ctx, s)
}

// fakeNetwork records set-up slots.
type fakeNetwork struct {
	mu    sync.Mutex
	slots map[int]bool
}

func (n *fakeNetwork) Setup(_ context.Context, slot int) (NetInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.slots[slot] = true
	return NetInfo{NetnsPath: "/nonexistent", HostIP: netip.MustParseAddr("127.0.0.1"), GuestIP: netip.MustParseAddr("127.0.0.1")}, nil
}

func (n *fakeNetwork) Teardown(_ context.Context, slot int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.slots, slot)
	return nil
}

func (n *fakeNetwork) SetInternet(netip.Addr, bool) error { return nil }
func (n *fakeNetwork) Slots() int                         { return 16 }
func (n *fakeNetwork) GuestIP(int) (netip.Addr, error)    { return netip.MustParseAddr("127.0.0.1"), nil }
func (n *fakeNetwork) Existing() ([]int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []int
	for s := range n.slots {
		out = append(out, s)
	}
	return out, nil
}

// fakeTemplates has every template but those marked gone.
type fakeTemplates struct{ gone map[string]bool }

func (f fakeTemplates) Get(_ context.Context, name string) (api.Template, error) {
	if f.gone[name] {
		return api.Template{}, errors.New("no such template")
	}
	return api.Template{Name: name, State: api.TemplateReady}, nil
}
func (fakeTemplates) RootfsDir(string) (string, error) { return "/nonexistent", nil }
func (fakeTemplates) Digest(_ context.Context, name string) (string, error) {
	return "sha256:" + strings.Repeat("0", 64), nil
}
func (fakeTemplates) Upload(context.Context, string, string) error {
	return errors.New("fake templates: no upload")
}
func (f fakeTemplates) RootfsByDigest(ctx context.Context, name, digest string) (string, error) {
	if _, err := f.Get(ctx, name); err != nil {
		return "", snapshot.Incompatible("", "spec: its template "+name+" is gone")
	}
	return "/nonexistent", nil
}

func newTestManager(t *testing.T) (*Manager, *fakeDriver, *fakeNetwork, *sqlstore.DB) {
	t.Helper()
	return newManagerWith(t, func(*Config, *sqlstore.DB) {})
}

// newManagerWith is a manager over a fake driver and network and a fresh
// store, in a temporary data dir, with the changes adjust makes to its
// configuration.
func newManagerWith(t *testing.T, adjust func(*Config, *sqlstore.DB)) (*Manager, *fakeDriver, *fakeNetwork, *sqlstore.DB) {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlstore.Open(t.Context(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	d := &fakeDriver{containers: map[string]runtime.Status{}}
	n := &fakeNetwork{slots: map[int]bool{}}
	cfg := Config{DataDir: dir, AgentDir: dir, MaxCPU: 2, MaxMemoryMB: 1024}
	adjust(&cfg, db)
	m, err := New(cfg, db, d, n, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return m, d, n, db
}

// TestCreateFailureLeavesNothing: when the sandbox cannot start, the create
// fails and no row, network slot, container or directory is left.
func TestCreateFailureLeavesNothing(t *testing.T) {
	m, d, n, db := newTestManager(t)
	d.failStart = errors.New("runsc exploded")
	if _, err := m.Create(t.Context(), "team", api.CreateMachineRequest{Template: "minimal"}); err == nil {
		t.Fatal("create succeeded, want an error")
	}
	rows, _ := db.ListMachines(t.Context(), store.MachineFilter{})
	if len(rows) != 0 || len(n.slots) != 0 || len(d.containers) != 0 {
		t.Fatalf("left behind: rows %d, slots %v, containers %v", len(rows), n.slots, d.containers)
	}
	entries, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, "machines"))
	if len(entries) != 0 {
		t.Fatalf("left machine dirs: %v", entries)
	}
}

// TestReconcile: after a crash, an interrupted create is undone, an
// interrupted kill is finished, a running machine whose sandbox is gone is
// failed, a live one is kept, an interrupted stop goes back to running and
// an interrupted start to stopped, the disk of a finished start is deleted,
// and orphans are removed.
func TestReconcile(t *testing.T) {
	ctx := t.Context()
	m, d, n, db := newTestManager(t)
	mk := func(id, state string, alive bool) *store.Machine {
		rec := &store.Machine{ID: id, TeamID: "team", State: state, Template: "minimal", CPUCount: 1, MemoryMB: 64,
			ContainerID: "c-" + id, AgentToken: "x"}
		if err := db.CreateMachine(ctx, rec, 16); err != nil {
			t.Fatal(err)
		}
		n.slots[rec.Slot] = true
		if alive {
			d.containers[rec.ContainerID] = runtime.StatusRunning
		}
		return rec
	}
	creating := mk("creating", api.StateCreating, true)
	killing := mk("killing", api.StateKilling, true)
	dead := mk("dead", api.StateRunning, false)
	alive := mk("alive", api.StateRunning, true)
	// A pause that committed before it freed the sandbox and slot.
	paused := mk("paused", api.StatePaused, true)
	// A stop cut off before its checkpoint was committed (the sandbox is
	// frozen), a start cut off before the machine ran (back to stopped on
	// its disk), a stop that committed before it freed its slot.
	stopping := mk("stopping", api.StateStopping, true)
	d.containers[stopping.ContainerID] = runtime.StatusPaused
	starting := mk("starting", api.StateStarting, true)
	stopped := mk("stopped", api.StateStopped, true)
	disk := func(id, machineID string) {
		sn := &store.Snapshot{ID: id, TeamID: "team", Kind: api.SnapshotDisk, State: store.SnapshotReady, MachineID: machineID,
			LineageID: machineID, Template: "minimal"}
		if err := db.CreateSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range []*store.Machine{starting, stopped} {
		disk("disk-"+rec.ID, rec.ID)
		rec.SnapshotID = "disk-" + rec.ID
		if err := db.UpdateMachine(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	// The disk of a start that committed (alive runs) but was cut off
	// before it deleted the disk.
	disk("disk-alive", alive.ID)
	// A spare of the previous run.
	sp := &store.Spare{MachineID: "spare", ContainerID: "c-spare", Shape: "{}"}
	if err := db.CreateSpare(ctx, sp, 16); err != nil {
		t.Fatal(err)
	}
	d.containers[sp.ContainerID] = runtime.StatusCreated
	n.slots[sp.Slot] = true
	d.containers["orphan"] = runtime.StatusRunning
	n.slots[15] = true

	if err := m.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if _, err := db.GetMachine(ctx, creating.ID); err == nil {
		t.Error("interrupted create still has a row")
	}
	want := map[string]string{killing.ID: api.StateKilled, dead.ID: api.StateFailed, alive.ID: api.StateRunning,
		stopping.ID: api.StateRunning, starting.ID: api.StateStopped, stopped.ID: api.StateStopped}
	for id, state := range want {
		rec, err := db.GetMachine(ctx, id)
		if err != nil || rec.State != state {
			t.Errorf("machine %s: %+v, %v; want state %s", id, rec, err, state)
		}
	}
	if rec, err := db.GetMachine(ctx, paused.ID); err != nil || rec.State != api.StatePaused || rec.Slot != -1 {
		t.Errorf("paused machine after reconcile: %+v, %v; want paused without a slot", rec, err)
	}
	for _, id := range []string{starting.ID, stopped.ID} {
		if rec, err := db.GetMachine(ctx, id); err != nil || rec.Slot != -1 || rec.SnapshotID != "disk-"+id {
			t.Errorf("machine %s after reconcile: %+v, %v; want stopped on its disk without a slot", id, rec, err)
		}
	}
	disks, err := db.ListSnapshots(ctx, store.SnapshotFilter{Kinds: []string{api.SnapshotDisk}})
	if err != nil || len(disks) != 2 || disks[0].MachineID == alive.ID || disks[1].MachineID == alive.ID {
		t.Errorf("disk snapshots after reconcile: %v, %v; want those of the two stopped machines", disks, err)
	}
	if spares, err := db.ListSpares(ctx); err != nil || len(spares) != 0 {
		t.Errorf("spares after reconcile: %v, %v; want none", spares, err)
	}
	if len(d.containers) != 2 || d.containers[alive.ContainerID] != runtime.StatusRunning || d.containers[stopping.ContainerID] != runtime.StatusRunning {
		t.Errorf("containers after reconcile = %v, want only %s and %s (thawed), running", d.containers, alive.ContainerID, stopping.ContainerID)
	}
	if len(n.slots) != 2 || !n.slots[alive.Slot] || !n.slots[stopping.Slot] {
		t.Errorf("slots after reconcile = %v, want only %d and %d", n.slots, alive.Slot, stopping.Slot)
	}
}
