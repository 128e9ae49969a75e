package machine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// newSpareManager is a test manager with a pool of max spares and an
// installed agent binary (shapes need one).
func newSpareManager(t *testing.T, max int) (*Manager, *fakeDriver, *fakeNetwork, *sqlstore.DB) {
	t.Helper()
	m, d, n, db := newTestManager(t)
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	m.spares = newSpares(m, max)
	return m, d, n, db
}

func addRunning(t *testing.T, db *sqlstore.DB, id, template string, created time.Time) {
	t.Helper()
	rec := &store.Machine{ID: id, TeamID: "team", State: api.StateRunning, Template: template, CPUCount: 1,
		MemoryMB: 64, ContainerID: "c-" + id, AgentToken: "x", CreatedAt: created}
	if err := db.CreateMachine(t.Context(), rec, 16); err != nil {
		t.Fatal(err)
	}
}

func specOf(m *Manager, template string) savedSpec {
	return savedSpec{Template: template, CPUCount: 1, MemoryMB: 64, AgentDir: m.cfg.AgentDir}
}

// addUse records that a machine of template's shape was checkpointed or
// restored age ago.
func addUse(m *Manager, template string, age time.Duration) {
	spec := specOf(m, template)
	sh := shapeOf("team", spec)
	m.spares.recent[sh.key()] = recentShape{at: time.Now().Add(-age), sh: sh, spec: spec}
}

func addSnapshot(t *testing.T, m *Manager, db *sqlstore.DB, id, template string, created time.Time) {
	t.Helper()
	spec, _ := json.Marshal(specOf(m, template))
	sn := &store.Snapshot{ID: id, TeamID: "team", Kind: api.SnapshotHibernate, State: store.SnapshotReady, MachineID: "x",
		LineageID: "x", Template: template, CreatedAt: created, Spec: spec}
	if err := db.CreateSnapshot(t.Context(), sn); err != nil {
		t.Fatal(err)
	}
}

func templatesOf(shapes []shape) []string {
	var out []string
	for _, s := range shapes {
		out = append(out, s.Template)
	}
	return out
}

// TestSparesWanted: the pool wants the distinct usable shapes of the
// newest snapshots and of recent checkpoints and restores, most recent
// first, in turn up to its budget; a running machine alone wants nothing.
func TestSparesWanted(t *testing.T) {
	now := time.Now().UTC()
	for _, tc := range []struct {
		name    string
		max     int
		running []string
		used    map[string]time.Duration // template: age
		snaps   map[string]time.Duration
		gone    []string
		want    []string
	}{
		{name: "nothing", max: 2, want: nil},
		{name: "running machines alone want nothing", max: 2, running: []string{"a"}, want: nil},
		{name: "one shape fills the budget", max: 3, used: map[string]time.Duration{"a": time.Minute}, want: []string{"a", "a", "a"}},
		{name: "newest first, in turn", max: 3,
			used:  map[string]time.Duration{"old": time.Hour / 8},
			snaps: map[string]time.Duration{"new": time.Second, "mid": time.Minute},
			want:  []string{"new", "mid", "old"}},
		{name: "budget cuts the oldest", max: 2,
			used:  map[string]time.Duration{"old": 5 * time.Minute, "new": time.Second},
			snaps: map[string]time.Duration{"mid": time.Minute},
			want:  []string{"new", "mid"}},
		{name: "a use is forgotten after a while", max: 2,
			used: map[string]time.Duration{"stale": recentUse + time.Minute},
			want: nil},
		{name: "a shape counts once", max: 4,
			used:  map[string]time.Duration{"a": time.Second},
			snaps: map[string]time.Duration{"a": time.Minute, "b": time.Hour},
			want:  []string{"a", "b", "a", "b"}},
		{name: "a removed template is skipped", max: 2,
			used:  map[string]time.Duration{"a": time.Second},
			snaps: map[string]time.Duration{"b": time.Minute},
			gone:  []string{"a"},
			want:  []string{"b", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, _, db := newSpareManager(t, tc.max)
			for i, tmpl := range tc.running {
				addRunning(t, db, fmt.Sprintf("m%d", i), tmpl, now)
			}
			for tmpl, age := range tc.used {
				addUse(m, tmpl, age)
			}
			i := 0
			for tmpl, age := range tc.snaps {
				i++
				addSnapshot(t, m, db, fmt.Sprintf("s%d", i), tmpl, now.Add(-age))
			}
			gone := map[string]bool{}
			for _, g := range tc.gone {
				gone[g] = true
			}
			m.templates = fakeTemplates{gone: gone}
			got, err := m.spares.wanted(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if g := templatesOf(got); !equalStrings(g, tc.want) {
				t.Fatalf("wanted %v, want %v", g, tc.want)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSparesFillTakeDrain: fill makes created containers with their own
// slots and rows; take hands one out (and skips a dead one); a shape no
// longer wanted loses its spares; drain leaves nothing.
func TestSparesFillTakeDrain(t *testing.T) {
	ctx := t.Context()
	m, d, n, db := newSpareManager(t, 2)
	addRunning(t, db, "a", "minimal", time.Now())
	spec := specOf(m, "minimal")
	m.spares.used("team", spec)
	m.spares.fill(ctx)

	idle := m.Spares()
	if len(idle) != 2 {
		t.Fatalf("spares after fill = %+v, want 2", idle)
	}
	rows, _ := db.ListSpares(ctx)
	if len(rows) != 2 {
		t.Fatalf("spare rows = %+v, want 2", rows)
	}
	for _, sp := range idle {
		if d.containers[sp.ContainerID] != runtime.StatusCreated || !n.slots[sp.Slot] {
			t.Fatalf("spare %+v: container %q, slot set up %v", sp, d.containers[sp.ContainerID], n.slots[sp.Slot])
		}
		if sp.Slot == 0 {
			t.Fatalf("spare %+v took the running machine's slot", sp)
		}
	}

	// A dead spare is skipped and removed; the live one is handed out.
	dead := idle[0]
	for _, sp := range m.spares.idle[shapeOf("team", spec).key()] {
		if sp.MachineID == dead.MachineID {
			d.containers[sp.ContainerID] = runtime.StatusStopped
		}
	}
	got, ok := m.spares.take(ctx, shapeOf("team", spec))
	if !ok || got.MachineID == dead.MachineID {
		t.Fatalf("take = %+v, %v; want the live spare", got, ok)
	}
	if _, ok := d.containers[dead.ContainerID]; ok || n.slots[dead.Slot] {
		t.Fatalf("dead spare %+v was not removed", dead)
	}
	if _, ok := m.spares.take(ctx, shapeOf("team", spec)); ok {
		t.Fatal("took a third spare from a pool of two")
	}
	m.spares.destroy(ctx, got)

	// The machine's template is removed: its shape is no longer wanted.
	m.spares.fill(ctx)
	if len(m.Spares()) != 2 {
		t.Fatalf("pool not refilled: %+v", m.Spares())
	}
	m.templates = fakeTemplates{gone: map[string]bool{"minimal": true}}
	m.spares.fill(ctx)
	if len(m.Spares()) != 0 {
		t.Fatalf("spares of an unwanted shape kept: %+v", m.Spares())
	}

	m.templates = fakeTemplates{}
	m.spares.fill(ctx)
	m.spares.drain(ctx)
	rows, _ = db.ListSpares(ctx)
	if len(m.Spares()) != 0 || len(rows) != 0 || len(d.containers) != 0 || len(n.slots) != 0 {
		t.Fatalf("after drain: spares %v, rows %v, containers %v, slots %v", m.Spares(), rows, d.containers, n.slots)
	}
	entries, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, "machines"))
	if len(entries) != 0 {
		t.Fatalf("spare dirs left: %v", entries)
	}
}

// TestSparesWaitForRestores: no spare is made while a restore runs, nor
// within refillDelay after it: a `runsc create` would slow it down.
func TestSparesWaitForRestores(t *testing.T) {
	m, d, _, _ := newSpareManager(t, 1)
	m.spares.used("team", specOf(m, "minimal"))
	m.spares.restoreStarted()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	m.spares.fill(ctx)
	cancel()
	if len(m.Spares()) != 0 || len(d.containers) != 0 {
		t.Fatalf("a spare was made during a restore: %+v", m.Spares())
	}
	m.spares.restoreDone()
	start := time.Now()
	m.spares.fill(t.Context())
	if len(m.Spares()) != 1 {
		t.Fatalf("spares after the restore = %+v, want 1", m.Spares())
	}
	if waited := time.Since(start); waited < refillDelay/2 {
		t.Fatalf("the spare was made %v after the restore ended, want about %v", waited, refillDelay)
	}
}

// TestSparesUnderSustainedRestores: a server that never stops restoring
// still gets its spares, after maxQuietWait.
func TestSparesUnderSustainedRestores(t *testing.T) {
	defer func(d time.Duration) { maxQuietWait = d }(maxQuietWait)
	maxQuietWait = 200 * time.Millisecond
	m, _, _, _ := newSpareManager(t, 1)
	m.spares.used("team", specOf(m, "minimal"))
	m.spares.restoreStarted() // and never done
	m.spares.fill(t.Context())
	if len(m.Spares()) != 1 {
		t.Fatalf("spares under sustained restores = %+v, want 1", m.Spares())
	}
}
