package cli

import (
	"bytes"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/hostlock"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/pgtest"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// runStore runs `nullspace <args>` with the server-side store command.
func runStore(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := NewRootCommand("test")
	root.AddCommand(NewStoreCommand())
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	code = Execute(t.Context(), root)
	return out.String(), errb.String(), code
}

// dataDir makes a data directory whose database holds a team with a
// machine and a spare.
func dataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlstore.Open(t.Context(), filepath.Join(dir, "nullspace.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	for _, err := range []error{
		db.CreateTeam(t.Context(), store.Team{ID: "t", Name: "default", CreatedAt: now}),
		db.CreateMachine(t.Context(), &store.Machine{ID: "m", TeamID: "t", State: "running", CreatedAt: now}, 8),
		db.CreateSpare(t.Context(), &store.Spare{MachineID: "s", Shape: "{}", CreatedAt: now}, 8),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestStoreCopy: the copy reaches PostgreSQL with the password from
// PGPASSWORD, prints a line per table and the totals, and never the
// password; a second copy is refused as the target is no longer empty.
func TestStoreCopy(t *testing.T) {
	dir := dataDir(t)
	u, err := url.Parse(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	t.Setenv("PGPASSWORD", pw)
	u.User = url.User(u.User.Username())

	stdout, stderr, code := runStore(t, "store", "copy", "--from", dir, "--to", u.String())
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"teams", "1 rows", "machines", "copied 2 rows of 15 tables", "not copied: 1 spares", "--database-url " + u.String()} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout+stderr, pw) {
		t.Errorf("the password is printed:\n%s%s", stdout, stderr)
	}
	db, err := sqlstore.OpenPostgres(t.Context(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if m, err := db.GetMachine(t.Context(), "m"); err != nil || m.TeamID != "t" {
		t.Errorf("copied machine: %+v %v", m, err)
	}

	// With the password in the URL this time: refused, and still unprinted.
	u.User = url.UserPassword(u.User.Username(), pw)
	stdout, stderr, code = runStore(t, "store", "copy", "--from", dir, "--to", u.String())
	if code != exitError || !strings.Contains(stderr, "the target must be empty") || !strings.Contains(stderr, "hint: ") {
		t.Errorf("second copy: exit %d, stderr %q; want 1, the target must be empty, and a hint", code, stderr)
	}
	if strings.Contains(stdout+stderr, pw) {
		t.Errorf("the password is printed:\n%s%s", stdout, stderr)
	}
}

// TestStoreCopyRefuses: a data dir a server runs on (its lock held), a
// directory without a database, and a URL that is not PostgreSQL's.
func TestStoreCopyRefuses(t *testing.T) {
	dir := dataDir(t)
	l, err := hostlock.Acquire(filepath.Join(dir, "serve.lock"), []byte(`{"pid":4242,"started":"2026-01-02T03:04:05Z","data_dir":"x"}`+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runStore(t, "store", "copy", "--from", dir, "--to", "postgres://u:secret@127.0.0.1:1/db")
	l.Close()
	if code != exitError || !strings.Contains(stderr, "in use by process 4242") || !strings.Contains(stderr, "stop the server first") {
		t.Errorf("locked data dir: exit %d, stderr %q; want 1 naming pid 4242", code, stderr)
	}

	_, stderr, code = runStore(t, "store", "copy", "--from", t.TempDir(), "--to", "postgres://u:secret@127.0.0.1:1/db")
	if code != exitError || !strings.Contains(stderr, "no nullspace.db there") {
		t.Errorf("empty dir: exit %d, stderr %q; want 1, no nullspace.db", code, stderr)
	}

	for _, args := range [][]string{
		{"store", "copy", "--from", dir, "--to", "mysql://u:secret@h/db"},
		{"store", "copy", "--to", "postgres://h/db"},
	} {
		_, stderr, code = runStore(t, args...)
		if code != exitUsage || strings.Contains(stderr, "secret") {
			t.Errorf("%q: exit %d, stderr %q; want a usage error without the password", args, code, stderr)
		}
	}
}
