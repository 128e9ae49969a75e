package sqlstore

import (
	"context"
	"fmt"
	"strings"
)

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

// countBy runs a query of (key, number) rows into a map.
func countBy[K comparable, N int | int64](ctx context.Context, c conn, what, q string, args ...any) (map[K]N, error) {
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	out := map[K]N{}
	for rows.Next() {
		var k K
		var n N
		if err := rows.Scan(&k, &n); err != nil {
			return nil, fmt.Errorf("%s: %w", what, c.d.classify(err))
		}
		out[k] = n
	}
	return out, c.d.classify(rows.Err())
}

// pageOf cuts the rows of a query that asked for limit+1 to a page, and
// says whether more follow.
func pageOf[T any](rows []T, limit int, err error) ([]T, bool, error) {
	if err != nil {
		return nil, false, err
	}
	if len(rows) > limit {
		return rows[:limit], true, nil
	}
	return rows, false, nil
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
