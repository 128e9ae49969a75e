// Package sqlstore implements store.Store in SQL. SQLite (embedded, through
// a pure-Go driver, so the server binary stays static and needs nothing
// else on a single node) is the default.
//
// Writes go through one connection: SQLite serializes writers anyway, and a
// single writer never sees SQLITE_BUSY.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// DB is the SQLite state store.
type DB struct {
	db *sql.DB
}

// migrations are applied in order; PRAGMA user_version records how many ran.
var migrations = []string{
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
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &DB{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

func (s *DB) migrate(ctx context.Context) error {
	var version int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	for i := version; i < len(migrations); i++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// CreateTeam stores a team.
func (s *DB) CreateTeam(ctx context.Context, t store.Team) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)`,
		t.ID, t.Name, formatTime(t.CreatedAt))
	if err != nil {
		return fmt.Errorf("create team %s: %w", t.Name, err)
	}
	return nil
}

// CountTeams returns how many teams exist.
func (s *DB) CountTeams(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM teams`).Scan(&n)
	return n, err
}

// AddAPIKey stores the hash of an API key for a team.
func (s *DB) AddAPIKey(ctx context.Context, teamID, hash, prefix string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO api_keys (hash, team_id, prefix, created_at) VALUES (?, ?, ?, ?)`,
		hash, teamID, prefix, formatTime(now))
	if err != nil {
		return fmt.Errorf("add api key: %w", err)
	}
	return nil
}

// TeamByKeyHash returns the team owning the API key with this hash.
func (s *DB) TeamByKeyHash(ctx context.Context, hash string) (string, error) {
	var team string
	err := s.db.QueryRowContext(ctx, `SELECT team_id FROM api_keys WHERE hash = ?`, hash).Scan(&team)
	if errors.Is(err, sql.ErrNoRows) {
		return "", errdefs.ErrUnauthenticated
	}
	if err != nil {
		return "", fmt.Errorf("look up api key: %w", err)
	}
	return team, nil
}

const machineColumns = `id, team_id, state, template, cpu_count, memory_mb, env, metadata, allow_internet,
	slot, container_id, agent_token, created_at, started_at, ended_at, error,
	lineage_id, lineage_seq, snapshot_id, restored_from, volumes, hooks, agent_dir,
	timeout_ms, on_timeout, auto_resume, deadline, idle_timeout_ms, persistence,
	command, main_pid, main_exit, public_ports, latest, lineage_created, checkpoint_retention, failure_reason, origin`

// CreateMachine stores a new machine and gives it, in the same transaction,
// the lowest free network slot (slots bounds the pool).
func (s *DB) CreateMachine(ctx context.Context, m *store.Machine, slots int) error {
	return s.withFreeSlot(ctx, "create machine "+m.ID, slots, func(tx *sql.Tx, slot int) error {
		m.Slot = slot
		return insertMachine(ctx, tx, m)
	})
}

// withFreeSlot runs fn with the lowest free network slot in the
// transaction that takes it (slots bounds the pool).
func (s *DB) withFreeSlot(ctx context.Context, what string, slots int, fn func(tx *sql.Tx, slot int) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback()
	slot, err := freeSlot(ctx, tx, slots)
	if err != nil {
		return err
	}
	if err := fn(tx, slot); err != nil {
		return err
	}
	return tx.Commit()
}

// CreateMachineFromSpare stores a new machine that takes over a spare: the
// spare's row goes and the machine gets its id, container and slot, in one
// transaction. It fails if the spare is gone.
func (s *DB) CreateMachineFromSpare(ctx context.Context, m *store.Machine, sp store.Spare) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create machine: %w", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM spares WHERE machine_id = ?`, sp.MachineID)
	if err != nil {
		return fmt.Errorf("take spare %s: %w", sp.MachineID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("take spare %s: it is gone", sp.MachineID)
	}
	m.ID, m.ContainerID, m.Slot = sp.MachineID, sp.ContainerID, sp.Slot
	if err := insertMachine(ctx, tx, m); err != nil {
		return err
	}
	return tx.Commit()
}

// insertMachine stores a new machine as the latest execution of its
// lineage.
func insertMachine(ctx context.Context, tx *sql.Tx, m *store.Machine) error {
	if m.LineageID == "" {
		m.LineageID = m.ID
	}
	// The lineage's position in lists is its first machine's creation,
	// which the latest row carries on (older rows may have been deleted).
	var created sql.NullString
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(lineage_seq), 0) + 1,
		(SELECT lineage_created FROM machines WHERE lineage_id = ? AND latest = 1) FROM machines WHERE lineage_id = ?`,
		m.LineageID, m.LineageID).Scan(&m.LineageSeq, &created); err != nil {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	m.LineageCreated = m.CreatedAt
	if created.Valid {
		m.LineageCreated = parseTime(created.String)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE machines SET latest = 0 WHERE lineage_id = ? AND latest = 1`, m.LineageID); err != nil {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	m.Latest = true
	for k, v := range m.Metadata {
		if _, err := tx.ExecContext(ctx, `INSERT INTO machine_metadata (machine_id, key, value) VALUES (?, ?, ?)`, m.ID, k, v); err != nil {
			return fmt.Errorf("metadata of machine %s: %w", m.ID, err)
		}
	}
	for _, v := range m.Volumes {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO machine_volumes (machine_id, name) VALUES (?, ?)`, m.ID, v.Name); err != nil {
			return fmt.Errorf("volumes of machine %s: %w", m.ID, err)
		}
	}
	env, _ := json.Marshal(nonNil(m.Env))
	meta, _ := json.Marshal(nonNil(m.Metadata))
	vols, _ := json.Marshal(nonNilSlice(m.Volumes))
	hooks, _ := json.Marshal(m.Hooks)
	cmd, _ := json.Marshal(nonNilSlice(m.Command))
	_, err := tx.ExecContext(ctx, `INSERT INTO machines (`+machineColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		m.ID, m.TeamID, m.State, m.Template, m.CPUCount, m.MemoryMB, string(env), string(meta), m.AllowInternet,
		m.Slot, m.ContainerID, m.AgentToken, formatTime(m.CreatedAt), nullTime(m.StartedAt), nullTime(m.EndedAt), m.Error,
		m.LineageID, m.LineageSeq, m.SnapshotID, m.RestoredFrom, string(vols), string(hooks), m.AgentDir,
		m.TimeoutMS, onTimeoutOr(m.OnTimeout), m.AutoResume, optTime(m.Deadline), m.IdleTimeoutMS, persistenceOr(m.Persistence),
		string(cmd), m.MainPID, mainExitJSON(m.MainExit), m.PublicPorts, m.Latest, formatTime(m.LineageCreated), m.CheckpointRetention, m.FailureReason, m.Origin)
	if err != nil {
		return fmt.Errorf("insert machine %s: %w", m.ID, err)
	}
	return nil
}

// freeSlot returns the lowest slot that no machine and no spare holds. A
// machine holds its slot until it sets it to -1, which it does only after
// tearing the slot's network down: a slot is never handed out while the
// namespace of its previous holder may still be removed.
func freeSlot(ctx context.Context, tx *sql.Tx, slots int) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT slot FROM machines WHERE slot >= 0 UNION SELECT slot FROM spares ORDER BY slot`)
	if err != nil {
		return 0, fmt.Errorf("allocate slot: %w", err)
	}
	defer rows.Close()
	next := 0
	for rows.Next() {
		var used int
		if err := rows.Scan(&used); err != nil {
			return 0, err
		}
		if used > next {
			break
		}
		if used == next {
			next++
		}
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if next >= slots {
		return 0, errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
			fmt.Sprintf("all %d network slots are in use", slots), "kill unused machines or configure a larger --network-cidr")
	}
	return next, nil
}

// UpdateMachine writes a machine's mutable fields.
func (s *DB) UpdateMachine(ctx context.Context, m *store.Machine) error {
	return updateMachine(ctx, s.db, m)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func updateMachine(ctx context.Context, db execer, m *store.Machine) error {
	res, err := db.ExecContext(ctx, `UPDATE machines SET state=?, slot=?, container_id=?, started_at=?, ended_at=?, error=?, failure_reason=?,
		snapshot_id=?, agent_token=?, restored_from=?, timeout_ms=?, on_timeout=?, auto_resume=?, deadline=? WHERE id=?`,
		m.State, m.Slot, m.ContainerID, nullTime(m.StartedAt), nullTime(m.EndedAt), m.Error, m.FailureReason,
		m.SnapshotID, m.AgentToken, m.RestoredFrom, m.TimeoutMS, onTimeoutOr(m.OnTimeout), m.AutoResume, optTime(m.Deadline), m.ID)
	if err != nil {
		return fmt.Errorf("update machine %s: %w", m.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("update machine %s: %w", m.ID, errdefs.ErrNotFound)
	}
	return nil
}

// SetMain records that a machine's main process started anew (a boot or a
// start) as pid, and has not exited. UpdateMachine leaves main_pid and
// main_exit alone, so a lifecycle operation holding an older copy of the
// record never undoes what a wait recorded.
func (s *DB) SetMain(ctx context.Context, id string, pid int) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE machines SET main_pid=?, main_exit='' WHERE id=?`, pid, id); err != nil {
		return fmt.Errorf("record main process of machine %s: %w", id, err)
	}
	return nil
}

// SetMainExit records how main process pid of a machine ended, unless the
// machine has started another main process since or the exit is recorded
// already; recorded says whether this call recorded it.
func (s *DB) SetMainExit(ctx context.Context, id string, pid int, exit *api.MainExit) (recorded bool, err error) {
	res, err := s.db.ExecContext(ctx, `UPDATE machines SET main_exit=? WHERE id=? AND main_pid=? AND main_exit=''`,
		mainExitJSON(exit), id, pid)
	if err != nil {
		return false, fmt.Errorf("record main process exit of machine %s: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func mainExitJSON(e *api.MainExit) string {
	if e == nil {
		return ""
	}
	b, _ := json.Marshal(e)
	return string(b)
}

// DeleteMachine removes a machine's record (a create or resume undone);
// if it was its lineage's latest execution, the one before it is again.
func (s *DB) DeleteMachine(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete machine %s: %w", id, err)
	}
	defer tx.Rollback()
	var lineage string
	var latest bool
	err = tx.QueryRowContext(ctx, `SELECT lineage_id, latest FROM machines WHERE id=?`, id).Scan(&lineage, &latest)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete machine %s: %w", id, err)
	}
	for _, q := range []string{`DELETE FROM machines WHERE id=?`, `DELETE FROM machine_metadata WHERE machine_id=?`, `DELETE FROM machine_volumes WHERE machine_id=?`} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return fmt.Errorf("delete machine %s: %w", id, err)
		}
	}
	if latest {
		if _, err := tx.ExecContext(ctx, `UPDATE machines SET latest = 1 WHERE id = (SELECT id FROM machines WHERE lineage_id = ? ORDER BY lineage_seq DESC LIMIT 1)`, lineage); err != nil {
			return fmt.Errorf("delete machine %s: %w", id, err)
		}
	}
	return tx.Commit()
}

// GetMachine returns a machine by id, or an error matching errdefs.ErrNotFound.
func (s *DB) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+machineColumns+` FROM machines WHERE id=?`, id)
	m, err := scanMachine(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("machine %s: %w", id, errdefs.ErrNotFound)
	}
	return m, err
}

// LineageHead returns the latest execution of a lineage (the one with the
// highest lineage_seq), in one indexed lookup.
func (s *DB) LineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+machineColumns+` FROM machines WHERE lineage_id=? ORDER BY lineage_seq DESC LIMIT 1`, lineageID)
	m, err := scanMachine(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("lineage %s: %w", lineageID, errdefs.ErrNotFound)
	}
	return m, err
}

// ListMachines returns machines matching f, oldest first.
func (s *DB) ListMachines(ctx context.Context, f store.MachineFilter) ([]*store.Machine, error) {
	var w where
	w.eq("team_id", f.TeamID)
	w.in("state", f.States)
	w.eq("template", f.Template)
	w.eq("lineage_id", f.LineageID)
	w.eq("restored_from", f.RestoredFrom)
	return queryAll(ctx, s.db, "list machines", `SELECT `+machineColumns+` FROM machines`+w.sql()+" ORDER BY created_at, id", w.args, scanMachine)
}

// where builds the WHERE clause of a list query from a filter: empty
// values match everything.
type where struct {
	conds []string
	args  []any
}

func (w *where) eq(col, v string) {
	if v != "" {
		w.conds = append(w.conds, col+" = ?")
		w.args = append(w.args, v)
	}
}

func (w *where) in(col string, vals []string) {
	if len(vals) > 0 {
		w.conds = append(w.conds, col+" IN ("+placeholders(len(vals))+")")
		w.args = append(w.args, anySlice(vals)...)
	}
}

// cond adds a condition with one argument.
func (w *where) cond(c string, arg any) {
	w.conds = append(w.conds, c)
	w.args = append(w.args, arg)
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// queryAll runs a query and scans every row with scan.
func queryAll[T any](ctx context.Context, db *sql.DB, what, q string, args []any, scan func(scanner) (T, error)) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

type scanner interface{ Scan(...any) error }

func scanMachine(r scanner) (*store.Machine, error) {
	var m store.Machine
	var env, meta, created, vols, hooks, deadline, cmd, exit, lineageCreated string
	var started, ended sql.NullString
	err := r.Scan(&m.ID, &m.TeamID, &m.State, &m.Template, &m.CPUCount, &m.MemoryMB, &env, &meta, &m.AllowInternet,
		&m.Slot, &m.ContainerID, &m.AgentToken, &created, &started, &ended, &m.Error,
		&m.LineageID, &m.LineageSeq, &m.SnapshotID, &m.RestoredFrom, &vols, &hooks, &m.AgentDir,
		&m.TimeoutMS, &m.OnTimeout, &m.AutoResume, &deadline, &m.IdleTimeoutMS, &m.Persistence,
		&cmd, &m.MainPID, &exit, &m.PublicPorts, &m.Latest, &lineageCreated, &m.CheckpointRetention, &m.FailureReason, &m.Origin)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(cmd), &m.Command); err != nil {
		return nil, fmt.Errorf("machine %s command: %w", m.ID, err)
	}
	if len(m.Command) == 0 {
		m.Command = nil
	}
	if exit != "" {
		m.MainExit = new(api.MainExit)
		if err := json.Unmarshal([]byte(exit), m.MainExit); err != nil {
			return nil, fmt.Errorf("machine %s main exit: %w", m.ID, err)
		}
	}
	if err := json.Unmarshal([]byte(vols), &m.Volumes); err != nil {
		return nil, fmt.Errorf("machine %s volumes: %w", m.ID, err)
	}
	if err := json.Unmarshal([]byte(hooks), &m.Hooks); err != nil {
		return nil, fmt.Errorf("machine %s hooks: %w", m.ID, err)
	}
	if err := json.Unmarshal([]byte(env), &m.Env); err != nil {
		return nil, fmt.Errorf("machine %s env: %w", m.ID, err)
	}
	if err := json.Unmarshal([]byte(meta), &m.Metadata); err != nil {
		return nil, fmt.Errorf("machine %s metadata: %w", m.ID, err)
	}
	m.CreatedAt = parseTime(created)
	m.StartedAt = parseTime(started.String)
	m.EndedAt = parseTime(ended.String)
	m.Deadline = parseTime(deadline)
	m.LineageCreated = parseTime(lineageCreated)
	return &m, nil
}

// optTime stores a time that may be zero as the empty string (the column
// is NOT NULL).
func optTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return formatTime(t)
}

func persistenceOr(s string) string {
	if s == "" {
		return "persistent"
	}
	return s
}

func onTimeoutOr(s string) string {
	if s == "" {
		return "destroy"
	}
	return s
}

// timeFormat is RFC 3339 with a fixed-width fraction, so that stored times
// sort as text.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

func formatTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return formatTime(t)
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// AssignSlot gives an existing machine that holds none (a paused one) the
// lowest free network slot.
func (s *DB) AssignSlot(ctx context.Context, m *store.Machine, slots int) error {
	return s.withFreeSlot(ctx, "assign slot to "+m.ID, slots, func(tx *sql.Tx, slot int) error {
		if _, err := tx.ExecContext(ctx, `UPDATE machines SET slot=? WHERE id=?`, slot, m.ID); err != nil {
			return fmt.Errorf("assign slot to %s: %w", m.ID, err)
		}
		m.Slot = slot
		return nil
	})
}

// CountMachines returns how many machines are in each state.
func (s *DB) CountMachines(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT state, count(*) FROM machines GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count machines: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		out[state] = n
	}
	return out, rows.Err()
}

// SnapshotBytesByKind returns the size of the committed snapshots by kind.
func (s *DB) SnapshotBytesByKind(ctx context.Context) (map[string]int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT kind, coalesce(sum(size_bytes), 0) FROM snapshots WHERE state = ? GROUP BY kind`, store.SnapshotReady)
	if err != nil {
		return nil, fmt.Errorf("snapshot bytes: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var kind string
		var n int64
		if err := rows.Scan(&kind, &n); err != nil {
			return nil, err
		}
		out[kind] = n
	}
	return out, rows.Err()
}

// SnapshotBytes returns the size of the committed snapshots.
func (s *DB) SnapshotBytes(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT coalesce(sum(size_bytes), 0) FROM snapshots WHERE state = ?`, store.SnapshotReady).Scan(&n)
	return n, err
}

// PruneEnded deletes the rows of machines that were killed or failed
// before before, with their metadata (a lineage's latest row only once
// every row of the lineage has ended), and the rows of snapshots pruned by
// retention that were taken before it. It returns how many machine rows
// it deleted.
func (s *DB) PruneEnded(ctx context.Context, before time.Time) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("prune ended machines: %w", err)
	}
	defer tx.Rollback()
	cutoff := formatTime(before)
	// A lineage's latest row goes only with the whole lineage: were it
	// deleted while a paused alias stays, that alias would look like the
	// latest state and a connect would resume an older one.
	const ended = `SELECT id FROM machines WHERE state IN ('killed', 'failed') AND ended_at IS NOT NULL AND ended_at < ?
		AND (latest = 0 OR lineage_id NOT IN (SELECT lineage_id FROM machines WHERE state NOT IN ('killed', 'failed')))`
	for _, table := range []string{"machine_metadata", "machine_volumes"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE machine_id IN (`+ended+`)`, cutoff); err != nil {
			return 0, fmt.Errorf("prune ended machines: %w", err)
		}
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM machines WHERE id IN (`+ended+`)`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("prune ended machines: %w", err)
	}
	n, _ := res.RowsAffected()
	if _, err := tx.ExecContext(ctx, `DELETE FROM snapshots WHERE state = ? AND created_at < ?`, store.SnapshotPruned, cutoff); err != nil {
		return 0, fmt.Errorf("prune ended machines: %w", err)
	}
	return n, tx.Commit()
}

var _ store.Store = (*DB)(nil)
