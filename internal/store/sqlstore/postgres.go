package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// OpenPostgres connects to the PostgreSQL database at rawURL
// (postgres://user:password@host:port/db?sslmode=...; the password may
// also come from PGPASSWORD or ~/.pgpass) and migrates it. Its errors name
// the URL without its password.
func OpenPostgres(ctx context.Context, rawURL string) (*DB, error) {
	shown := Redact(rawURL)
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		return nil, fmt.Errorf("open %s: %s", shown, scrub(err, rawURL))
	}
	// Several servers share the database: a few connections each is
	// plenty, and idle ones go back.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &DB{db: db, d: postgresDialect, f: new(fence)}
	pingCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %s", shown, scrub(err, rawURL))
	}
	if err := migrate(ctx, s, postgresSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate PostgreSQL at %s: %w", shown, err)
	}
	return s, nil
}

// secretParams are the URL parameters pgx reads secrets from.
var secretParams = []string{"password", "sslpassword"}

// Redact returns a database URL without its passwords (in the user
// information or in the parameters), for messages.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "(a database URL that is not postgres://...)"
	}
	q := u.Query()
	for _, p := range secretParams {
		if q.Has(p) {
			q.Set(p, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.Redacted()
}

// scrub returns err's text with the URL's passwords removed, in case a
// driver quotes them.
func scrub(err error, rawURL string) string {
	msg := err.Error()
	u, perr := url.Parse(rawURL)
	if perr != nil {
		return msg
	}
	secrets := []string{}
	if pw, ok := u.User.Password(); ok {
		secrets = append(secrets, pw)
	}
	for _, p := range secretParams {
		secrets = append(secrets, u.Query().Get(p))
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}

var postgresDialect = &dialect{
	name:      "postgres",
	dollar:    true,
	forUpdate: " FOR UPDATE",
	forShare:  " FOR SHARE",
	lock:      "SELECT pg_advisory_xact_lock(?)",
	lockNamed: "SELECT pg_advisory_xact_lock(?::int4, hashtext(?))",
	jsonInt: func(col, field string) string {
		return fmt.Sprintf("(%s::jsonb->>'%s')::bigint", col, field)
	},
	unique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505"
	},
	unavailable: pgUnavailable,
	retryable: func(err error) bool {
		var pe *pgconn.PgError
		// serialization_failure, deadlock_detected
		return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
	},
}

// pgUnavailable reports whether err means PostgreSQL could not be reached
// or went away: connection errors, and the server shutting down or not
// yet accepting connections.
func pgUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true // a connect timeout included
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's deadline, not the database's absence
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err) || errors.Is(err, sql.ErrConnDone)
}

// postgresSchema keeps PostgreSQL's version in schema_migrations.
var postgresSchema = schema{
	steps: []step{
		{version: 20, sql: postgresBaseline},
		{version: 21, sql: sqliteMigrations[20]}, // the same SQL on both
		{version: 22, sql: sqliteMigrations[21]},
		{version: 23, sql: `ALTER TABLE cluster_secrets ADD COLUMN updated_at TIMESTAMPTZ;`},
		{version: 24, sql: keysMigration("TIMESTAMPTZ")},
		{version: 25, sql: sqliteMigrations[24]},
		{version: 26, sql: idempotencyMigration("TIMESTAMPTZ")},
		{version: 27, sql: migrationDiskMB},
		{version: 28, sql: auditMigration("TIMESTAMPTZ")},
		{version: 29, sql: sqliteMigrations[28]},
		{version: 30, sql: usageMigration("TIMESTAMPTZ")},
		{version: 31, sql: nodesMigration("TIMESTAMPTZ") + `
			ALTER TABLE spares DROP CONSTRAINT spares_slot_key;
			CREATE UNIQUE INDEX spares_slot ON spares(node_id, slot);`},
	},
	prepare: func(ctx context.Context, c conn) error {
		_, err := c.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version INTEGER PRIMARY KEY,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`)
		return err
	},
	version: func(ctx context.Context, c conn) (int, error) {
		var v int
		err := c.queryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&v)
		return v, err
	},
	setVersion: func(ctx context.Context, c conn, v int) error {
		_, err := c.exec(ctx, `INSERT INTO schema_migrations (version) VALUES (?)`, v)
		return err
	},
}

// postgresBaseline is SQLite's schema at version 20 in PostgreSQL's
// types: times are timestamptz (NULL for none), flags boolean, JSON the
// store does not look into stays text. Later versions are pairs of steps,
// one per backend, with the same number.
const postgresBaseline = `
CREATE TABLE teams (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE api_keys (
	hash TEXT PRIMARY KEY,
	team_id TEXT NOT NULL REFERENCES teams(id),
	prefix TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE machines (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL,
	state TEXT NOT NULL,
	template TEXT NOT NULL,
	cpu_count INTEGER NOT NULL,
	memory_mb INTEGER NOT NULL,
	env TEXT NOT NULL,
	metadata TEXT NOT NULL,
	allow_internet BOOLEAN NOT NULL,
	slot INTEGER NOT NULL,
	container_id TEXT NOT NULL,
	agent_token TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL,
	started_at TIMESTAMPTZ,
	ended_at TIMESTAMPTZ,
	error TEXT NOT NULL DEFAULT '',
	lineage_id TEXT NOT NULL,
	lineage_seq INTEGER NOT NULL,
	snapshot_id TEXT NOT NULL DEFAULT '',
	restored_from TEXT NOT NULL DEFAULT '',
	volumes TEXT NOT NULL DEFAULT '[]',
	hooks TEXT NOT NULL DEFAULT '{}',
	agent_dir TEXT NOT NULL DEFAULT '',
	timeout_ms BIGINT NOT NULL DEFAULT 0,
	on_timeout TEXT NOT NULL DEFAULT 'destroy',
	auto_resume BOOLEAN NOT NULL DEFAULT FALSE,
	deadline TIMESTAMPTZ,
	idle_timeout_ms BIGINT NOT NULL DEFAULT 0,
	persistence TEXT NOT NULL DEFAULT 'persistent',
	command TEXT NOT NULL DEFAULT '[]',
	main_pid INTEGER NOT NULL DEFAULT 0,
	main_exit TEXT NOT NULL DEFAULT '',
	public_ports BOOLEAN NOT NULL DEFAULT FALSE,
	latest BOOLEAN NOT NULL DEFAULT FALSE,
	lineage_created TIMESTAMPTZ,
	checkpoint_retention INTEGER NOT NULL DEFAULT -1,
	failure_reason TEXT NOT NULL DEFAULT '',
	origin TEXT NOT NULL DEFAULT '',
	version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX machines_team_state ON machines(team_id, state);
CREATE UNIQUE INDEX machines_lineage ON machines(lineage_id, lineage_seq);
CREATE UNIQUE INDEX machines_lineage_latest ON machines(lineage_id) WHERE latest;
CREATE INDEX machines_restored_from ON machines(restored_from);
CREATE INDEX machines_team_latest ON machines(team_id, latest, lineage_created, lineage_id);
CREATE INDEX machines_team_created ON machines(team_id, created_at, id);
CREATE UNIQUE INDEX machines_slot ON machines(slot) WHERE slot >= 0;
CREATE INDEX machines_team_state_latest ON machines(team_id, latest, state, lineage_created, lineage_id);
CREATE INDEX machines_team_template_latest ON machines(team_id, latest, template, lineage_created, lineage_id);
CREATE TABLE machine_metadata (
	machine_id TEXT NOT NULL,
	key TEXT NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY (key, value, machine_id)
);
CREATE INDEX machine_metadata_machine ON machine_metadata(machine_id);
CREATE TABLE machine_volumes (
	machine_id TEXT NOT NULL,
	name TEXT NOT NULL,
	PRIMARY KEY (name, machine_id)
);
CREATE INDEX machine_volumes_machine ON machine_volumes(machine_id);
CREATE TABLE snapshots (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL,
	kind TEXT NOT NULL,
	state TEXT NOT NULL,
	machine_id TEXT NOT NULL,
	lineage_id TEXT NOT NULL,
	template TEXT NOT NULL,
	parent_id TEXT NOT NULL,
	generation INTEGER NOT NULL,
	size_bytes BIGINT NOT NULL,
	checksum TEXT NOT NULL,
	pause_window_ms BIGINT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL,
	host TEXT NOT NULL,
	spec TEXT NOT NULL,
	files TEXT NOT NULL,
	agent_token TEXT NOT NULL,
	pinned BOOLEAN NOT NULL DEFAULT FALSE,
	name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX snapshots_lineage ON snapshots(lineage_id, generation);
CREATE INDEX snapshots_team_created ON snapshots(team_id, created_at, id);
CREATE INDEX snapshots_team_machine ON snapshots(team_id, machine_id, created_at, id);
CREATE INDEX snapshots_team_kind ON snapshots(team_id, kind, created_at, id);
CREATE UNIQUE INDEX snapshots_team_name ON snapshots(team_id, name) WHERE name <> '';
CREATE TABLE volumes (
	team_id TEXT NOT NULL,
	name TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL,
	PRIMARY KEY (team_id, name)
);
CREATE TABLE spares (
	machine_id TEXT PRIMARY KEY,
	container_id TEXT NOT NULL,
	slot INTEGER NOT NULL UNIQUE,
	shape TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE events (
	seq BIGINT PRIMARY KEY,
	team_id TEXT NOT NULL,
	type TEXT NOT NULL,
	machine_id TEXT NOT NULL,
	time TIMESTAMPTZ NOT NULL,
	cause TEXT NOT NULL,
	details TEXT NOT NULL
);
CREATE INDEX events_team ON events(team_id, seq);
CREATE INDEX events_team_machine ON events(team_id, machine_id, seq);
-- Event numbers come from this one row, taken in the appending
-- transaction: its row lock orders appenders, so numbers are committed in
-- order and a follower reading "after n" never skips one committed late
-- (a sequence would hand out numbers at insert, not at commit).
CREATE TABLE event_seq (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	n BIGINT NOT NULL
);
INSERT INTO event_seq (id, n) VALUES (1, 0);
CREATE TABLE cursors (
	name TEXT PRIMARY KEY,
	seq BIGINT NOT NULL
);
CREATE TABLE ssh_keys (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL REFERENCES teams(id),
	name TEXT NOT NULL,
	fingerprint TEXT NOT NULL UNIQUE,
	public_key TEXT NOT NULL,
	created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ssh_keys_team ON ssh_keys(team_id, created_at, id);
`
