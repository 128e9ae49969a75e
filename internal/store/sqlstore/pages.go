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
		w.conds = append(w.conds, "latest")
	}
	if !q.CreatedFrom.IsZero() {
		w.cond(timeCol+" >= ?", at(q.CreatedFrom))
	}
	if !q.CreatedBefore.IsZero() {
		w.cond(timeCol+" < ?", at(q.CreatedBefore))
	}
	cmp, dir := ">", ""
	if q.Desc {
		cmp, dir = "<", " DESC"
	}
	if !q.After.IsZero() {
		w.conds = append(w.conds, fmt.Sprintf("(%s, %s) %s (?, ?)", timeCol, idCol, cmp))
		w.args = append(w.args, at(q.After.Time), q.After.ID)
	}
	query := fmt.Sprintf("SELECT %s FROM machines%s ORDER BY %s%s, %s%s LIMIT ?", machineColumns, w.sql(), timeCol, dir, idCol, dir)
	recs, err := queryAll(ctx, s.c(), "list machines", query, append(w.args, q.Limit+1), scanMachine)
	return pageOf(recs, q.Limit, err)
}

// LineageSummaries returns the summaries of lineages, in three indexed
// queries whatever their number.
func (s *DB) LineageSummaries(ctx context.Context, lineageIDs []string) (map[string]store.LineageSummary, error) {
	out := map[string]store.LineageSummary{}
	if len(lineageIDs) == 0 {
		return out, nil
	}
	ids := anySlice(slices.Compact(slices.Sorted(slices.Values(lineageIDs))))
	in := `lineage_id IN (` + placeholders(len(ids)) + `)`
	heads, err := queryAll(ctx, s.c(), "lineage summaries", `SELECT lineage_id, id FROM machines WHERE latest AND `+in, ids,
		func(r scanner) ([2]string, error) {
			var p [2]string
			err := r.Scan(&p[0], &p[1])
			return p, err
		})
	if err != nil {
		return nil, err
	}
	paused, err := countBy[string, int](ctx, s.c(), "lineage summaries",
		`SELECT lineage_id, count(*) FROM machines WHERE NOT latest AND state = 'paused' AND `+in+` GROUP BY lineage_id`, ids...)
	if err != nil {
		return nil, err
	}
	bytes, err := countBy[string, int64](ctx, s.c(), "lineage summaries",
		`SELECT lineage_id, CAST(coalesce(sum(size_bytes), 0) AS BIGINT) FROM snapshots WHERE state = 'ready' AND `+in+` GROUP BY lineage_id`, ids...)
	if err != nil {
		return nil, err
	}
	for _, h := range heads {
		out[h[0]] = store.LineageSummary{LatestID: h[1], PausedAliases: paused[h[0]], SnapshotBytes: bytes[h[0]]}
	}
	for lin, n := range paused {
		if _, ok := out[lin]; !ok {
			out[lin] = store.LineageSummary{PausedAliases: n, SnapshotBytes: bytes[lin]}
		}
	}
	for lin, n := range bytes {
		if _, ok := out[lin]; !ok {
			out[lin] = store.LineageSummary{SnapshotBytes: n}
		}
	}
	return out, nil
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
			w.args = append(w.args, at(q.After.Created), q.After.ID)
		}
	}
	recs, err := queryAll(ctx, s.c(), "list snapshots", `SELECT `+snapshotColumns+` FROM snapshots`+w.sql()+" ORDER BY "+order+" LIMIT ?",
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
	return countBy[string, int](ctx, s.c(), "count children", `SELECT restored_from, count(*) FROM machines`+w.sql()+` GROUP BY restored_from`, w.args...)
}
