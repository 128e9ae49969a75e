package server

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// TestSharedSecrets: a data dir's secret goes to the store; a new data
// dir on the same store gets it; a rotation (a newer file) survives a
// restart and reaches the store; an older data dir's file is replaced.
func TestSharedSecrets(t *testing.T) {
	ctx := t.Context()
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(dir string) {
		t.Helper()
		if err := adoptSecrets(ctx, db, dir, log); err != nil {
			t.Fatal(err)
		}
		if err := offerSecrets(ctx, db, dir); err != nil {
			t.Fatal(err)
		}
	}
	file := func(dir string) []byte {
		b, _ := os.ReadFile(filepath.Join(dir, EdgeSecretFile))
		return b
	}
	write := func(dir, v string, mtime time.Time) {
		p := filepath.Join(dir, EdgeSecretFile)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	a, b, old := t.TempDir(), t.TempDir(), t.TempDir()
	now := time.Now()
	write(old, "stale", now.Add(-time.Hour))
	write(a, "first", now)
	start(a)
	start(b)
	if !bytes.Equal(file(b), []byte("first")) {
		t.Fatalf("a new data dir got %q, want first", file(b))
	}
	write(a, "rotated", now.Add(time.Minute)) // rotate-secret while a is down
	start(a)
	if got, _, _ := db.Secret(ctx, EdgeSecretFile); !bytes.Equal(got, []byte("rotated")) || !bytes.Equal(file(a), []byte("rotated")) {
		t.Fatalf("after a rotation and a restart: store %q, file %q; want rotated", got, file(a))
	}
	start(b)
	start(old)
	if !bytes.Equal(file(b), []byte("rotated")) || !bytes.Equal(file(old), []byte("rotated")) {
		t.Fatalf("after the rotation: b %q, an older data dir %q; want rotated", file(b), file(old))
	}
}

// TestBootstrapKeepsKey: a data dir whose server moves to an empty
// database keeps its API key (the file is not replaced, and the key
// works), and a data dir without one gets a new key.
func TestBootstrapKeepsKey(t *testing.T) {
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	first, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	keyFile, err := bootstrapKey(ctx, first, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(keyFile)
	second, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := bootstrapKey(ctx, second, dir, log); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(keyFile)
	if !bytes.Equal(key, again) {
		t.Fatalf("the key file was replaced: %q, then %q", key, again)
	}
	if p, err := access.New(second).Authenticate(ctx, string(key)); err != nil || p.TeamID == "" || !p.Operator() {
		t.Fatalf("the kept key on the new database: %+v %v; want the operator's", p, err)
	}
}
