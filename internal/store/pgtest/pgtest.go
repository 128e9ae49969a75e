// Package pgtest gives tests a fresh, empty PostgreSQL database each, on a
// throwaway PostgreSQL 15 cluster that the test binary starts on first use
// and stops when it exits.
//
// A package that uses it calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// and each test asks for a database with URL(t) (BadPasswordURL(t) for the
// same with a wrong password). The cluster is initdb'd
// into a temp dir owned by the postgres user (/var/lib/nullspace-test-pg-*
// when run as root) and listens on a free port of 127.0.0.1; the Debian
// package's own `main` cluster is never touched. When
// NULLSPACE_TEST_DATABASE_URL is set, that server is used instead and no
// cluster is started. A program that is not a test (the benchmark) starts
// a cluster of its own with StartCluster.
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable that points the tests at an existing server
// instead of a throwaway cluster. Its role must be allowed to create and
// drop databases.
const EnvURL = "NULLSPACE_TEST_DATABASE_URL"

// binDir is where Debian's postgresql-15 puts its server binaries (they are
// not on PATH). A variable so that a test can point it elsewhere.
var binDir = "/usr/lib/postgresql/15/bin"

var (
	// mainCalled is set by Main: without it nothing would stop the cluster,
	// and a postgres would outlive every test run that forgot.
	mainCalled atomic.Bool

	once   sync.Once
	srv    *server
	srvErr error
)

// server is the PostgreSQL server the tests' databases are made on.
type server struct {
	// base reaches the server as a superuser with a password, over TCP; a
	// test's URL is base with the database swapped.
	base *url.URL
	// cluster is nil when the server is NULLSPACE_TEST_DATABASE_URL's.
	cluster *cluster

	// mu serialises the admin connection, which tests share.
	mu    sync.Mutex
	admin *pgx.Conn
}

// Main runs the tests, then stops the cluster (if one was started) and
// removes its directory. Its result is the exit code for os.Exit: a failure
// to stop makes an otherwise green run fail, since it leaves a postgres
// behind.
func Main(m *testing.M) int { return MainWith(m, (*testing.M).Run) }

// MainWith is Main for a TestMain that runs the tests its own way (run
// calls m.Run among other things).
func MainWith(m *testing.M, run func(*testing.M) int) int {
	mainCalled.Store(true)
	code := run(m)
	if err := stop(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// URL returns a postgres:// URL, password included, to a database of its
// own for t: created empty (from template0) and dropped when t ends. The
// first call starts the cluster; it fails t if that is impossible (e.g.
// PostgreSQL 15 is not installed: `make deps` installs it).
func URL(t testing.TB) string {
	t.Helper()
	s := get(t)
	name := "t_" + randomHex(8)
	if err := s.exec(t.Context(), "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run. FORCE ends
		// connections a test left open, so a leaked pool cannot keep the
		// database (and, on a shared server, its disk) alive.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u := *s.base
	u.Path = "/" + name
	return u.String()
}

// BadPasswordURL returns a URL like URL's, to an existing database, whose
// password is wrong, so a test can check how a refused login is reported.
func BadPasswordURL(t testing.TB) string {
	t.Helper()
	u, err := url.Parse(URL(t))
	if err != nil {
		t.Fatalf("pgtest: parse own URL: %v", err)
	}
	u.User = url.UserPassword(u.User.Username(), "wrong-"+randomHex(8))
	return u.String()
}

// Database returns a URL to the database name, created empty if it does
// not exist yet and never dropped (it goes with the cluster). It is for a
// TestMain that has no testing.TB (the e2e servers); it also sets
// NULLSPACE_TEST_DATABASE_URL, so that child processes of the test binary
// (servers it runs and kills) use the same server.
func Database(name string) (string, error) {
	if !mainCalled.Load() {
		return "", errors.New("pgtest: the package's TestMain must call pgtest.Main or MainWith (it stops the cluster when the tests end)")
	}
	once.Do(func() {
		srv, srvErr = open(func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	})
	if srvErr != nil {
		return "", fmt.Errorf("pgtest: %w", srvErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.mu.Lock()
	var exists bool
	err := srv.admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	srv.mu.Unlock()
	if err != nil {
		return "", fmt.Errorf("pgtest: look up database %s: %w", name, err)
	}
	if !exists {
		if err := srv.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
			return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
		}
	}
	os.Setenv(EnvURL, srv.base.String())
	u := *srv.base
	u.Path = "/" + name
	return u.String(), nil
}

// StartCluster starts a throwaway cluster for a program that is not a
// test binary (the benchmark), whatever NULLSPACE_TEST_DATABASE_URL says.
// dbURL reaches the cluster's postgres database as a superuser over TCP;
// stop stops the cluster and removes its directory, and must be called: a
// postmaster outlives its starter (a later start sweeps a cluster whose
// starter died).
func StartCluster(ctx context.Context) (dbURL string, stop func() error, err error) {
	return StartClusterWith(ctx, ClusterOptions{})
}

// ClusterOptions widens a cluster StartClusterWith starts beyond loopback.
type ClusterOptions struct {
	// Listen are addresses the postmaster listens on besides 127.0.0.1
	// (they must be on the host already), e.g. the bridge of a cluster of
	// nodes in network namespaces of their own.
	Listen []string
	// Allow are networks (CIDR) whose clients may log in over TCP, by
	// password, besides loopback.
	Allow []string
	// Logf receives progress and sweep notes; default: standard error.
	Logf func(format string, args ...any)
}

// StartClusterWith is StartCluster for a cluster that clients outside
// the host's loopback reach (internal/devcluster's nodes). dbURL still
// names 127.0.0.1; a client elsewhere swaps in one of opts.Listen.
func StartClusterWith(ctx context.Context, opts ClusterOptions) (dbURL string, stop func() error, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	c, err := startCluster(ctx, logf, opts.Listen, opts.Allow...)
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: %w", err)
	}
	return c.url().String(), c.stop, nil
}

// Sweep stops and removes the clusters whose starter died without
// stopping them (a crashed benchmark or dev cluster); StartCluster does
// it too. Clusters of live starters are left alone.
func Sweep(ctx context.Context, logf func(format string, args ...any)) {
	parent := os.TempDir()
	if os.Geteuid() == 0 {
		parent = "/var/lib"
	}
	sweep(ctx, logf, parent)
}

// get returns the server, starting it on the first call.
func get(t testing.TB) *server {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatal("pgtest: the package's TestMain must call pgtest.Main (it stops the cluster when the tests end)")
	}
	once.Do(func() { srv, srvErr = open(t.Logf) })
	if srvErr != nil {
		t.Fatalf("pgtest: %v", srvErr)
	}
	return srv
}

// open connects to NULLSPACE_TEST_DATABASE_URL's server, or starts a
// cluster when it is unset.
func open(logf func(format string, args ...any)) (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if env := os.Getenv(EnvURL); env != "" {
		base, err := url.Parse(env)
		if err != nil || (base.Scheme != "postgres" && base.Scheme != "postgresql") {
			return nil, fmt.Errorf("%s is not a postgres:// URL", EnvURL)
		}
		s := &server{base: base}
		if err := s.connectLocked(ctx); err != nil {
			return nil, err
		}
		logf("pgtest: using the server of %s at %s", EnvURL, base.Host)
		return s, nil
	}

	begin := time.Now()
	c, err := startCluster(ctx, logf, nil)
	if err != nil {
		return nil, err
	}
	s := &server{base: c.url(), cluster: c}
	if err := s.connectLocked(ctx); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	logf("pgtest: PostgreSQL cluster in %s (pid %d, port %d) ready in %v (initdb %v, start %v)",
		c.dir, c.pid, c.port, time.Since(begin).Round(time.Millisecond),
		c.initdb.Round(time.Millisecond), c.start.Round(time.Millisecond))
	return s, nil
}

// connectLocked opens the admin connection, to the base URL's own
// database. s.mu is held, or s is not yet shared.
func (s *server) connectLocked(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.base.String())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.base.Redacted(), err)
	}
	s.admin = conn
	return nil
}

func (s *server) exec(ctx context.Context, sql string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// pgx closes a connection whose query was cancelled, and a shared
	// server may restart: one broken connection must not fail every later
	// test, so it is replaced.
	if s.admin.IsClosed() {
		if err := s.connectLocked(ctx); err != nil {
			return err
		}
	}
	_, err := s.admin.Exec(ctx, sql)
	return err
}

// stop closes the admin connection and stops the cluster, if any. Safe when
// nothing was started.
func stop() error {
	if srv == nil {
		return nil
	}
	var errs []error
	srv.mu.Lock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := srv.admin.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close admin connection: %w", err))
	}
	cancel()
	srv.mu.Unlock()
	if srv.cluster != nil {
		errs = append(errs, srv.cluster.stop())
	}
	return errors.Join(errs...)
}

// cluster is a throwaway PostgreSQL cluster this process started.
type cluster struct {
	dir      string // owned by postgres: data/, the socket, log
	port     int
	password string   // of the nullspace role
	pid      int      // the postmaster's
	listen   []string // addresses the postmaster listens on, 127.0.0.1 first

	initdb, start time.Duration // how long each step took
}

const (
	dirPrefix = "nullspace-test-pg-"
	role      = "nullspace"
	// ownerFile in a cluster's dir holds the pid of the test binary that
	// started it, so that a later run can tell a live cluster from one left
	// by a binary that died before Main could stop it.
	ownerFile = "owner"
)

// startCluster initdb's a cluster into a new temp dir and starts it on a
// free loopback port (and the same port of listen), with a superuser role
// that logs in by password from loopback (and the networks of allow).
func startCluster(ctx context.Context, logf func(format string, args ...any), listen []string, allow ...string) (*cluster, error) {
	if err := checkInstalled(binDir); err != nil {
		return nil, err
	}
	asRoot := os.Geteuid() == 0
	parent := os.TempDir()
	var uid, gid int
	if asRoot {
		// Under /var/lib, as the design says: a tmpfs /tmp may be small,
		// and a cluster is ~40 MB.
		parent = "/var/lib"
		pg, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("look up the postgres user (the postgresql-15 package creates it; run `make deps`): %w", err)
		}
		uid, _ = strconv.Atoi(pg.Uid)
		gid, _ = strconv.Atoi(pg.Gid)
	}
	sweep(ctx, logf, parent)

	dir, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("make cluster dir: %w", err)
	}
	c := &cluster{dir: dir, password: randomHex(16), listen: append([]string{"127.0.0.1"}, listen...)}
	ok := false
	defer func() {
		if !ok {
			// Nothing to stop when the start failed; pg_ctl -w start gives
			// up only once the postmaster is gone.
			os.RemoveAll(dir)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("write cluster owner: %w", err)
	}
	if asRoot {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("give cluster dir to postgres: %w", err)
		}
	}

	begin := time.Now()
	// The C locale sorts text by bytes, as SQLite does, so ORDER BY on text
	// agrees between the two stores. --no-sync: the cluster is thrown away.
	if out, err := c.run(ctx, "initdb", "-D", c.data(), "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
		"--encoding=UTF8", "--locale=C"); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	c.initdb = time.Since(begin)
	if err := c.allow(allow); err != nil {
		return nil, err
	}

	begin = time.Now()
	if err := c.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	c.start = time.Since(begin)
	pid, err := c.postmasterPID()
	if err == nil {
		c.pid = pid
		err = c.createRole(ctx)
	}
	if err != nil {
		return nil, errors.Join(err, c.stop())
	}
	ok = true
	return c, nil
}

// checkInstalled fails, naming the fix, when the server binaries are not
// there: the project's rule is that a missing part fails a test, never
// skips it.
func checkInstalled(dir string) error {
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("PostgreSQL 15 is not installed (%w): run `make deps`, or set %s to a server to use", err, EnvURL)
		}
	}
	return nil
}

// startOnFreePort starts the postmaster on a port that was free a moment
// ago; another process may take it in between, so a bind failure is retried
// on a new port.
func (c *cluster) startOnFreePort(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if c.port, err = freePort(); err != nil {
			return err
		}
		// The socket goes in the cluster's dir (-k), not the distribution's
		// /var/run/postgresql, which belongs to the main cluster.
		opts := fmt.Sprintf("-k %s -p %d -c listen_addresses=%s -c fsync=off -c synchronous_commit=off -c full_page_writes=off", c.dir, c.port, strings.Join(c.listen, ","))
		var out []byte
		out, err = c.run(ctx, "pg_ctl", "-D", c.data(), "-l", c.log(), "-w", "-t", "60", "-s", "-o", opts, "start")
		if err == nil {
			return nil
		}
		logText, _ := os.ReadFile(c.log())
		err = fmt.Errorf("pg_ctl start on port %d: %w\n%s%s", c.port, err, out, logText)
		if !strings.Contains(string(logText), "could not bind") {
			return err
		}
		os.Remove(c.log())
	}
	return err
}

// allow lets clients of the networks nets log in over TCP by password, as
// initdb's --auth-host lets loopback's.
func (c *cluster) allow(nets []string) error {
	if len(nets) == 0 {
		return nil
	}
	var lines strings.Builder
	for _, n := range nets {
		if _, err := netip.ParsePrefix(n); err != nil {
			return fmt.Errorf("allow %q: want a network such as 10.213.0.0/24: %w", n, err)
		}
		fmt.Fprintf(&lines, "host all all %s scram-sha-256\n", n)
	}
	f, err := os.OpenFile(filepath.Join(c.data(), "pg_hba.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open pg_hba.conf: %w", err)
	}
	_, err = f.WriteString(lines.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return nil
}

// createRole makes the role the tests log in as. It needs a password, since
// connections over TCP authenticate with scram-sha-256 (which the
// wrong-password tests rely on); this one connection uses the socket, which
// trusts the bootstrap superuser.
func (c *cluster) createRole(ctx context.Context) error {
	sock := fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", url.QueryEscape(c.dir), c.port)
	conn, err := pgx.Connect(ctx, sock)
	if err != nil {
		return fmt.Errorf("connect over the cluster's socket: %w", err)
	}
	defer conn.Close(ctx)
	// The password is hex, so it needs no quoting beyond the literal's.
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'", role, c.password)); err != nil {
		return fmt.Errorf("create role %s: %w", role, err)
	}
	return nil
}

// url reaches the cluster's postgres database as the nullspace role over
// TCP. The cluster has no TLS, so asking for it would only cost a round
// trip.
func (c *cluster) url() *url.URL {
	return &url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(role, c.password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
}

func (c *cluster) data() string { return filepath.Join(c.dir, "data") }
func (c *cluster) log() string  { return filepath.Join(c.dir, "log") }

// stop stops the postmaster by pg_ctl (which signals the pid in its own
// postmaster.pid, never a process found by name) and removes the dir.
// Immediate: the data is thrown away, so a clean checkpoint is wasted time.
func (c *cluster) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "-s", "stop"); err != nil {
		// The dir is kept: it holds the log, and the postmaster may still
		// be running from it.
		return fmt.Errorf("stop cluster in %s: %w\n%s", c.dir, err, out)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("remove cluster dir: %w", err)
	}
	return nil
}

// postmasterPID reads the pid from postmaster.pid's first line.
func (c *cluster) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.data(), "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("read postmaster pid: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("parse postmaster pid %q: %w", line, err)
	}
	return pid, nil
}

// run runs one of the server binaries as the postgres user: initdb and the
// postmaster refuse to run as root. Its output is returned for errors only.
func (c *cluster) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	path := filepath.Join(binDir, bin)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	// The test's working dir may be closed to the postgres user.
	cmd.Dir = c.dir
	return cmd.CombinedOutput()
}

// sweep stops and removes clusters under parent whose test binary died
// before its Main ran (a -timeout panic, a kill): pg_ctl detaches the
// postmaster, so nothing else would ever end it. Clusters of live binaries
// (go test runs packages in parallel) are left alone.
func sweep(ctx context.Context, logf func(format string, args ...any), parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			// Written right after the dir is made: missing for long means
			// its maker died in between.
			if fi, serr := os.Stat(dir); serr != nil || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		} else if pid, err := strconv.Atoi(string(b)); err != nil || alive(pid) {
			continue
		}
		c := &cluster{dir: dir}
		// A postmaster.pid whose process is gone is stale (the host
		// rebooted, say): pg_ctl stop would fail on it, and there is
		// nothing to stop.
		if pid, err := c.postmasterPID(); err == nil && alive(pid) {
			if out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "-s", "stop"); err != nil {
				logf("pgtest: stop a cluster left by a dead test binary in %s: %v\n%s", dir, err, out)
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			logf("pgtest: remove a cluster left by a dead test binary: %v", err)
			continue
		}
		logf("pgtest: removed a cluster left by a test binary that died: %s", dir)
	}
}

// alive reports whether a process with this pid is running. A zombie is
// not: an exited postmaster is reparented to init, which may reap it late.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself hold spaces or parentheses.
	_, rest, _ := strings.Cut(string(b[bytes.LastIndexByte(b, ')')+1:]), " ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

// freePort returns a loopback port that is free now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}
