package sqlstore

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"nullspace.dev/nullspace/internal/store"
)

// Pages of lists. Every list that can grow is read a page at a time with
// keyset pagination: a page is the first Limit rows after a position in a
// fixed order, and its last row is the position of the next page. Rows
// inserted or deleted between pages move no other row, so paging never
// skips or repeats one. A page costs one indexed query: O(page), not
// O(all rows).

// ListMachinesPage returns up to q.Limit machines after q.After, and
// whether more follow.
func (s *DB) ListMachinesPage(ctx context.Context, q store.MachinePageQuery) ([]*store.Machine, bool, error) {
	var w where
	w.eq("team_id", q.TeamID)
	w.in("state", q.States)
	w.eq("template", q.Template)
	for _, k := range slices.Sorted(maps.Keys(q.Metadata)) {
		w.conds = append(w.conds, "id IN (SELECT machine_id FROM machine_metadata WHERE key = ? AND value = ?)")
		w.args = append(w.args, k, q.Metadata[k])
	}
	timeCol, idCol := "lineage_created", "lineage_id"
	if q.Aliases {
		timeCol, idCol = "created_at", "id"
	} else {
		w.cond("latest = ?", true)
	}
	if !q.CreatedFrom.IsZero() {
		w.cond(timeCol+" >= ?", formatTime(q.CreatedFrom))
	}
	if !q.CreatedBefore.IsZero() {
		w.cond(timeCol+" < ?", formatTime(q.CreatedBefore))
	}
	cmp, dir := ">", ""
	if q.Desc {
		cmp, dir = "<", " DESC"
	}
	if !q.After.IsZero() {
		w.conds = append(w.conds, fmt.Sprintf("(%s, %s) %s (?, ?)", timeCol, idCol, cmp))
		w.args = append(w.args, formatTime(q.After.Time), q.After.ID)
	}
	query := fmt.Sprintf("SELECT %s FROM machines%s ORDER BY %s%s, %s%s LIMIT ?", machineColumns, w.sql(), timeCol, dir, idCol, dir)
	recs, err := queryAll(ctx, s.db, "list machines", query, append(w.args, q.Limit+1), scanMachine)
	return pageOf(recs, q.Limit, err)
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

// LineageSummaries returns the summaries of lineages, in three indexed
// queries whatever their number.
func (s *DB) LineageSummaries(ctx context.Context, lineageIDs []string) (map[string]store.LineageSummary, error) {
	out := map[string]store.LineageSummary{}
	if len(lineageIDs) == 0 {
		return out, nil
	}
	ids := anySlice(slices.Compact(slices.Sorted(slices.Values(lineageIDs))))
	rows, err := s.db.QueryContext(ctx, `SELECT lineage_id, id FROM machines WHERE latest = 1 AND lineage_id IN (`+placeholders(len(ids))+`)`, ids...)
	if err != nil {
		return nil, fmt.Errorf("lineage summaries: %w", err)
	}
	for rows.Next() {
		var lin, id string
		if err := rows.Scan(&lin, &id); err != nil {
			rows.Close()
			return nil, err
		}
		out[lin] = store.LineageSummary{LatestID: id}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	err = s.sumByLineage(ctx, `SELECT lineage_id, count(*) FROM machines WHERE latest = 0 AND state = 'paused' AND lineage_id IN (`+
		placeholders(len(ids))+`) GROUP BY lineage_id`, ids, func(sum *store.LineageSummary, n int64) { sum.PausedAliases = int(n) }, out)
	if err != nil {
		return nil, err
	}
	err = s.sumByLineage(ctx, `SELECT lineage_id, coalesce(sum(size_bytes), 0) FROM snapshots WHERE state = 'ready' AND lineage_id IN (`+
		placeholders(len(ids))+`) GROUP BY lineage_id`, ids, func(sum *store.LineageSummary, n int64) { sum.SnapshotBytes = n }, out)
	return out, err
}

// sumByLineage runs a query of (lineage_id, number) rows and sets each
// number into the lineage's summary.
func (s *DB) sumByLineage(ctx context.Context, query string, args []any, set func(*store.LineageSummary, int64), out map[string]store.LineageSummary) error {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("lineage summaries: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var lin string
		var n int64
		if err := rows.Scan(&lin, &n); err != nil {
			return err
		}
		sum := out[lin]
		set(&sum, n)
		out[lin] = sum
	}
	return rows.Err()
}

// ListSnapshotsPage returns up to q.Limit snapshots after q.After, and
// whether more follow.
func (s *DB) ListSnapshotsPage(ctx context.Context, q store.SnapshotPageQuery) ([]*store.Snapshot, bool, error) {
	var w where
	w.eq("team_id", q.TeamID)
	w.eq("machine_id", q.MachineID)
	w.eq("lineage_id", q.LineageID)
	w.in("kind", q.Kinds)
	w.in("state", q.States)
	w.eq("name", q.Name)
	order := "created_at, id"
	if q.ByGeneration {
		order = "generation, id"
	}
	if q.After.ID != "" {
		if q.ByGeneration {
			w.conds = append(w.conds, "(generation, id) > (?, ?)")
			w.args = append(w.args, q.After.Generation, q.After.ID)
		} else {
			w.conds = append(w.conds, "(created_at, id) > (?, ?)")
			w.args = append(w.args, formatTime(q.After.Created), q.After.ID)
		}
	}
	recs, err := queryAll(ctx, s.db, "list snapshots", `SELECT `+snapshotColumns+` FROM snapshots`+w.sql()+" ORDER BY "+order+" LIMIT ?",
		append(w.args, q.Limit+1), scanSnapshot)
	return pageOf(recs, q.Limit, err)
}

// CountRestoredFrom returns, for each snapshot id, how many machines in
// states were restored from it, in one query.
func (s *DB) CountRestoredFrom(ctx context.Context, snapshotIDs, states []string) (map[string]int, error) {
	out := map[string]int{}
	if len(snapshotIDs) == 0 {
		return out, nil
	}
	var w where
	w.in("restored_from", snapshotIDs)
	w.in("state", states)
	rows, err := s.db.QueryContext(ctx, `SELECT restored_from, count(*) FROM machines`+w.sql()+` GROUP BY restored_from`, w.args...)
	if err != nil {
		return nil, fmt.Errorf("count children: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}
