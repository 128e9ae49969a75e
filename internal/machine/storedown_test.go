package machine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// downStore is a store whose database goes away on demand: while down,
// the writes a lifecycle operation commits with fail as PostgreSQL's do
// when it cannot be reached (store_unavailable).
type downStore struct {
	store.Store
	down atomic.Bool
	// lostAnswer: a snapshot's commit lands, and its answer is lost.
	lostAnswer atomic.Bool
}

func (s *downStore) err() error {
	if s.down.Load() {
		return errdefs.Wrap(errors.New("dial tcp 127.0.0.1:5432: connection refused"), errdefs.ErrUnavailable,
			errdefs.CodeStoreUnavailable, "the state database is unreachable", "retry")
	}
	return nil
}

func (s *downStore) CreateMachine(ctx context.Context, m *store.Machine, slots int) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.CreateMachine(ctx, m, slots)
}

func (s *downStore) UpdateMachine(ctx context.Context, m *store.Machine) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.UpdateMachine(ctx, m)
}

func (s *downStore) CommitSnapshot(ctx context.Context, sn *store.Snapshot, ms ...*store.Machine) error {
	if err := s.err(); err != nil {
		return err
	}
	if s.lostAnswer.Load() {
		if err := s.Store.CommitSnapshot(ctx, sn, ms...); err != nil {
			return err
		}
		s.down.Store(true)
		err := s.err()
		s.down.Store(false)
		return err
	}
	return s.Store.CommitSnapshot(ctx, sn, ms...)
}

func (s *downStore) AssignSlot(ctx context.Context, m *store.Machine, slots int) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.AssignSlot(ctx, m, slots)
}

// TestStoreDown: with the database unreachable, a create, a pause and a
// resume fail with the retryable store_unavailable; nothing half-made is
// left (no machine listed, no container, the paused machine still paused,
// the running one still running), and the same calls succeed once the
// database is back.
func TestStoreDown(t *testing.T) {
	var ds *downStore
	m, d, _, db := newManagerWith(t, func(cfg *Config, db *sqlstore.DB) {
		cfg.AgentPort = healthyAgent(t)
		cfg.Events = events.New(db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	})
	m.Shutdown(context.Background())
	ds = &downStore{Store: db}
	m, err := New(m.cfg, ds, d, &fakeNetwork{slots: map[int]bool{}}, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	ctx := t.Context()
	unavailable := func(what string, err error) {
		t.Helper()
		pub := errdefs.Classify(err)
		if pub.Code != errdefs.CodeStoreUnavailable || !pub.Retryable {
			t.Fatalf("%s with the database down: %v (code %s, retryable %v), want retryable store_unavailable", what, err, pub.Code, pub.Retryable)
		}
	}

	ds.down.Store(true)
	_, err = m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal"})
	unavailable("create", err)
	if rows, _ := db.ListMachines(ctx, store.MachineFilter{}); len(rows) != 0 || len(d.containers) != 0 {
		t.Fatalf("after the failed create: %d rows, containers %v", len(rows), d.containers)
	}

	ds.down.Store(false)
	rec := addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	ds.down.Store(true)
	_, err = m.Pause(ctx, "team", "a")
	unavailable("pause", err)
	if got, _ := db.GetMachine(ctx, "a"); got.State != api.StateRunning || d.containers[rec.ContainerID] == "" {
		t.Fatalf("after the failed pause: state %s, container %v; want it running", got.State, d.containers)
	}
	if snaps, _ := db.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotReady}}); len(snaps) != 0 {
		t.Fatalf("after the failed pause: %d ready snapshots", len(snaps))
	}

	ds.down.Store(false)
	if _, err := m.Pause(ctx, "team", "a"); err != nil {
		t.Fatalf("pause once the database is back: %v", err)
	}
	ds.down.Store(true)
	_, err = m.Connect(ctx, "team", "a")
	unavailable("resume", err)
	if got, _ := db.LineageHead(ctx, "a"); got.State != api.StatePaused || got.ID != "a" {
		t.Fatalf("after the failed resume: head %s in state %s; want a, paused", got.ID, got.State)
	}
	ds.down.Store(false)
	if got, err := m.Connect(ctx, "team", "a"); err != nil || got.State != api.StateRunning {
		t.Fatalf("resume once the database is back: %+v %v", got, err)
	}
}

// TestCommitAnswerLost: a pause whose commit landed but whose answer was
// lost asks the database again and goes on as paused: its state is kept,
// not deleted by an undo, and the machine is not thawed.
func TestCommitAnswerLost(t *testing.T) {
	m, d, _, db := newManagerWith(t, func(cfg *Config, db *sqlstore.DB) {
		cfg.AgentPort = healthyAgent(t)
	})
	m.Shutdown(context.Background())
	ds := &downStore{Store: db}
	m, err := New(m.cfg, ds, d, &fakeNetwork{slots: map[int]bool{}}, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	ctx := t.Context()
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	ds.lostAnswer.Store(true)
	sn, err := m.Pause(ctx, "team", "a")
	if err != nil {
		t.Fatalf("pause whose commit's answer was lost: %v", err)
	}
	got, _ := db.GetSnapshot(ctx, sn.ID)
	rec, _ := db.GetMachine(ctx, "a")
	if got == nil || got.State != store.SnapshotReady || rec.State != api.StatePaused || rec.SnapshotID != sn.ID || !m.snaps.Local(sn.ID) {
		t.Fatalf("after the lost answer: snapshot %+v, machine %s on %s, files %v; want ready, paused on it, kept", got, rec.State, rec.SnapshotID, m.snaps.Local(sn.ID))
	}
}
