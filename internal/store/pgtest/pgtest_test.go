package pgtest

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func connect(t *testing.T, u string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), u)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// tables counts the tables a test could have made in conn's database.
func tables(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var n int
	err := conn.QueryRow(t.Context(),
		`SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')`).Scan(&n)
	if err != nil {
		t.Fatalf("count tables: %v", err)
	}
	return n
}

func TestURL(t *testing.T) {
	raw := URL(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	if u.Scheme != "postgres" {
		t.Errorf("scheme: got %q, want postgres", u.Scheme)
	}
	if _, ok := u.User.Password(); !ok {
		t.Errorf("URL %s has no password; want one (host auth is scram)", u.Redacted())
	}
	if !strings.HasPrefix(u.Path, "/t_") {
		t.Errorf("database: got %q, want /t_<random>", u.Path)
	}

	conn := connect(t, raw)
	var db, usr string
	if err := conn.QueryRow(t.Context(), "SELECT current_database(), current_user").Scan(&db, &usr); err != nil {
		t.Fatalf("query: %v", err)
	}
	if "/"+db != u.Path || usr != u.User.Username() {
		t.Errorf("connected to %s as %s, want %s as %s", db, usr, u.Path, u.User.Username())
	}
	if n := tables(t, conn); n != 0 {
		t.Errorf("a fresh database has %d tables, want 0", n)
	}
	if os.Getenv(EnvURL) == "" && (u.Hostname() != "127.0.0.1" || u.Port() == "5432") {
		t.Errorf("host: got %s, want 127.0.0.1 on a port other than the main cluster's", u.Host)
	}
}

func TestURLsAreDistinct(t *testing.T) {
	a, b := URL(t), URL(t)
	if a == b {
		t.Fatalf("two calls gave the same URL %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(t.Context(), "CREATE TABLE machines (id text PRIMARY KEY)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if got := tables(t, ca); got != 1 {
		t.Errorf("first database: got %d tables, want 1", got)
	}
	if got := tables(t, cb); got != 0 {
		t.Errorf("second database: got %d tables, want 0 (the first's table leaked into it)", got)
	}
}

// TestURLConcurrent: parallel tests share the admin connection.
func TestURLConcurrent(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	t.Run("group", func(t *testing.T) {
		for i := range 8 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				u := URL(t)
				connect(t, u)
				mu.Lock()
				defer mu.Unlock()
				if seen[u] {
					t.Errorf("URL %s given twice", u)
				}
				seen[u] = true
			})
		}
	})
	if len(seen) != 8 {
		t.Errorf("got %d distinct URLs, want 8", len(seen))
	}
}

func TestBadPasswordURL(t *testing.T) {
	_, err := pgx.Connect(t.Context(), BadPasswordURL(t))
	if err == nil {
		t.Fatal("connected with a wrong password")
	}
	// 28P01 is invalid_password: the login was refused, not the database
	// missing or the server down.
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("got %v, want a PostgreSQL error with code 28P01 (invalid_password)", err)
	}
	if strings.Contains(err.Error(), "wrong-") {
		t.Errorf("the error %q shows the password", err)
	}
}

// TestDatabaseDropped: a test's database goes when the test ends.
func TestDatabaseDropped(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		u, err := url.Parse(URL(t))
		if err != nil {
			t.Fatal(err)
		}
		name = strings.TrimPrefix(u.Path, "/")
		connect(t, u.String()) // left open: the drop must end it
	})
	var n int
	srv.mu.Lock()
	err := srv.admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n)
	srv.mu.Unlock()
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	if n != 0 {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

func TestCheckInstalled(t *testing.T) {
	err := checkInstalled(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("got %v, want an error naming `make deps`", err)
	}
	if err := checkInstalled(binDir); err != nil {
		t.Errorf("the installed binaries: %v", err)
	}
}

// child runs this test binary's TestURL in a process of its own with env
// added, and returns its verbose output.
func child(t *testing.T, env ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestURL$", "-test.v", "-test.count=1")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvURL+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child test binary: %v\n%s", err, out)
	}
	return string(out)
}

// TestMainStopsCluster: a test binary whose TestMain calls Main leaves no
// postmaster and no dir behind.
func TestMainStopsCluster(t *testing.T) {
	out := child(t)
	m := regexp.MustCompile(`cluster in (\S+) \(pid (\d+),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the child did not log its cluster:\n%s", out)
	}
	dir, pid := m[1], m[2]
	if !strings.HasPrefix(filepath.Base(dir), dirPrefix) {
		t.Errorf("cluster dir %s, want a %s* dir", dir, dirPrefix)
	}
	p, _ := strconv.Atoi(pid)
	waitGone(t, p)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the child's cluster dir %s: got %v, want it gone", dir, err)
	}
}

// TestEnvURL: with NULLSPACE_TEST_DATABASE_URL set, no cluster is started
// and the test's database is made, and dropped, on that server.
func TestEnvURL(t *testing.T) {
	// This binary's own server stands in for a shared one.
	get(t)
	before := databases(t)
	out := child(t, EnvURL+"="+srv.base.String())
	if strings.Contains(out, "cluster in") {
		t.Errorf("the child started a cluster of its own:\n%s", out)
	}
	if !strings.Contains(out, "using the server of "+EnvURL) {
		t.Errorf("the child did not log the server it used:\n%s", out)
	}
	if pw, _ := srv.base.User.Password(); strings.Contains(out, pw) {
		t.Errorf("the child's output shows the password:\n%s", out)
	}
	if after := databases(t); after != before {
		t.Errorf("databases on the server: %d before the child, %d after; want it to drop its own", before, after)
	}
}

func databases(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var n int
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if err := srv.admin.QueryRow(ctx, "SELECT count(*) FROM pg_database").Scan(&n); err != nil {
		t.Fatalf("count databases: %v", err)
	}
	return n
}

// TestSweep: a cluster whose test binary died before Main could stop it is
// stopped and removed by the next start; a live binary's is left alone.
func TestSweep(t *testing.T) {
	c, err := startCluster(t.Context(), t.Logf, nil)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(c.dir); err == nil {
			if err := c.stop(); err != nil {
				t.Error(err)
			}
		}
	})
	parent := filepath.Dir(c.dir)

	sweep(t.Context(), t.Logf, parent)
	if !alive(c.pid) {
		t.Fatal("sweep stopped the cluster of a live test binary")
	}

	// A process that has exited stands in for a test binary that died.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	sweep(t.Context(), t.Logf, parent)
	if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead binary's cluster dir: got %v, want it removed", err)
	}
	waitGone(t, c.pid)
}

// waitGone fails t unless the postmaster pid exits within 5s. pg_ctl stop
// -w returns once postmaster.pid is gone, which the postmaster removes just
// before it exits.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for alive(pid) {
		select {
		case <-ctx.Done():
			t.Fatalf("the postmaster (pid %d) is still running 5s after its cluster was stopped", pid)
		case <-tick.C:
		}
	}
}

// TestStartClusterWith: a cluster started with Listen and Allow takes
// password logins on the extra address from the allowed network (127.0.0.2
// stands in for a bridge: all of 127/8 is loopback, but initdb's
// pg_hba.conf trusts 127.0.0.1 alone).
func TestStartClusterWith(t *testing.T) {
	raw, stop, err := StartClusterWith(t.Context(), ClusterOptions{Listen: []string{"127.0.0.2"}, Allow: []string{"127.0.0.2/32"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "127.0.0.2:" + u.Port()
	conn, err := pgx.Connect(t.Context(), u.String())
	if err != nil {
		t.Fatalf("connect on the extra address: %v", err)
	}
	conn.Close(t.Context())

	if _, _, err := StartClusterWith(t.Context(), ClusterOptions{Allow: []string{"not-a-network"}, Logf: t.Logf}); err == nil {
		t.Error("a cluster started with an invalid Allow; want an error")
	}
}
