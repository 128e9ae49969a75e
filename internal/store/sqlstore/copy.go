package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Copying a database into another: `nullspace store copy` moves a single
// node's SQLite file into PostgreSQL when a team outgrows one box. Every
// row is copied as it is (ids, lineage sequence numbers, latest flags,
// versions, event numbers, times), read with the source's types and
// written with the target's, in one transaction on the target.
//
// Not copied:
//   - spares: containers created ahead of restores on the source's host,
//     which do not exist anywhere else (a server makes new ones);
//   - each backend's own bookkeeping: the schema version (made by Open)
//     and the event counter (set from the source's, see lastEventSeq).

// kind is how a column's values are stored; times and flags differ
// between the backends, text and integers do not.
type kind int

const (
	kindText kind = iota
	kindInt
	// kindFlag is INTEGER 0/1 on SQLite, BOOLEAN on PostgreSQL.
	kindFlag
	// kindAt is a time that is never zero: text on SQLite, timestamptz
	// on PostgreSQL (the at argument).
	kindAt
	// kindOptAt is a time whose zero is the empty string on SQLite and
	// NULL on PostgreSQL (optAt).
	kindOptAt
	// kindNullAt is a time whose zero is NULL on both (nullAt).
	kindNullAt
)

type column struct {
	name string
	kind kind
}

type copyTable struct {
	name string
	cols []column
}

// copyTables are the tables Copy copies, parents before the tables whose
// foreign keys name them. Each column is NAME or NAME:KIND (int, flag, at,
// optat, nullat; text without one). TestCopyCoversSchema fails when a
// migration adds a table or a column that is not here.
var copyTables = tables(
	"teams: id name created_at:at deleted_at:nullat",
	"api_keys: hash team_id prefix created_at:at id name scopes last_used_at:nullat expires_at:nullat revoked_at:nullat",
	`machines: id team_id state template cpu_count:int memory_mb:int env metadata allow_internet:flag
		slot:int container_id agent_token created_at:at started_at:nullat ended_at:nullat error
		lineage_id lineage_seq:int snapshot_id restored_from volumes hooks agent_dir
		timeout_ms:int on_timeout auto_resume:flag deadline:optat idle_timeout_ms:int persistence
		command main_pid:int main_exit public_ports:flag latest:flag lineage_created:optat
		checkpoint_retention:int failure_reason origin version:int disk_mb:int node_id`,
	"machine_metadata: machine_id key value",
	"machine_volumes: machine_id name",
	`snapshots: id team_id kind state machine_id lineage_id template parent_id generation:int
		size_bytes:int checksum pause_window_ms:int created_at:at host spec files agent_token pinned:flag name durable:flag`,
	"volumes: team_id name created_at:at",
	"events: seq:int team_id type machine_id time:at cause details",
	"cursors: name seq:int",
	"ssh_keys: id team_id name fingerprint public_key created_at:at",
	"cluster_secrets: name value updated_at:optat",
	"team_quotas: team_id running_machines:int vcpus:int memory_mb:int snapshot_bytes:int creates_per_minute:int api_rate:int api_burst:int",
	"idempotency_keys: team_id key route request_hash status:int body created_at:at",
	"audit_log: id time:at team_id actor_team_id actor_key_id action target outcome source details",
	"usage_records: id kind team_id machine_id lineage_id snapshot_id started_at:at ended_at:at vcpus:int memory_mb:int bytes:int",
)

// notCopied are the tables Copy leaves out, and why.
var notCopied = map[string]string{
	"spares":            "containers of the source's host",
	"nodes":             "the source's cluster members: nodes join the target anew",
	"event_seq":         "set from the source's last event number",
	"schema_migrations": "each database's own schema version",
	"sqlite_sequence":   "set from the source's last event number",
}

func tables(specs ...string) []copyTable {
	var out []copyTable
	kinds := map[string]kind{"": kindText, "int": kindInt, "flag": kindFlag, "at": kindAt, "optat": kindOptAt, "nullat": kindNullAt}
	for _, spec := range specs {
		name, cols, _ := strings.Cut(spec, ":")
		t := copyTable{name: name}
		for _, f := range strings.Fields(cols) {
			col, k, _ := strings.Cut(f, ":")
			kd, ok := kinds[k]
			if !ok {
				panic(fmt.Sprintf("copy table %s: column %s: unknown kind %q", name, col, k))
			}
			t.cols = append(t.cols, column{col, kd})
		}
		out = append(out, t)
	}
	return out
}

// TableCount is how many rows of a table a copy wrote.
type TableCount struct {
	Table string
	Rows  int64
}

// CopyStats says what Copy copied.
type CopyStats struct {
	// Tables are the copied tables, in the order they were written.
	Tables []TableCount
	// Rows is the sum of Tables' rows.
	Rows int64
	// SparesSkipped counts the source's spares, which are not copied.
	SparesSkipped int64
	// LastEventSeq is the target's event counter after the copy: its next
	// event is numbered above it.
	LastEventSeq int64
}

// Copy copies every record of from into to, which must be empty and at
// the same schema version, in one transaction on to: either all of it is
// there, or none. See CopyWithProgress.
func Copy(ctx context.Context, from, to *DB) (CopyStats, error) {
	return CopyWithProgress(ctx, from, to, nil)
}

// CopyWithProgress is Copy, calling progress (if not nil) after each table
// is written into the transaction, before the commit.
func CopyWithProgress(ctx context.Context, from, to *DB, progress func(TableCount)) (CopyStats, error) {
	if from == to {
		return CopyStats{}, errors.New("copy a database into itself")
	}
	src, err := from.db.BeginTx(ctx, from.d.readTxOptions())
	if err != nil {
		return CopyStats{}, fmt.Errorf("read source: %w", from.d.classify(err))
	}
	defer src.Rollback() // only reads
	sc := conn{q: src, d: from.d}

	// One attempt, not inTx's retries: nothing else writes into an empty
	// target, and progress is reported once.
	var stats CopyStats
	err = to.tryTx(ctx, func(dst conn) error {
		if err := sameVersion(ctx, sc, dst); err != nil {
			return err
		}
		if err := ensureEmpty(ctx, dst); err != nil {
			return err
		}
		for _, t := range copyTables {
			n, err := copyRows(ctx, sc, dst, t)
			if err != nil {
				return fmt.Errorf("table %s: %w", t.name, err)
			}
			stats.Tables = append(stats.Tables, TableCount{Table: t.name, Rows: n})
			stats.Rows += n
			if progress != nil {
				progress(TableCount{Table: t.name, Rows: n})
			}
		}
		// The target's next event comes after every number the source
		// gave, stored or pruned, and after every consumer's position:
		// a webhook cursor at n waits for n+1, which must be a new event.
		var maxSeq int64
		for _, q := range []string{`SELECT coalesce(max(seq), 0) FROM events`, `SELECT coalesce(max(seq), 0) FROM cursors`} {
			var n int64
			if err := sc.queryRow(ctx, q).Scan(&n); err != nil {
				return fmt.Errorf("last event number: %w", err)
			}
			maxSeq = max(maxSeq, n)
		}
		last, err := lastEventSeq(ctx, sc)
		if err != nil {
			return err
		}
		stats.LastEventSeq = max(maxSeq, last)
		if err := setLastEventSeq(ctx, dst, stats.LastEventSeq); err != nil {
			return err
		}
		return sc.queryRow(ctx, `SELECT count(*) FROM spares`).Scan(&stats.SparesSkipped)
	})
	if err != nil {
		return CopyStats{}, fmt.Errorf("copy: %w", err)
	}
	return stats, nil
}

// readTxOptions makes a source's reads one consistent snapshot. SQLite's
// transactions are that already (and its write lock at BEGIN keeps
// writers out); PostgreSQL's need repeatable read.
func (d *dialect) readTxOptions() *sql.TxOptions {
	if d == postgresDialect {
		return &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	return nil
}

// sameVersion refuses databases at different schema versions: the
// columns copied are those of one version.
func sameVersion(ctx context.Context, src, dst conn) error {
	sv, err := schemaOf(src.d).version(ctx, src)
	if err != nil {
		return fmt.Errorf("source schema version: %w", err)
	}
	dv, err := schemaOf(dst.d).version(ctx, dst)
	if err != nil {
		return fmt.Errorf("target schema version: %w", err)
	}
	if sv != dv {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			fmt.Sprintf("the source's schema is version %d, the target's %d", sv, dv),
			"open both with the same nullspace, which migrates each to its version")
	}
	return nil
}

func schemaOf(d *dialect) schema {
	if d == postgresDialect {
		return postgresSchema
	}
	return sqliteSchema
}

// ensureEmpty refuses a target that holds any record: a copy adds a
// node's whole state, it does not merge two.
func ensureEmpty(ctx context.Context, dst conn) error {
	for _, t := range copyTables {
		var n int64
		if err := dst.queryRow(ctx, `SELECT count(*) FROM `+t.name).Scan(&n); err != nil {
			return fmt.Errorf("check target is empty: %w", err)
		}
		if n > 0 {
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
				fmt.Sprintf("the target database is not empty (%s has %d rows): the target must be empty", t.name, n),
				"copy into a new database (createdb NAME), before any server has run on it; a server's first start adds a team")
		}
	}
	return nil
}

// copyBatchArgs bounds the arguments of one INSERT (SQLite allows 32766,
// PostgreSQL 65535).
const copyBatchArgs = 4000

// copyRows copies table t's rows from src to dst, several rows per INSERT,
// and returns how many it copied.
func copyRows(ctx context.Context, src, dst conn, t copyTable) (int64, error) {
	names := make([]string, len(t.cols))
	for i, c := range t.cols {
		names[i] = c.name
	}
	list := strings.Join(names, ", ")
	rows, err := src.query(ctx, `SELECT `+list+` FROM `+t.name)
	if err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	defer rows.Close()

	perBatch := max(1, copyBatchArgs/len(t.cols))
	tuple := "(" + placeholders(len(t.cols)) + ")"
	var n int64
	var batch []any
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		k := len(batch) / len(t.cols)
		q := `INSERT INTO ` + t.name + ` (` + list + `) VALUES ` + strings.TrimSuffix(strings.Repeat(tuple+",", k), ",")
		if _, err := dst.exec(ctx, q, batch...); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		n += int64(k)
		batch = batch[:0]
		return nil
	}
	for rows.Next() {
		vals, err := scanColumns(rows, t.cols)
		if err != nil {
			return 0, fmt.Errorf("read: %w", src.d.classify(err))
		}
		batch = append(batch, vals...)
		if len(batch) >= perBatch*len(t.cols) {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read: %w", src.d.classify(err))
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return n, nil
}

// scanColumns reads a row with the scan of each column's kind, and
// returns the arguments that write it in any dialect (conn.exec converts
// the time kinds).
func scanColumns(r scanner, cols []column) ([]any, error) {
	dest := make([]any, len(cols))
	strs := make([]string, len(cols))
	ints := make([]int64, len(cols))
	flags := make([]bool, len(cols))
	times := make([]time.Time, len(cols))
	for i, c := range cols {
		switch c.kind {
		case kindText:
			dest[i] = &strs[i]
		case kindInt:
			dest[i] = &ints[i]
		case kindFlag:
			dest[i] = &flags[i]
		default:
			dest[i] = timeDest{&times[i]}
		}
	}
	if err := r.Scan(dest...); err != nil {
		return nil, err
	}
	out := make([]any, len(cols))
	for i, c := range cols {
		switch c.kind {
		case kindText:
			out[i] = strs[i]
		case kindInt:
			out[i] = ints[i]
		case kindFlag:
			out[i] = flags[i]
		case kindAt:
			out[i] = at(times[i])
		case kindOptAt:
			out[i] = optAt(times[i])
		case kindNullAt:
			out[i] = nullAt(times[i])
		}
	}
	return out, nil
}

// lastEventSeq is the highest event number the database has given, which
// is above every stored event's when the newest were pruned: SQLite's
// AUTOINCREMENT counter, PostgreSQL's event_seq row.
func lastEventSeq(ctx context.Context, c conn) (int64, error) {
	q := `SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)`
	if c.d == postgresDialect {
		q = `SELECT n FROM event_seq WHERE id = 1`
	}
	var n int64
	if err := c.queryRow(ctx, q).Scan(&n); err != nil {
		return 0, fmt.Errorf("last event number: %w", err)
	}
	return n, nil
}

// setLastEventSeq makes the database's next event number n+1.
func setLastEventSeq(ctx context.Context, c conn, n int64) error {
	var err error
	if c.d == postgresDialect {
		_, err = c.exec(ctx, `UPDATE event_seq SET n = ? WHERE id = 1`, n)
	} else if _, err = c.exec(ctx, `DELETE FROM sqlite_sequence WHERE name = 'events'`); err == nil {
		_, err = c.exec(ctx, `INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)`, n)
	}
	if err != nil {
		return fmt.Errorf("set last event number: %w", err)
	}
	return nil
}
