package sqlstore

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	db, err := Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestSlotAllocation(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	mk := func(id string) *store.Machine {
		m := &store.Machine{ID: id, TeamID: "t", State: "running", Template: "minimal", CPUCount: 1, MemoryMB: 64,
			ContainerID: "c" + id, AgentToken: "x", CreatedAt: time.Now()}
		if err := db.CreateMachine(ctx, m, 3); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		return m
	}
	a, b, c := mk("a"), mk("b"), mk("c")
	for i, m := range []*store.Machine{a, b, c} {
		if m.Slot != i {
			t.Errorf("machine %s got slot %d, want %d", m.ID, m.Slot, i)
		}
	}
	// The pool is full.
	err := db.CreateMachine(ctx, &store.Machine{ID: "d", TeamID: "t", State: "creating", CreatedAt: time.Now()}, 3)
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("create in a full pool: %v, want resource exhausted", err)
	}
	// A machine holds its slot until it releases it, whatever its state;
	// then the lowest free slot is reused.
	b.State = "killed"
	if err := db.UpdateMachine(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateMachine(ctx, &store.Machine{ID: "e", TeamID: "t", State: "creating", CreatedAt: time.Now()}, 3); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("create while a killed machine still holds its slot: %v, want resource exhausted", err)
	}
	b.Slot = -1
	if err := db.UpdateMachine(ctx, b); err != nil {
		t.Fatal(err)
	}
	if d := mk("d"); d.Slot != 1 {
		t.Errorf("new machine got slot %d, want the freed slot 1", d.Slot)
	}
}

func TestMachineRoundTrip(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	in := &store.Machine{ID: "m", TeamID: "t", State: "creating", Template: "base", CPUCount: 2, MemoryMB: 512,
		Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"}, AllowInternet: true,
		ContainerID: "cid", AgentToken: "tok", CreatedAt: now, Origin: store.OriginE2B}
	if err := db.CreateMachine(ctx, in, 10); err != nil {
		t.Fatal(err)
	}
	in.State, in.StartedAt = "running", now.Add(time.Second)
	if err := db.UpdateMachine(ctx, in); err != nil {
		t.Fatal(err)
	}
	got, err := db.GetMachine(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "running" || got.Env["A"] != "1" || got.Metadata["k"] != "v" || !got.AllowInternet ||
		!got.StartedAt.Equal(in.StartedAt) || !got.CreatedAt.Equal(now) || !got.EndedAt.IsZero() || got.Origin != store.OriginE2B {
		t.Errorf("got %+v, want %+v", got, in)
	}
	if _, err := db.GetMachine(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("get unknown: %v, want not found", err)
	}
	list, err := db.ListMachines(ctx, store.MachineFilter{TeamID: "t", States: []string{"running"}, Template: "base"})
	if err != nil || len(list) != 1 {
		t.Errorf("list = %v, %v; want the one machine", list, err)
	}
}

func TestAPIKeys(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	if err := db.CreateTeam(ctx, store.Team{ID: "t1", Name: "one", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := db.AddAPIKey(ctx, "t1", "hash1", "ns_abc", time.Now()); err != nil {
		t.Fatal(err)
	}
	if team, err := db.TeamByKeyHash(ctx, "hash1"); err != nil || team != "t1" {
		t.Errorf("TeamByKeyHash = %q, %v; want t1", team, err)
	}
	if _, err := db.TeamByKeyHash(ctx, "other"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("unknown key: %v, want unauthenticated", err)
	}
}
