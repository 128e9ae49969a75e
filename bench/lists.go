package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// The issue-11 measurements: what one page of a list costs in the store
// (the queries the API runs for it: the page, then the lineage summaries of
// its rows) with 1,000 and with 10,000 machine rows (some lineages with 200
// aliases) and 5,000 and 50,000 events, built directly through the store;
// and the disk that 100 pause/resume cycles of an idle minimal machine
// leave with the default checkpoint retention. The store is the server's
// kind (-store): a SQLite file, or a database of its own on the
// benchmark's PostgreSQL cluster.

const (
	metricListMachines = "list_page_machines"      // one page of 100 machines (first, middle, last)
	metricListEvents   = "list_page_events"        // one page of 100 events after a middle seq
	metricGetAliased   = "get_machine_200_aliases" // GET of the latest execution of a lineage with 200 aliases
	metricCycleDisk    = "disk_after_100_cycles"   // snapshot bytes of a machine after 100 pause/resume cycles
	aliasesPerLineage  = 200
)

func measureLists(ctx context.Context, cfg config, ns *nullspaceSide, svc *services, res *results) error {
	for _, rows := range []int{1000, 10000} {
		fmt.Fprintf(os.Stderr, "bench: lists over %d machine rows and %d events (%s)\n", rows, rows*5, cfg.backend.DB)
		db, analyze, err := svc.openStore(ctx, cfg.backend.DB, fmt.Sprintf("lists_%d", rows))
		if err != nil {
			return err
		}
		err = measureListScale(ctx, cfg, db, analyze, sideNullspace, rows, res)
		db.Close()
		if err != nil {
			return err
		}
	}
	fmt.Fprintln(os.Stderr, "bench: disk after 100 pause/resume cycles of an idle minimal machine")
	id, err := ns.ready(ctx, hibernateCase{Label: labelIdle, MemoryMB: cfg.memoryMB})
	if err != nil {
		return err
	}
	defer func() {
		if m, err := ns.client.GetMachine(context.WithoutCancel(ctx), id); err == nil {
			ns.client.KillMachine(context.WithoutCancel(ctx), m.LatestID)
		}
		delete(ns.live, id)
	}()
	head := id
	for i := range 100 {
		if _, err := ns.client.Pause(ctx, head); err != nil {
			return err
		}
		m, err := ns.client.Connect(ctx, id)
		if err != nil {
			return err
		}
		head = m.ID
		if (i+1)%25 == 0 {
			progress(i+1, 100)
		}
	}
	m, err := ns.client.GetMachine(ctx, head)
	if err != nil {
		return err
	}
	hist, err := ns.client.Checkpoints(ctx, head)
	if err != nil {
		return err
	}
	res.add(metricCycleDisk, sideNullspace, labelIdle, unitBytes, float64(m.SnapshotBytes))
	res.Notes = append(res.Notes, fmt.Sprintf("100 pause/resume cycles of an idle minimal machine: %d states kept of 100 (retention %d), %.1f MiB of snapshots",
		len(hist), m.CheckpointRetention, float64(m.SnapshotBytes)/(1<<20)))
	return nil
}

// measureListScale fills the empty store db with rows machine rows and 5x
// as many events, calls analyze, and times pages of it, as side.
func measureListScale(ctx context.Context, cfg config, db *sqlstore.DB, analyze func(context.Context) error, side string, rows int, res *results) error {
	lineages := max(rows/2000, 1) // lineages of 200 executions: 1 at 1,000 rows, 5 at 10,000
	per := rows / lineages
	now := time.Now().Add(-time.Duration(rows) * time.Second)
	n := 0
	add := func(id, lineage, state string) (*store.Machine, error) {
		n++
		m := &store.Machine{ID: id, TeamID: "team", State: state, Template: "minimal", CPUCount: 1, MemoryMB: 64, LineageID: lineage,
			ContainerID: "c" + id, AgentToken: "x", CreatedAt: now.Add(time.Duration(n) * time.Second),
			Metadata: map[string]string{"user": fmt.Sprintf("u%d", n%50)}}
		if err := db.CreateMachine(ctx, m, 10); err != nil {
			return nil, err
		}
		m.Slot = -1 // the rows hold no network slot
		return m, db.UpdateMachine(ctx, m)
	}
	var aliased string
	for n < rows {
		if lin := n / per; n%per == 0 && lin < lineages {
			first := fmt.Sprintf("mch_lin%05d_000", lin)
			if _, err := add(first, "", api.StatePaused); err != nil {
				return err
			}
			for a := 1; a < aliasesPerLineage; a++ {
				state := api.StatePaused
				if a == aliasesPerLineage-1 {
					state = api.StateRunning
				}
				m, err := add(fmt.Sprintf("mch_lin%05d_%03d", lin, a), first, state)
				if err != nil {
					return err
				}
				aliased = m.ID
			}
			continue
		}
		if _, err := add(fmt.Sprintf("mch_t%06d", n), "", api.StateRunning); err != nil {
			return err
		}
	}
	for i := range rows * 5 {
		ev := &api.Event{Type: api.EventMachineCreated, TeamID: "team", MachineID: fmt.Sprintf("mch_t%06d", i%rows), Time: now.Add(time.Duration(i) * time.Millisecond)}
		if err := db.AppendEvent(ctx, ev); err != nil {
			return err
		}
	}
	if err := analyze(ctx); err != nil {
		return err
	}
	label := fmt.Sprintf("%d rows", rows)
	// The positions of the first, a middle and the last page.
	var cursors []store.MachineCursor
	q := store.MachinePageQuery{TeamID: "team", States: []string{api.StateRunning, api.StatePaused}, Limit: 100}
	for {
		page, more, err := db.ListMachinesPage(ctx, q)
		if err != nil {
			return err
		}
		cursors = append(cursors, q.After)
		if !more {
			break
		}
		q.After = store.CursorOf(page[len(page)-1], false)
	}
	starts := []store.MachineCursor{cursors[0], cursors[len(cursors)/2], cursors[len(cursors)-1]}
	for i := range cfg.n * 3 {
		q.After = starts[i%3]
		start := time.Now()
		page, _, err := db.ListMachinesPage(ctx, q)
		if err != nil {
			return err
		}
		lins := make([]string, len(page))
		for j, m := range page {
			lins[j] = m.LineageID
		}
		if _, err := db.LineageSummaries(ctx, lins); err != nil {
			return err
		}
		res.addDuration(metricListMachines, side, label, time.Since(start))

		start = time.Now()
		if _, err := db.ListEvents(ctx, store.EventFilter{TeamID: "team", After: int64(rows * 5 / 2), Limit: 100}); err != nil {
			return err
		}
		res.addDuration(metricListEvents, side, label, time.Since(start))

		start = time.Now()
		m, err := db.GetMachine(ctx, aliased)
		if err != nil {
			return err
		}
		sums, err := db.LineageSummaries(ctx, []string{m.LineageID})
		if err != nil {
			return err
		}
		res.addDuration(metricGetAliased, side, label, time.Since(start))
		if sums[m.LineageID].PausedAliases != aliasesPerLineage-1 {
			return fmt.Errorf("lineage of %s: %d paused aliases, want %d", aliased, sums[m.LineageID].PausedAliases, aliasesPerLineage-1)
		}
	}
	return nil
}

// printLists prints the list costs and their target: each under 20 ms at
// p50, and flat from 1,000 to 10,000 rows.
func (r *results) printLists(w io.Writer) {
	if r.get(metricListMachines, sideNullspace, "10000 rows") == nil {
		return
	}
	fmt.Fprintln(w, "\nLists (issue 11), p50 (p90) of the store queries behind one API page:")
	for _, m := range []struct{ metric, name string }{{metricListMachines, "page of 100 machines (+ lineage summaries)"},
		{metricListEvents, "page of 100 events"}, {metricGetAliased, "GET of a machine with 200 aliases"}} {
		small, big := r.get(m.metric, sideNullspace, "1000 rows"), r.get(m.metric, sideNullspace, "10000 rows")
		p := func(s *series, q float64) float64 {
			v := slices.Clone(s.Samples)
			slices.Sort(v)
			return percentile(v, q)
		}
		ok := p(big, .5) < 20 && p(small, .5) < 20
		verdict := "ok"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %s: %.2f ms (%.2f) at 1,000 rows, %.2f ms (%.2f) at 10,000: %.2fx (target < 20 ms, flat) %s\n",
			m.name, p(small, .5), p(small, .9), p(big, .5), p(big, .9), ratio(p(big, .5), p(small, .5)), verdict)
	}
	if s := r.get(metricCycleDisk, sideNullspace, labelIdle); s != nil && len(s.Samples) > 0 {
		fmt.Fprintf(w, "  disk after 100 pause/resume cycles of an idle minimal machine: %.1f MiB of snapshots\n", s.Samples[0]/(1<<20))
	}
}
