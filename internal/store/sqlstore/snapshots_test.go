package sqlstore

import (
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func TestSnapshotNames(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	add := func(id, team, name string) error {
		return db.CreateSnapshot(ctx, &store.Snapshot{ID: id, TeamID: team, Kind: "snapshot", State: store.SnapshotWriting, MachineID: "m",
			LineageID: "m", Template: "minimal", CreatedAt: time.Now(), Name: name})
	}
	for _, c := range []struct {
		id, team, name string
		wantCode       string
	}{
		{"s1", "t", "web", ""},
		{"s2", "t", "web", errdefs.CodeSnapshotNameExists}, // taken, though s1 is still being written
		{"s3", "u", "web", ""},                             // another team's names are its own
		{"s4", "t", "", ""},                                // unnamed snapshots do not collide
		{"s5", "t", "", ""},
		{"s6", "t", "db", ""},
	} {
		err := add(c.id, c.team, c.name)
		var e *errdefs.Error
		switch {
		case c.wantCode == "" && err != nil:
			t.Fatalf("create %s named %q in %s: %v", c.id, c.name, c.team, err)
		case c.wantCode != "" && (!errors.As(err, &e) || e.Code != c.wantCode || !errors.Is(err, errdefs.ErrFailedPrecondition)):
			t.Fatalf("create %s named %q in %s: %v, want %s", c.id, c.name, c.team, err, c.wantCode)
		}
	}
	for _, c := range []struct{ team, name, wantID string }{{"t", "web", "s1"}, {"u", "web", "s3"}, {"t", "db", "s6"}, {"u", "db", ""}, {"t", "", ""}} {
		sn, err := db.GetSnapshotByName(ctx, c.team, c.name)
		if c.wantID == "" {
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("snapshot named %q in %s: %v %v, want not found", c.name, c.team, sn, err)
			}
			continue
		}
		if err != nil || sn.ID != c.wantID || sn.Name != c.name {
			t.Errorf("snapshot named %q in %s: %+v %v, want %s", c.name, c.team, sn, err, c.wantID)
		}
	}
	page, _, err := db.ListSnapshotsPage(ctx, store.SnapshotPageQuery{TeamID: "t", Name: "web", Limit: 10})
	if err != nil || len(page) != 1 || page[0].ID != "s1" {
		t.Fatalf("list team t named web: %v %v, want [s1]", page, err)
	}
	// Deleting a snapshot frees its name.
	if err := db.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := add("s7", "t", "web"); err != nil {
		t.Fatalf("reuse a deleted snapshot's name: %v", err)
	}
}

// TestSnapshotNameMigration opens a database that the release before
// names (17 migrations) wrote: its snapshots keep working, have no name,
// and names are enforced from then on.
func TestSnapshotNameMigration(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range sqliteMigrations[:17] {
		if _, err := raw.ExecContext(ctx, m); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	stmts := []string{
		"PRAGMA user_version = 17",
		`INSERT INTO snapshots (id, team_id, kind, state, machine_id, lineage_id, template, parent_id, generation, size_bytes, checksum,
			pause_window_ms, created_at, host, spec, files, agent_token, pinned)
			VALUES ('old', 't', 'snapshot', 'ready', 'm', 'm', 'minimal', '', 1, 10, 'c', 0, '` + formatTime(time.Now()) + `', '{}', '{}', '[]', '', 0)`,
	}
	for _, q := range stmts {
		if _, err := raw.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version int
	if err := db.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil || version != len(sqliteMigrations) {
		t.Fatalf("user_version %d %v, want %d", version, err, len(sqliteMigrations))
	}
	sn, err := db.GetSnapshot(ctx, "old")
	if err != nil || sn.Name != "" || sn.SizeBytes != 10 {
		t.Fatalf("old snapshot after the migration: %+v %v", sn, err)
	}
	for i, id := range []string{"n1", "n2"} {
		err := db.CreateSnapshot(ctx, &store.Snapshot{ID: id, TeamID: "t", Kind: "snapshot", State: store.SnapshotReady, CreatedAt: time.Now(), Name: "web"})
		if (err == nil) != (i == 0) {
			t.Fatalf("%s named web: %v, want an error for the second only", id, err)
		}
	}
}
