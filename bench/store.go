package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/template"
)

// The issue-23 measurements: two servers side by side in one run, one on
// SQLite and the local snapshot directory (the default), the other on
// PostgreSQL and an S3 object store (a throwaway PostgreSQL 15 cluster and
// versitygw, both started by the benchmark), driven one operation at a
// time, alternating which goes first, beside raw runsc:
//
//	both servers                                    raw runsc
//	Pause round trip                                checkpoint
//	Resume → RunCommand(true), cache warm           restore + exec
//	a second Pause of the resumed machine           -
//	Resume of it → RunCommand(true): warm on the    restore + exec
//	  local server; on the object-store server
//	  cold, its directory <data>/snapshots/<id>
//	  removed first, so that it is fetched
//	CreateSnapshot, then a child → RunCommand(true) checkpoint --leave-running; restore + exec
//	a lease refresh (POST .../timeout): one row     -
//	  written
//	the list queries of one page (lists.go) on a    -
//	  SQLite file and on a PostgreSQL database
//
// On the object-store server every pause and snapshot is uploaded in the
// background; the benchmark waits until the server logs it durable
// ("snapshot durable in the object store", read by the log tap) before
// the next timed operation, so that no upload runs during one: what is
// timed is the machine's operations, with the upload's own time reported
// apart. The same log line gives the bytes uploaded by the first pause of
// an idle machine (the compressed size of its paused state, less chunks
// already in the bucket) and by its second pause.
//
// The 10,000-lease scheduling of the lease suite is not repeated: the
// scheduler (internal/lease) is in memory and touches no store.

// Metrics of the store suite; their side is the server's backend.
const (
	metricStorePause      = "store_pause"                          // Pause round trip
	metricStoreResume     = "store_resume_to_first_command"        // Resume → RunCommand(true), cache warm
	metricStorePause2     = "store_second_pause"                   // Pause of the resumed machine
	metricStoreResume2    = "store_resume_second_to_first_command" // its Resume → RunCommand(true), cache warm
	metricStoreResumeCold = "store_resume_cold_to_first_command"   // the same with its local copy removed
	metricStoreFetch      = "store_fetch"                          // the fetch inside the cold resume (server log)
	metricStoreUpload     = "store_upload"                         // a pause's upload (server log "took")
	metricStoreSnapshot   = "store_create_snapshot_call"           // CreateSnapshot round trip
	metricStoreChild      = "store_child_to_first_command"         // CreateMachine{SnapshotID} → RunCommand(true)
	metricStoreRefresh    = "store_lease_refresh_call"             // POST /v1/machines/{id}/timeout
	metricUploadState     = "upload_first_pause_state_bytes"       // the first pause's files, uncompressed
	metricUploadFirst     = "upload_first_pause_bytes_uploaded"    // compressed bytes the first pause put
	metricUploadSecond    = "upload_second_pause_bytes_uploaded"   // compressed bytes the second pause put
	labelStoreRaw         = "minimal (store suite)"                // the raw side's label in this suite
	refreshesPerCycle     = 3                                      // lease refreshes timed per machine
	uploadWait            = 2 * time.Minute                        // longest wait for an upload
)

// uploadRecord is one upload the store suite waited for.
type uploadRecord struct {
	Side       string `json:"side"`
	Template   string `json:"template"`
	Pause      int    `json:"pause"` // 1 or 2: first or second pause of the machine
	SnapshotID string `json:"snapshot_id"`
	uploadStat
}

func measureStore(ctx context.Context, cfg config, ns, ns2 *nullspaceSide, raw *rawSide, svc *services, res *results) error {
	base, other := ns, ns2
	if ns.spec.backend != defaultBackend {
		base, other = ns2, ns
	}
	hcRaw := hibernateCase{Label: labelStoreRaw, MemoryMB: cfg.memoryMB}
	// The table is made of these sides' series when the results are
	// summarized (also after an interruption).
	res.StoreSides = []string{base.spec.backend.String(), other.spec.backend.String()}
	fmt.Fprintf(os.Stderr, "bench: store suite: %s beside %s (raw runsc), %d iterations\n", base.spec.backend, other.spec.backend, cfg.n)
	ns.tap.setPhase(setupPhase) // one tap for both servers
	defer ns.tap.setPhase("")

	// The base template's paused state first, into an empty bucket: its
	// first upload is its whole compressed size.
	if slices.Contains(other.extraTemplates, template.Base) && other.spec.backend.s3() {
		fmt.Fprintln(os.Stderr, "bench: store suite: an idle base machine's pauses and uploads")
		if err := other.storeCycle(ctx, template.Base, res); err != nil {
			return err
		}
	}
	for i := range cfg.n {
		groups := [][]func() error{
			{
				func() error { return raw.pauseResume(ctx, hcRaw, res) },
				func() error { return base.storeCycle(ctx, template.Minimal, res) },
				func() error { return other.storeCycle(ctx, template.Minimal, res) },
			},
			{
				func() error { return raw.snapshotChild(ctx, hcRaw, res) },
				func() error { return base.storeChild(ctx, res) },
				func() error { return other.storeChild(ctx, res) },
			},
		}
		for _, g := range groups {
			// Alternate the order so that drift hits every side alike.
			if i%2 == 1 {
				slices.Reverse(g)
			}
			for _, step := range g {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := step(); err != nil {
					return err
				}
			}
		}
		progress(i+1, cfg.n)
	}

	for i, s := range []*nullspaceSide{base, other} {
		for _, rows := range []int{1000, 10000} {
			fmt.Fprintf(os.Stderr, "bench: store suite: lists over %d machine rows and %d events (%s)\n", rows, rows*5, s.spec.backend.DB)
			db, analyze, err := svc.openStore(ctx, s.spec.backend.DB, fmt.Sprintf("store_lists_%d_%d", i, rows))
			if err != nil {
				return err
			}
			err = measureListScale(ctx, cfg, db, analyze, s.spec.backend.String(), rows, res)
			db.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// readyTemplate creates a machine of tmpl, runs its first command and lets
// it settle.
func (s *nullspaceSide) readyTemplate(ctx context.Context, tmpl string) (string, error) {
	id, _, _, err := s.create(ctx, tmpl, s.cfg.memoryMB)
	if err != nil {
		return id, err
	}
	return id, sleep(ctx, s.cfg.settle)
}

// storeCycle measures one idle machine of tmpl: lease refreshes, a pause,
// a warm resume, a second pause and its resume (cold when the server has
// an object store); it waits for each upload.
func (s *nullspaceSide) storeCycle(ctx context.Context, tmpl string, res *results) error {
	side := s.spec.backend.String()
	phase := func(op string) string { return "store " + op + " " + side }
	id, err := s.readyTemplate(ctx, tmpl)
	if err != nil {
		return err
	}
	for range refreshesPerCycle {
		took, err := s.timed(phase("lease refresh"), func() error {
			_, err := s.client.SetTimeout(ctx, id, time.Hour, api.TimeoutDestroy)
			return err
		})
		if err != nil {
			return fmt.Errorf("refresh the lease of machine %s: %w", id, err)
		}
		res.addDuration(metricStoreRefresh, side, tmpl, took)
	}

	// pause pauses machine mid as the nth pause and, with an object store,
	// waits for its upload.
	pause := func(mid string, nth int, metric string) (*api.Snapshot, error) {
		var sn *api.Snapshot
		took, err := s.timed(phase(fmt.Sprintf("pause %d", nth)), func() (err error) {
			sn, err = s.client.Pause(ctx, mid)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("pause machine %s: %w", mid, err)
		}
		res.addDuration(metric, side, tmpl, took)
		if !s.spec.backend.s3() {
			return sn, nil
		}
		up, err := s.waitUpload(ctx, sn.ID)
		if err != nil {
			return nil, err
		}
		res.Uploads = append(res.Uploads, uploadRecord{Side: side, Template: tmpl, Pause: nth, SnapshotID: sn.ID, uploadStat: up})
		res.addDuration(metricStoreUpload, side, tmpl, up.Took)
		if nth == 1 {
			res.add(metricUploadState, side, tmpl, unitBytes, float64(up.Bytes))
			res.add(metricUploadFirst, side, tmpl, unitBytes, float64(up.BytesUploaded))
		} else {
			res.add(metricUploadSecond, side, tmpl, unitBytes, float64(up.BytesUploaded))
		}
		return sn, nil
	}
	// resume resumes sn to its first command.
	resume := func(sn *api.Snapshot, op, metric string) (*api.Machine, error) {
		var m *api.Machine
		took, err := s.timed(phase(op), func() (err error) {
			if m, err = s.client.Resume(ctx, sn.ID); err != nil {
				return fmt.Errorf("resume snapshot %s: %w", sn.ID, err)
			}
			s.live[m.ID] = true
			return s.runTrue(ctx, m.ID)
		})
		if err != nil {
			return nil, err
		}
		res.addDuration(metric, side, tmpl, took)
		return m, nil
	}

	sn1, err := pause(id, 1, metricStorePause)
	if err != nil {
		return err
	}
	m1, err := resume(sn1, "resume warm", metricStoreResume)
	if err != nil {
		return err
	}
	if err := sleep(ctx, s.cfg.settle); err != nil {
		return err
	}
	sn2, err := pause(m1.ID, 2, metricStorePause2)
	if err != nil {
		return err
	}
	op, metric := "resume warm 2", metricStoreResume2
	if s.spec.backend.s3() {
		// The cache cold: the snapshot's local copy gone, as on a host
		// that never had it.
		if err := os.RemoveAll(filepath.Join(s.dataDir, "snapshots", sn2.ID)); err != nil {
			return err
		}
		op, metric = "resume cold", metricStoreResumeCold
	}
	m2, err := resume(sn2, op, metric)
	if err != nil {
		return err
	}
	if s.spec.backend.s3() {
		took, ok := s.tap.fetch(sn2.ID)
		if !ok {
			return fmt.Errorf("resume of snapshot %s with its local copy removed: the server logged no fetch from the object store", sn2.ID)
		}
		res.addDuration(metricStoreFetch, side, tmpl, took)
	}
	// Killing the latest execution ends the lineage: the paused aliases
	// and the hibernate snapshots go with it.
	if err := s.kill(ctx, &warmMachine{id: m2.ID}, nil); err != nil {
		return err
	}
	delete(s.live, id)
	delete(s.live, m1.ID)
	return nil
}

// storeChild measures a reusable snapshot of an idle machine and a child
// from it to its first command; with an object store, the child is made
// once the snapshot is durable.
func (s *nullspaceSide) storeChild(ctx context.Context, res *results) error {
	side := s.spec.backend.String()
	id, err := s.readyTemplate(ctx, template.Minimal)
	if err != nil {
		return err
	}
	var sn *api.Snapshot
	took, err := s.timed("store create_snapshot "+side, func() (err error) {
		sn, err = s.client.CreateSnapshot(ctx, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot machine %s: %w", id, err)
	}
	res.addDuration(metricStoreSnapshot, side, labelIdle, took)
	if s.spec.backend.s3() {
		if _, err := s.waitUpload(ctx, sn.ID); err != nil {
			return err
		}
	}
	var child *api.Machine
	took, err = s.timed("store child "+side, func() error {
		var err error
		if child, err = s.client.CreateMachine(ctx, api.CreateMachineRequest{SnapshotID: sn.ID}); err != nil {
			return fmt.Errorf("create machine from snapshot %s: %w", sn.ID, err)
		}
		s.live[child.ID] = true
		return s.runTrue(ctx, child.ID)
	})
	if err != nil {
		return err
	}
	res.addDuration(metricStoreChild, side, labelIdle, took)
	for _, mid := range []string{child.ID, id} {
		if err := s.kill(ctx, &warmMachine{id: mid}, nil); err != nil {
			return err
		}
	}
	if err := s.client.DeleteSnapshot(ctx, sn.ID, false); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sn.ID, err)
	}
	return nil
}

// waitUpload waits until the server logs snapshot id durable in the object
// store, and checks that the API says so too.
func (s *nullspaceSide) waitUpload(ctx context.Context, id string) (uploadStat, error) {
	deadline := time.Now().Add(uploadWait)
	for {
		if up, ok := s.tap.upload(id); ok {
			sn, err := s.client.GetSnapshot(ctx, id)
			if err != nil {
				return up, fmt.Errorf("get snapshot %s: %w", id, err)
			}
			if !sn.Durable {
				return up, fmt.Errorf("snapshot %s: logged durable in the object store, but the API says durable: false", id)
			}
			return up, nil
		}
		if time.Now().After(deadline) {
			return uploadStat{}, fmt.Errorf("snapshot %s: not durable in the object store after %v (see the server log)", id, uploadWait)
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return uploadStat{}, err
		}
	}
}

// storeRow is one row of the store suite's table: p50 (p90) of each
// server and raw runsc's nearest operation.
type storeRow struct {
	What     string  `json:"what"`
	Template string  `json:"template"`
	Unit     string  `json:"unit"`
	BaseP50  float64 `json:"base_p50"`
	BaseP90  float64 `json:"base_p90"`
	OtherP50 float64 `json:"other_p50"`
	OtherP90 float64 `json:"other_p90"`
	Ratio    float64 `json:"ratio_p50"` // other / base
	Raw      string  `json:"raw,omitempty"`
	RawP50   float64 `json:"raw_p50,omitempty"`
	Target   float64 `json:"target,omitempty"` // highest allowed ratio
	OK       *bool   `json:"ok,omitempty"`
}

// storeRows builds the store suite's table from the series of sides base
// and other.
func (r *results) storeRows(base, other string) []storeRow {
	type spec struct {
		what, label        string
		baseMetric, metric string // metric of base, of other ("" for base's)
		raw, rawMetric     string
		target             float64
	}
	specs := []spec{
		{what: "pause", label: labelIdle, baseMetric: metricStorePause, raw: "checkpoint", rawMetric: metricPause, target: 1.2},
		{what: "resume → first command, cache warm", label: labelIdle, baseMetric: metricStoreResume, raw: "restore + exec", rawMetric: metricResume, target: 1.2},
		{what: "second pause (of the resumed machine)", label: labelIdle, baseMetric: metricStorePause2},
		{what: "resume of it → first command: warm | cache cold", label: labelIdle, baseMetric: metricStoreResume2, metric: metricStoreResumeCold, raw: "restore + exec", rawMetric: metricResume},
		{what: "  part: fetch from the object store (server log)", label: labelIdle, metric: metricStoreFetch},
		{what: "upload of a pause, in the background (server log)", label: labelIdle, metric: metricStoreUpload},
		{what: "create_snapshot", label: labelIdle, baseMetric: metricStoreSnapshot, raw: "checkpoint --leave-running", rawMetric: metricSnapshotCall},
		{what: "child from snapshot → first command", label: labelIdle, baseMetric: metricStoreChild, raw: "restore + exec", rawMetric: metricChild},
		{what: "lease refresh (POST .../timeout)", label: labelIdle, baseMetric: metricStoreRefresh},
		{what: "page of 100 machines, 1,000 rows", label: "1000 rows", baseMetric: metricListMachines},
		{what: "page of 100 machines, 10,000 rows", label: "10000 rows", baseMetric: metricListMachines},
		{what: "page of 100 events, 10,000 rows", label: "10000 rows", baseMetric: metricListEvents},
		{what: "GET of a machine with 200 aliases, 10,000 rows", label: "10000 rows", baseMetric: metricGetAliased},
	}
	var rows []storeRow
	for _, sp := range specs {
		om := sp.metric
		if om == "" {
			om = sp.baseMetric
		}
		b, o := r.get(sp.baseMetric, base, sp.label), r.get(om, other, sp.label)
		if o == nil && sp.metric != "" && sp.baseMetric != "" {
			o = r.get(sp.baseMetric, other, sp.label) // no object store: no cold cache
		}
		if o == nil && (b == nil || sp.metric == "") {
			continue
		}
		row := storeRow{What: sp.what, Template: sp.label, Unit: unitMS, Raw: sp.raw, Target: sp.target}
		if b != nil {
			b.Summary = summarize(b.Samples)
			row.BaseP50, row.BaseP90 = b.Summary.P50, b.Summary.P90
		}
		if o != nil {
			o.Summary = summarize(o.Samples)
			row.OtherP50, row.OtherP90 = o.Summary.P50, o.Summary.P90
		}
		row.Ratio = ratio(row.OtherP50, row.BaseP50)
		if sp.rawMetric != "" {
			if rs := r.get(sp.rawMetric, sideRaw, labelStoreRaw); rs != nil {
				row.RawP50 = summarize(rs.Samples).P50
			}
		}
		if sp.target > 0 && b != nil && o != nil {
			ok := row.Ratio <= sp.target
			row.OK = &ok
		}
		rows = append(rows, row)
	}
	return rows
}

// printStore prints the store suite's table and the upload sizes.
func (r *results) printStore(w io.Writer) {
	if len(r.Store) == 0 || len(r.StoreSides) != 2 {
		return
	}
	base, other := r.StoreSides[0], r.StoreSides[1]
	fmt.Fprintf(w, "\nStore and object store (issue 23): two servers in one run, idle minimal machines, p50 (p90); ratio = %s / %s\n", other, base)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintf(tw, "what\t%s\t%s\tratio\traw runsc p50\ttarget\tok?\t\n", base, other)
	cell := func(p50, p90 float64) string {
		if p50 == 0 && p90 == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms (%.1f)", p50, p90)
	}
	for _, row := range r.Store {
		ratioCell, rawCell, target, ok := "-", "-", "-", "-"
		if row.BaseP50 > 0 && row.OtherP50 > 0 {
			ratioCell = fmt.Sprintf("%.2fx", row.Ratio)
		}
		if row.RawP50 > 0 {
			rawCell = fmt.Sprintf("%s %.1f ms", row.Raw, row.RawP50)
		}
		if row.Target > 0 {
			target = fmt.Sprintf("≤ %.1fx", row.Target)
		}
		if row.OK != nil {
			ok = "yes"
			if !*row.OK {
				ok = "NO"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", row.What, cell(row.BaseP50, row.BaseP90), cell(row.OtherP50, row.OtherP90),
			ratioCell, rawCell, target, ok)
	}
	tw.Flush()

	for _, tmpl := range []string{template.Minimal, template.Base} {
		state, first, second := r.get(metricUploadState, other, tmpl), r.get(metricUploadFirst, other, tmpl), r.get(metricUploadSecond, other, tmpl)
		if state == nil || first == nil || second == nil {
			continue
		}
		p50 := func(s *series) float64 { return summarize(s.Samples).P50 }
		share := ratio(p50(second), p50(first))
		verdict := "ok"
		if share > 0.2 {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "uploads of an idle %s machine (p50 of %d): paused state %s, first pause put %s compressed (the first in the bucket: %s of %s), second pause put %s = %.0f%% of the first (target ≤ 20%%) %s\n",
			tmpl, len(first.Samples), kib(p50(state)), kib(p50(first)), kib(first.Samples[0]), kib(state.Samples[0]), kib(p50(second)), share*100, verdict)
	}
	fmt.Fprintln(w, "lease scheduling (10,000 leases) is in memory and touches no store: see the lease suite")
}

func kib(v float64) string { return fmt.Sprintf("%.0f KiB", v/(1<<10)) }
