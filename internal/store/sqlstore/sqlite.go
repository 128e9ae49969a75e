package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Open opens (creating if needed) the SQLite database at path and
// migrates it.
//
// Writes go through one connection: SQLite serializes writers anyway, and
// a single writer never waits on the busy timeout. Write transactions
// take the write lock at BEGIN (_txlock=immediate), so that a second
// handle on the same file (tests; `nullspace store copy`) waits for it
// instead of failing a read-then-write half way.
func Open(ctx context.Context, path string) (*DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &DB{db: db, d: sqliteDialect, f: new(fence)}
	if err := migrate(ctx, s, sqliteSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return s, nil
}

var sqliteDialect = &dialect{
	name:      "sqlite",
	textTimes: true,
	jsonInt: func(col, field string) string {
		return fmt.Sprintf("json_extract(%s, '$.%s')", col, field)
	},
	unique: func(err error) bool {
		var e *sqlite.Error
		return errors.As(err, &e) && (e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
	},
	retryable: func(error) bool { return false },
}

// sqliteSchema keeps SQLite's version in PRAGMA user_version.
var sqliteSchema = schema{
	steps: numbered(sqliteMigrations),
	version: func(ctx context.Context, c conn) (int, error) {
		var v int
		err := c.queryRow(ctx, "PRAGMA user_version").Scan(&v)
		return v, err
	},
	setVersion: func(ctx context.Context, c conn, v int) error {
		_, err := c.exec(ctx, fmt.Sprintf("PRAGMA user_version = %d", v))
		return err
	},
}

// sqliteMigrations are SQLite's schema, in order; PRAGMA user_version
// records how many ran. Never edit one that has shipped: add another.
var sqliteMigrations = []string{
	`CREATE TABLE teams (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE TABLE api_keys (
		hash TEXT PRIMARY KEY,
		team_id TEXT NOT NULL REFERENCES teams(id),
		prefix TEXT NOT NULL,
		created_at TEXT NOT NULL
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
		allow_internet INTEGER NOT NULL,
		slot INTEGER NOT NULL,
		container_id TEXT NOT NULL,
		agent_token TEXT NOT NULL,
		created_at TEXT NOT NULL,
		started_at TEXT,
		ended_at TEXT,
		error TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX machines_team_state ON machines(team_id, state);`,
	// 2: pause/resume lineages, snapshots, volumes, hooks.
	`ALTER TABLE machines ADD COLUMN lineage_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE machines ADD COLUMN lineage_seq INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN snapshot_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE machines ADD COLUMN restored_from TEXT NOT NULL DEFAULT '';
	ALTER TABLE machines ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
	ALTER TABLE machines ADD COLUMN hooks TEXT NOT NULL DEFAULT '{}';
	ALTER TABLE machines ADD COLUMN agent_dir TEXT NOT NULL DEFAULT '';
	UPDATE machines SET lineage_id = id WHERE lineage_id = '';
	CREATE INDEX machines_lineage ON machines(lineage_id, lineage_seq);
	CREATE INDEX machines_restored_from ON machines(restored_from);
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
		size_bytes INTEGER NOT NULL,
		checksum TEXT NOT NULL,
		pause_window_ms INTEGER NOT NULL,
		created_at TEXT NOT NULL,
		host TEXT NOT NULL,
		spec TEXT NOT NULL,
		files TEXT NOT NULL,
		agent_token TEXT NOT NULL
	);
	CREATE INDEX snapshots_team ON snapshots(team_id, created_at);
	CREATE INDEX snapshots_lineage ON snapshots(lineage_id, generation);
	CREATE TABLE volumes (
		team_id TEXT NOT NULL,
		name TEXT NOT NULL,
		created_at TEXT NOT NULL,
		PRIMARY KEY (team_id, name)
	);`,
	// 3: containers created ahead of restores (machine.spares). A spare
	// holds a network slot like a machine. A machine holds its slot until it
	// has released it (slot -1), whatever its state.
	`UPDATE machines SET slot = -1 WHERE state IN ('paused', 'killed', 'failed');
	CREATE TABLE spares (
		machine_id TEXT PRIMARY KEY,
		container_id TEXT NOT NULL,
		slot INTEGER NOT NULL UNIQUE,
		shape TEXT NOT NULL,
		created_at TEXT NOT NULL
	);`,
	// 4: leases. timeout_ms is the window, on_timeout "destroy" or "pause",
	// deadline when a running machine's lease ends ('' while it does not
	// run).
	`ALTER TABLE machines ADD COLUMN timeout_ms INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'destroy';
	ALTER TABLE machines ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN deadline TEXT NOT NULL DEFAULT '';`,
	// 5: lifecycle events, by a sequence number that only grows; cursors
	// of their consumers (the webhook).
	`CREATE TABLE events (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		team_id TEXT NOT NULL,
		type TEXT NOT NULL,
		machine_id TEXT NOT NULL,
		time TEXT NOT NULL,
		cause TEXT NOT NULL,
		details TEXT NOT NULL
	);
	CREATE INDEX events_team ON events(team_id, seq);
	CREATE TABLE cursors (
		name TEXT PRIMARY KEY,
		seq INTEGER NOT NULL
	);`,
	// 6: idle suspend.
	`ALTER TABLE machines ADD COLUMN idle_timeout_ms INTEGER NOT NULL DEFAULT 0;`,
	// 7: persistence policy.
	`ALTER TABLE machines ADD COLUMN persistence TEXT NOT NULL DEFAULT 'persistent';`,
	// 8: the main process (stop/start, wait).
	`ALTER TABLE machines ADD COLUMN command TEXT NOT NULL DEFAULT '[]';
	ALTER TABLE machines ADD COLUMN main_pid INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN main_exit TEXT NOT NULL DEFAULT '';`,
	// 9: ports reachable through the edge without a signed URL.
	`ALTER TABLE machines ADD COLUMN public_ports INTEGER NOT NULL DEFAULT 0;`,
	// 10: one row per machine in lists. latest marks a lineage's latest
	// execution (the row with its highest lineage_seq); lineage_created is
	// the creation time of the lineage's first machine, a position in
	// lists that resumes do not move. machine_metadata indexes metadata for
	// list filters.
	`ALTER TABLE machines ADD COLUMN latest INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN lineage_created TEXT NOT NULL DEFAULT '';
	UPDATE machines SET latest = (lineage_seq = (SELECT max(m2.lineage_seq) FROM machines m2 WHERE m2.lineage_id = machines.lineage_id));
	UPDATE machines SET lineage_created = (SELECT min(m2.created_at) FROM machines m2 WHERE m2.lineage_id = machines.lineage_id);
	CREATE INDEX machines_team_latest ON machines(team_id, latest, lineage_created, lineage_id);
	CREATE INDEX machines_team_created ON machines(team_id, created_at, id);
	CREATE TABLE machine_metadata (
		machine_id TEXT NOT NULL,
		key TEXT NOT NULL,
		value TEXT NOT NULL,
		PRIMARY KEY (key, value, machine_id)
	);
	CREATE INDEX machine_metadata_machine ON machine_metadata(machine_id);
	INSERT INTO machine_metadata (machine_id, key, value) SELECT m.id, j.key, j.value FROM machines m, json_each(m.metadata) j;`,
	// 11: pages of snapshots in creation order.
	`CREATE INDEX snapshots_team_created ON snapshots(team_id, created_at, id);`,
	// 12: bounded history: pinned checkpoints, and each machine's retention
	// (-1: the server's default, 0: unlimited).
	`ALTER TABLE snapshots ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE machines ADD COLUMN checkpoint_retention INTEGER NOT NULL DEFAULT -1;`,
	// 13: a slot is found among the slots held, not among every row.
	`CREATE INDEX machines_slot ON machines(slot) WHERE slot >= 0;`,
	// 14: which machines mount which volumes, for pages of volumes.
	`CREATE TABLE machine_volumes (
		machine_id TEXT NOT NULL,
		name TEXT NOT NULL,
		PRIMARY KEY (name, machine_id)
	);
	CREATE INDEX machine_volumes_machine ON machine_volumes(machine_id);
	INSERT OR IGNORE INTO machine_volumes (machine_id, name) SELECT m.id, json_extract(v.value, '$.name') FROM machines m, json_each(m.volumes) v;`,
	// 15: the list filters' indexes, in each list's order: machines by
	// state and by template, snapshots by machine and by kind, events by
	// machine.
	`CREATE INDEX machines_team_state_latest ON machines(team_id, latest, state, lineage_created, lineage_id);
	CREATE INDEX machines_team_template_latest ON machines(team_id, latest, template, lineage_created, lineage_id);
	CREATE INDEX snapshots_team_machine ON snapshots(team_id, machine_id, created_at, id);
	CREATE INDEX snapshots_team_kind ON snapshots(team_id, kind, created_at, id);
	CREATE INDEX events_team_machine ON events(team_id, machine_id, seq);`,
	// 16: public keys that open SSH sessions in a team's machines; a key
	// belongs to one team, so that it names the team it signs in to.
	`CREATE TABLE ssh_keys (
		id TEXT PRIMARY KEY,
		team_id TEXT NOT NULL REFERENCES teams(id),
		name TEXT NOT NULL,
		fingerprint TEXT NOT NULL UNIQUE,
		public_key TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE INDEX ssh_keys_team ON ssh_keys(team_id, created_at, id);`,
	// 17: why a machine failed, as a stable code (oom, pids,
	// sandbox_exit, agent_unresponsive, ...) beside the message in error.
	`ALTER TABLE machines ADD COLUMN failure_reason TEXT NOT NULL DEFAULT '';`,
	// 18: snapshot names, unique in a team; '' is no name.
	`ALTER TABLE snapshots ADD COLUMN name TEXT NOT NULL DEFAULT '';
	CREATE UNIQUE INDEX snapshots_team_name ON snapshots(team_id, name) WHERE name != '';`,
	// 19: the API a machine's lineage was created through ('' Nullspace's,
	// 'e2b'): the edge answers an E2B sandbox's URLs in E2B's shape.
	`ALTER TABLE machines ADD COLUMN origin TEXT NOT NULL DEFAULT '';`,
	// 20: compare-and-set writes (version), and the invariants that the
	// one writer used to keep, as indexes: a slot is held by one machine,
	// a lineage's executions have distinct sequence numbers and one
	// latest.
	`ALTER TABLE machines ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
	DROP INDEX machines_slot;
	CREATE UNIQUE INDEX machines_slot ON machines(slot) WHERE slot >= 0;
	DROP INDEX machines_lineage;
	CREATE UNIQUE INDEX machines_lineage ON machines(lineage_id, lineage_seq);
	CREATE UNIQUE INDEX machines_lineage_latest ON machines(lineage_id) WHERE latest;`,
	// 21: secrets every server sharing the database signs with (machine
	// URLs, E2B and SSH tokens, the SSH host key), so that one server
	// verifies what another signed.
	`CREATE TABLE cluster_secrets (
		name TEXT PRIMARY KEY,
		value TEXT NOT NULL
	);`,
	// 22: a snapshot is durable once its files are in the object store
	// (--object-store), which makes it restorable on any server.
	`ALTER TABLE snapshots ADD COLUMN durable BOOLEAN NOT NULL DEFAULT FALSE;`,
	// 23: when a shared secret was set, so that a newer one (a rotation
	// on a server's host) replaces it and an older one does not.
	`ALTER TABLE cluster_secrets ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';`,
	// 24: teams are made and deleted by the operator; keys have ids,
	// names, scopes, an expiry and a revocation. The keys made before
	// (the first start's) become the operator's.
	keysMigration("TEXT"),
	// 25: each team's own limits (-1: the server's default).
	`CREATE TABLE team_quotas (
		team_id TEXT PRIMARY KEY REFERENCES teams(id),
		running_machines BIGINT NOT NULL DEFAULT -1,
		vcpus BIGINT NOT NULL DEFAULT -1,
		memory_mb BIGINT NOT NULL DEFAULT -1,
		snapshot_bytes BIGINT NOT NULL DEFAULT -1,
		creates_per_minute BIGINT NOT NULL DEFAULT -1
	);`,
	// 26: requests made with an Idempotency-Key, and their responses.
	idempotencyMigration("TEXT"),
	// 27: the machine's disk limit in MiB (disk_mb); 0, in rows written
	// before, means the server's default.
	migrationDiskMB,
	// 28: the audit log (key, team, quota and policy changes; refused
	// requests).
	auditMigration("TEXT"),
	// 29: a team's own rate limit of each of its API keys.
	`ALTER TABLE team_quotas ADD COLUMN api_rate BIGINT NOT NULL DEFAULT -1;
	ALTER TABLE team_quotas ADD COLUMN api_burst BIGINT NOT NULL DEFAULT -1;`,
	// 30: the usage ledger (store.Usage).
	usageMigration("TEXT"),
	// 31: the cluster's nodes.
	nodesMigration("TEXT"),
}

// auditMigration is migration 28 on either backend.
func auditMigration(timeType string) string {
	return `CREATE TABLE audit_log (
		id TEXT PRIMARY KEY,
		time ` + timeType + ` NOT NULL,
		team_id TEXT NOT NULL,
		actor_team_id TEXT NOT NULL,
		actor_key_id TEXT NOT NULL,
		action TEXT NOT NULL,
		target TEXT NOT NULL,
		outcome TEXT NOT NULL,
		source TEXT NOT NULL,
		details TEXT NOT NULL
	);
	CREATE INDEX audit_log_team ON audit_log(team_id, id);
	CREATE INDEX audit_log_time ON audit_log(time);`
}

// idempotencyMigration is migration 26 on either backend.
func idempotencyMigration(timeType string) string {
	return `CREATE TABLE idempotency_keys (
		team_id TEXT NOT NULL,
		key TEXT NOT NULL,
		route TEXT NOT NULL,
		request_hash TEXT NOT NULL,
		status INTEGER NOT NULL DEFAULT 0,
		body TEXT NOT NULL DEFAULT '',
		created_at ` + timeType + ` NOT NULL,
		PRIMARY KEY (team_id, key)
	);
	CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);`
}

// usageMigration is migration 30 on either backend, with its time type.
func usageMigration(timeType string) string {
	return strings.NewReplacer("TIME", timeType).Replace(`
	CREATE TABLE usage_records (
		id TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		team_id TEXT NOT NULL,
		machine_id TEXT NOT NULL,
		lineage_id TEXT NOT NULL,
		snapshot_id TEXT NOT NULL DEFAULT '',
		started_at TIME NOT NULL,
		ended_at TIME NOT NULL,
		vcpus INTEGER NOT NULL DEFAULT 0,
		memory_mb INTEGER NOT NULL DEFAULT 0,
		bytes BIGINT NOT NULL DEFAULT 0
	);
	CREATE INDEX usage_records_team ON usage_records(team_id, ended_at);
	CREATE INDEX usage_records_ended ON usage_records(ended_at);`)
}

// nodesMigration is migration 31 on either backend, with its time type:
// the cluster's nodes, and the node of each execution and spare. A slot is
// a node's own (its network namespace names), so it is unique per node;
// SQLite's spares keep their column's UNIQUE (one node writes a SQLite
// database), PostgreSQL's is replaced.
func nodesMigration(timeType string) string {
	return strings.NewReplacer("TIME", timeType).Replace(`
	CREATE TABLE nodes (
		id TEXT PRIMARY KEY,
		epoch BIGINT NOT NULL,
		state TEXT NOT NULL,
		drained BOOLEAN NOT NULL DEFAULT FALSE,
		peer_url TEXT NOT NULL DEFAULT '',
		api_url TEXT NOT NULL DEFAULT '',
		host TEXT NOT NULL DEFAULT '',
		capacity TEXT NOT NULL DEFAULT '{}',
		joined_at TIME NOT NULL,
		heartbeat_at TIME NOT NULL,
		dead_at TIME,
		reason TEXT NOT NULL DEFAULT ''
	);
	ALTER TABLE machines ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE spares ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
	DROP INDEX machines_slot;
	CREATE UNIQUE INDEX machines_slot ON machines(node_id, slot) WHERE slot >= 0;
	CREATE INDEX machines_node_state ON machines(node_id, state);`)
}

// keysMigration is migration 24 on either backend, with its time type.
func keysMigration(timeType string) string {
	return strings.NewReplacer("TIME", timeType).Replace(`
	ALTER TABLE teams ADD COLUMN deleted_at TIME;
	CREATE UNIQUE INDEX teams_name ON teams(name) WHERE deleted_at IS NULL;
	ALTER TABLE api_keys ADD COLUMN id TEXT NOT NULL DEFAULT '';
	UPDATE api_keys SET id = 'ak_' || substr(hash, 1, 20);
	CREATE UNIQUE INDEX api_keys_id ON api_keys(id);
	ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
	ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
	UPDATE api_keys SET scopes = 'operator', name = 'first key';
	ALTER TABLE api_keys ADD COLUMN last_used_at TIME;
	ALTER TABLE api_keys ADD COLUMN expires_at TIME;
	ALTER TABLE api_keys ADD COLUMN revoked_at TIME;
	CREATE INDEX api_keys_team ON api_keys(team_id, created_at, id);`)
}

// migrationDiskMB is migration 27, the same SQL on both backends.
const migrationDiskMB = `ALTER TABLE machines ADD COLUMN disk_mb INTEGER NOT NULL DEFAULT 0;`
