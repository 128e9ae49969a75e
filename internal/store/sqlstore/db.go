package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// DB is the SQL state store, on SQLite or on PostgreSQL. The queries are
// the same text for both; the dialect holds what differs (placeholders,
// time columns, locks, error codes).
type DB struct {
	db *sql.DB
	d  *dialect
	// clock is when the usage ledger's records that end now end (unset:
	// time.Now); see SetClock.
	clock atomic.Pointer[func() time.Time]
	// f is the node the store writes for, and its fence.
	f *fence
}

// SetClock makes now the clock of the usage ledger's end times (nil:
// time.Now), for tests.
func (s *DB) SetClock(now func() time.Time) {
	if now == nil {
		s.clock.Store(nil)
		return
	}
	s.clock.Store(&now)
}

// now is the ledger's time, cut to what the store keeps.
func (s *DB) now() time.Time {
	t := time.Now()
	if fn := s.clock.Load(); fn != nil {
		t = (*fn)()
	}
	return t.UTC().Truncate(time.Microsecond)
}

var _ store.Store = (*DB)(nil)

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

// conn is the pool or a transaction, with the dialect that rebinds its
// queries and classifies its errors.
type conn struct {
	q interface {
		ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
		QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
		QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	}
	d *dialect
	// now is the owning DB's clock (nil in a copy's source).
	now func() time.Time
	// f is the owning DB's node and fence (nil in a copy's source).
	f *fence
}

func (s *DB) c() conn { return conn{q: s.db, d: s.d, now: s.now, f: s.f} }

func (c conn) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	res, err := c.q.ExecContext(ctx, c.d.rebind(q), c.d.args(args)...)
	return res, c.d.classify(err)
}

func (c conn) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	rows, err := c.q.QueryContext(ctx, c.d.rebind(q), c.d.args(args)...)
	return rows, c.d.classify(err)
}

// queryRow's Scan classifies errors as exec's do (sql.ErrNoRows stays
// matchable with errors.Is).
func (c conn) queryRow(ctx context.Context, q string, args ...any) row {
	return row{r: c.q.QueryRowContext(ctx, c.d.rebind(q), c.d.args(args)...), d: c.d}
}

type row struct {
	r *sql.Row
	d *dialect
}

func (r row) Scan(dest ...any) error { return r.d.classify(r.r.Scan(dest...)) }

// exactlyOne says whether a write changed one row.
func exactlyOne(res sql.Result) bool {
	n, _ := res.RowsAffected()
	return n == 1
}

// inTx runs fn in a transaction and commits it. On PostgreSQL a
// serialization failure or a deadlock (both say "run it again") retries
// the whole transaction, a few times with jittered backoff; fn must be
// safe to run again (it only touches the database and its own locals).
func (s *DB) inTx(ctx context.Context, what string, fn func(c conn) error) error {
	const attempts = 5
	for i := 0; ; i++ {
		err := s.tryTx(ctx, fn)
		if err == nil || i == attempts-1 || !s.d.retryable(err) {
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		}
		wait := time.Duration(1<<i)*5*time.Millisecond + time.Duration(rand.Int64N(int64(5*time.Millisecond)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func (s *DB) tryTx(ctx context.Context, fn func(c conn) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.d.classify(err)
	}
	defer tx.Rollback()
	if err := fn(conn{q: tx, d: s.d, now: s.now, f: s.f}); err != nil {
		return err
	}
	return s.d.classify(tx.Commit())
}

// queryAll runs a query and scans every row with scan.
func queryAll[T any](ctx context.Context, c conn, what, q string, args []any, scan func(scanner) (T, error)) ([]T, error) {
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, c.d.classify(err)
		}
		out = append(out, v)
	}
	return out, c.d.classify(rows.Err())
}

type scanner interface{ Scan(...any) error }

// Times. SQLite keeps them as text in a fixed-width RFC 3339 form (so that
// they sort as text), PostgreSQL as timestamptz. Both keep microseconds:
// PostgreSQL stores no finer, and a time must read back equal wherever it
// was written.

// at is a time argument that is never zero.
type at time.Time

// optAt is a time argument that may be zero, for a NOT NULL column of
// SQLite's (” is zero) that PostgreSQL makes nullable.
type optAt time.Time

// nullAt is a time argument that may be zero, stored as NULL on both.
type nullAt time.Time

// timeDest scans a time column of either backend (NULL and ” are zero).
type timeDest struct{ t *time.Time }

func (d timeDest) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*d.t = time.Time{}
	case string:
		*d.t = parseTime(v)
	case []byte:
		*d.t = parseTime(string(v))
	case time.Time:
		*d.t = v.UTC()
	default:
		return fmt.Errorf("scan time: unexpected %T", src)
	}
	return nil
}

// timeFormat is RFC 3339 with a fixed-width fraction, so that stored times
// sort as text.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// formatTime does not cut to microseconds: rows written before this
// version keep nanoseconds, and a cursor made of one must compare equal to
// it. Machine times are cut when written (keptTimes), so new rows agree
// with PostgreSQL's.
func formatTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t.UTC()
}

// dialect is what SQLite and PostgreSQL do differently.
type dialect struct {
	name string
	// dollar: placeholders are $1, $2, ... (PostgreSQL), not ?.
	dollar bool
	// textTimes: times are stored as text (SQLite).
	textTimes bool
	// forUpdate locks the rows a SELECT reads until the transaction ends
	// (PostgreSQL); SQLite's write transactions lock the whole database at
	// BEGIN (_txlock=immediate), so it needs none.
	forUpdate string
	// forShare is forUpdate for a lock that other readers share.
	forShare string
	// lock serializes the transactions that take the same key, until they
	// end ("" where a write transaction already excludes every other);
	// lockNamed the same for a key and a name (a lineage).
	lock, lockNamed string
	// jsonInt extracts an integer field of a JSON text column.
	jsonInt func(col, field string) string
	// unique reports whether err is a unique-constraint violation.
	unique func(err error) bool
	// unavailable reports whether err means the database could not be
	// reached (the operation may succeed if retried later).
	unavailable func(err error) bool
	// retryable reports whether the transaction should run again.
	retryable func(err error) bool
}

// Advisory lock keys (PostgreSQL): one per read-then-write sequence that
// no row lock covers.
const (
	lockSlots   = 7301 // the free-slot scan of machines and spares
	lockMigrate = 7302 // schema migrations of servers starting at once
	lockLineage = 7303 // inserts into one lineage (with its id)
	lockLeader  = 7304 // the cluster's leader (a session lock)
)

// lockTxNamed takes lock key for name for the rest of the transaction
// (a no-op on SQLite).
func lockTxNamed(ctx context.Context, c conn, key int32, name string) error {
	if c.d.lockNamed == "" {
		return nil
	}
	_, err := c.exec(ctx, c.d.lockNamed, key, name)
	return err
}

// lockTx takes lock key for the rest of the transaction (a no-op on
// SQLite, whose write transactions exclude each other).
func lockTx(ctx context.Context, c conn, key int64) error {
	if c.d.lock == "" {
		return nil
	}
	_, err := c.exec(ctx, c.d.lock, key)
	return err
}

// rebind turns ? placeholders into $n for PostgreSQL. The queries of this
// package have no ? inside string literals, but rebind skips them anyway.
func (d *dialect) rebind(q string) string {
	if !d.dollar {
		return q
	}
	var b strings.Builder
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		switch ch := q[i]; {
		case ch == '\'':
			quoted = !quoted
			b.WriteByte(ch)
		case ch == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(ch)
		}
	}
	return b.String()
}

// args converts the time arguments to the dialect's form.
func (d *dialect) args(args []any) []any {
	for i, a := range args {
		switch v := a.(type) {
		case at:
			args[i] = d.time(time.Time(v))
		case optAt:
			if time.Time(v).IsZero() {
				args[i] = d.zeroTime()
			} else {
				args[i] = d.time(time.Time(v))
			}
		case nullAt:
			if time.Time(v).IsZero() {
				args[i] = nil
			} else {
				args[i] = d.time(time.Time(v))
			}
		}
	}
	return args
}

func (d *dialect) time(t time.Time) any {
	if d.textTimes {
		return formatTime(t)
	}
	return t.UTC().Truncate(time.Microsecond)
}

func (d *dialect) zeroTime() any {
	if d.textTimes {
		return ""
	}
	return nil
}

// classify turns an error that means the database is unreachable into a
// retryable store_unavailable error; others pass unchanged.
func (d *dialect) classify(err error) error {
	if err == nil || d.unavailable == nil || !d.unavailable(err) {
		return err
	}
	return errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeStoreUnavailable,
		"the state database is unreachable",
		"retry in a few seconds; if it persists, check that the server's PostgreSQL is up and reachable")
}
