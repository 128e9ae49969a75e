package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func openPostgres(t *testing.T, rawURL string) *DB {
	t.Helper()
	db, err := OpenPostgres(t.Context(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestPostgresMigrations: a new database gets the schema, a second open
// (and two at once) changes nothing, and a database a newer nullspace
// migrated is refused with a message that says what to do.
func TestPostgresMigrations(t *testing.T) {
	u := pgtest.URL(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := OpenPostgres(t.Context(), u)
			if err == nil {
				db.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d of 3 at once: %v", i, err)
		}
	}
	db := openPostgres(t, u)
	var n int
	if err := db.c().queryRow(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(postgresSchema.steps) {
		t.Fatalf("schema_migrations rows: %d %v, want %d (the baseline and each step after it, once)", n, err, len(postgresSchema.steps))
	}
	latest := postgresSchema.latestVersion()
	if _, err := db.c().exec(t.Context(), `INSERT INTO schema_migrations (version) VALUES (?)`, latest+5); err != nil {
		t.Fatal(err)
	}
	_, err := OpenPostgres(t.Context(), u)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "newer than this nullspace") {
		t.Fatalf("open of a newer schema: %v, want a failed precondition naming the versions", err)
	}
}

// TestSQLiteNewerSchema: the same refusal on SQLite.
func TestSQLiteNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.c().exec(t.Context(), "PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(t.Context(), path)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "version 999") {
		t.Fatalf("open of a newer schema: %v, want a failed precondition naming version 999", err)
	}
}

// TestPostgresBadURL: a wrong password and an unreachable server are clear
// errors that name the URL and never its password.
func TestPostgresBadURL(t *testing.T) {
	bad := pgtest.BadPasswordURL(t)
	u, _ := url.Parse(bad)
	pw, _ := u.User.Password()
	_, err := OpenPostgres(t.Context(), bad)
	if err == nil || strings.Contains(err.Error(), pw) || !strings.Contains(err.Error(), u.Host) {
		t.Fatalf("wrong password: %v; want an error naming %s without the password", err, u.Host)
	}
	// A port nothing listens on.
	u.Host = "127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err = OpenPostgres(ctx, u.String())
	if err == nil || strings.Contains(err.Error(), pw) || !strings.Contains(err.Error(), "connect to PostgreSQL at") {
		t.Fatalf("unreachable: %v; want a connect error without the password", err)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proxy forwards a loopback port to addr until cut is called, which also
// ends every connection through it: the database, as the server sees it,
// is gone.
func proxy(t *testing.T, addr string) (host string, cut func()) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	cut = func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(cut)
	return l.Addr().String(), cut
}

// TestPostgresUnavailable: once the database cannot be reached, reads
// and writes (transactions too) fail with the retryable store_unavailable
// code, and the password is in none of them.
func TestPostgresUnavailable(t *testing.T) {
	ctx := t.Context()
	raw := pgtest.URL(t)
	u, _ := url.Parse(raw)
	pw, _ := u.User.Password()
	host, cut := proxy(t, u.Host)
	u.Host = host
	db := openPostgres(t, u.String())
	if err := db.CreateTeam(ctx, store.Team{ID: "t", Name: "t", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	cut()
	calls := map[string]func() error{
		"read":  func() error { _, err := db.CountTeams(ctx); return err },
		"write": func() error { return db.CreateTeam(ctx, store.Team{ID: "u", Name: "u", CreatedAt: time.Now()}) },
		"transaction": func() error {
			return db.CreateMachine(ctx, &store.Machine{ID: "m", TeamID: "t", State: "creating", CreatedAt: time.Now()}, 8)
		},
	}
	for name, call := range calls {
		err := call()
		pub := errdefs.Classify(err)
		if pub.Code != errdefs.CodeStoreUnavailable || !pub.Retryable || strings.Contains(err.Error(), pw) {
			t.Errorf("%s with the database gone: %v (code %s, retryable %v); want retryable store_unavailable without the password", name, err, pub.Code, pub.Retryable)
		}
	}
}

// TestRedact: passwords leave a URL wherever pgx reads them from.
func TestRedact(t *testing.T) {
	for _, raw := range []string{
		"postgres://u:hunter2@db:5432/n",
		"postgres://u@db/n?password=hunter2&sslmode=disable",
		"postgres://u@db/n?sslpassword=hunter2",
	} {
		if got := Redact(raw); strings.Contains(got, "hunter2") || !strings.Contains(got, "db") {
			t.Errorf("Redact(%q) = %q", raw, got)
		}
		if got := scrub(errors.New("failed for "+raw), raw); strings.Contains(got, "hunter2") {
			t.Errorf("scrub of an error quoting %q: %q", raw, got)
		}
	}
	// A caller's deadline is not the database's absence; a connection
	// pgx has closed is.
	if pgUnavailable(context.DeadlineExceeded) || pgUnavailable(context.Canceled) {
		t.Error("a context's end classified as store_unavailable")
	}
	if !pgUnavailable(fmt.Errorf("begin: %w", pgconn.ErrConnClosed)) {
		t.Error("a closed connection not classified as store_unavailable")
	}
}
