package sqlstore

import (
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

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
	if err := db.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil || version != sqliteSchema.latestVersion() {
		t.Fatalf("user_version %d %v, want %d", version, err, sqliteSchema.latestVersion())
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
