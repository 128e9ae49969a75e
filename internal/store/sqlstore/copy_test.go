package sqlstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/pgtest"
)

var copyBase = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func openSQLite(t *testing.T) *DB {
	t.Helper()
	db, err := Open(t.Context(), filepath.Join(t.TempDir(), "nullspace.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fillNode stores a node's worth of every record through the store
// interface: two teams with API keys, lineages with paused aliases, a
// killed and a failed machine, metadata, volumes and mounts, the main
// process, snapshots (named, pinned and durable, pruned, writing,
// committed with a machine), events of which the newest were pruned (the
// counter stays above every stored one), cursors, SSH keys, secrets, and
// a spare.
func fillNode(t *testing.T, s store.Store) {
	ctx := t.Context()
	clock := copyBase
	tick := func() time.Time {
		clock = clock.Add(time.Second + 7*time.Microsecond)
		return clock
	}
	// The usage ledger's records end at the store's time: the same in
	// every copy.
	s.(*DB).SetClock(func() time.Time { return clock })
	for _, team := range []string{"t", "u"} {
		check(t, s.CreateTeam(ctx, store.Team{ID: team, Name: "team " + team, CreatedAt: tick()}))
		check(t, s.AddAPIKey(ctx, store.APIKey{ID: "key_" + team, TeamID: team, Hash: "hash-" + team, Prefix: "ns_" + team,
			Name: "k", Scopes: []string{"machines:write"}, CreatedAt: tick(), ExpiresAt: tick()}))
	}
	machine := func(id, team, lineage string, opts ...func(*store.Machine)) *store.Machine {
		t.Helper()
		m := &store.Machine{ID: id, TeamID: team, State: api.StateCreating, Template: "base", CPUCount: 2, MemoryMB: 256,
			LineageID: lineage, ContainerID: "c-" + id, AgentToken: "tok-" + id, CreatedAt: tick(), CheckpointRetention: -1}
		for _, o := range opts {
			o(m)
		}
		check(t, s.CreateMachine(ctx, m, 64))
		return m
	}
	update := func(m *store.Machine, change func(*store.Machine)) {
		t.Helper()
		change(m)
		check(t, s.UpdateMachine(ctx, m))
	}
	running := func(m *store.Machine) {
		m.State, m.StartedAt = api.StateRunning, tick()
	}
	paused := func(m *store.Machine) {
		m.State, m.Slot, m.SnapshotID, m.Deadline = api.StatePaused, -1, "snap-"+m.ID, time.Time{}
	}

	// Lineage a: created, paused, resumed, paused, resumed; a and ar1 are
	// paused aliases, ar2 the latest.
	a := machine("a", "t", "", func(m *store.Machine) {
		m.Env = map[string]string{"LANG": "C.UTF-8"}
		m.Metadata = map[string]string{"app": "web", "env": "prod"}
		m.AllowInternet, m.PublicPorts, m.AutoResume = true, true, true
		m.Volumes = []api.VolumeMount{{Name: "data", Path: "/data"}, {Name: "cache", Path: "/cache", ReadOnly: true}}
		m.Hooks = api.Hooks{OnPause: []string{"sync"}, OnResume: []string{"date"}}
		m.AgentDir, m.TimeoutMS, m.OnTimeout, m.IdleTimeoutMS = "/agents/1", 60000, api.TimeoutPause, 5000
		m.Persistence, m.CheckpointRetention = "sticky", 3
		m.Command = []string{"sleep", "infinity"}
	})
	update(a, func(m *store.Machine) { running(m); m.Deadline = m.StartedAt.Add(time.Minute) })
	check(t, s.SetMain(ctx, "a", 42))
	if ok, err := s.SetMainExit(ctx, "a", 42, &api.MainExit{ExitCode: 3, Signal: "SIGTERM", At: tick()}); err != nil || !ok {
		t.Fatalf("set main exit: %v %v", ok, err)
	}
	update(a, paused)
	ar1 := machine("ar1", "t", "a", func(m *store.Machine) {
		m.Metadata, m.RestoredFrom, m.Volumes = a.Metadata, "snap-a", a.Volumes
	})
	update(ar1, running)
	update(ar1, paused)
	ar2 := machine("ar2", "t", "a", func(m *store.Machine) { m.Metadata, m.RestoredFrom = a.Metadata, "snap-ar1" })
	update(ar2, func(m *store.Machine) { running(m); m.Deadline = m.StartedAt.Add(time.Hour) })

	// Lineage b: a running machine of the E2B layer; a resume undone.
	b := machine("b", "t", "", func(m *store.Machine) { m.Origin, m.Template = store.OriginE2B, "minimal" })
	update(b, running)
	machine("br1", "t", "b")
	check(t, s.DeleteMachine(ctx, "br1"))

	// Ended machines: killed and failed, and a machine of team u.
	k := machine("k", "t", "", func(m *store.Machine) { m.Metadata = map[string]string{"app": "batch"} })
	update(k, func(m *store.Machine) { running(m); m.State, m.Slot, m.EndedAt = api.StateKilled, -1, tick() })
	f := machine("f", "t", "")
	update(f, func(m *store.Machine) {
		m.State, m.Slot, m.EndedAt, m.Error, m.FailureReason = api.StateFailed, -1, tick(), "the sandbox exited", "sandbox_exit"
	})
	u := machine("u1", "u", "", func(m *store.Machine) { m.Volumes = []api.VolumeMount{{Name: "data", Path: "/d"}} })
	update(u, running)

	// Snapshots.
	snapshot := func(id string, opts ...func(*store.Snapshot)) *store.Snapshot {
		t.Helper()
		sn := &store.Snapshot{ID: id, TeamID: "t", Kind: "hibernate", State: store.SnapshotReady, MachineID: "a", LineageID: "a",
			Template: "base", Generation: 1, SizeBytes: 1000, Checksum: "sha256:" + id, PauseWindowMS: 120, CreatedAt: tick(),
			Host: json.RawMessage(`{"runsc":"release-2026"}`), Spec: json.RawMessage(`{"cpu":2}`), Files: json.RawMessage(`["mem"]`),
			AgentToken: "tok-" + id}
		for _, o := range opts {
			o(sn)
		}
		check(t, s.CreateSnapshot(ctx, sn))
		return sn
	}
	snapshot("snap-a")
	snapshot("snap-ar1", func(sn *store.Snapshot) { sn.MachineID, sn.ParentID, sn.Generation = "ar1", "snap-a", 2 })
	snapshot("cp-named", func(sn *store.Snapshot) { sn.Kind, sn.Name, sn.Generation = "checkpoint", "golden", 3 })
	snapshot("cp-pinned", func(sn *store.Snapshot) { sn.Kind, sn.Generation = "checkpoint", 4 })
	check(t, s.SetSnapshotPinned(ctx, "cp-pinned", true))
	if ok, err := s.MarkDurable(ctx, "cp-pinned"); err != nil || !ok {
		t.Fatalf("mark durable: %v %v", ok, err)
	}
	snapshot("cp-pruned", func(sn *store.Snapshot) { sn.Kind, sn.Generation = "checkpoint", 5 })
	if ok, err := s.MarkPruning(ctx, "cp-pruned"); err != nil || !ok {
		t.Fatalf("mark pruning: %v %v", ok, err)
	}
	check(t, s.MarkPruned(ctx, "cp-pruned"))
	snapshot("cp-pruning", func(sn *store.Snapshot) { sn.Kind, sn.Generation = "checkpoint", 6 })
	if ok, err := s.MarkPruning(ctx, "cp-pruning"); err != nil || !ok {
		t.Fatalf("mark pruning: %v %v", ok, err)
	}
	snapshot("reusable", func(sn *store.Snapshot) {
		sn.Kind, sn.MachineID, sn.LineageID, sn.Name = "snapshot", "b", "b", "web-base"
	})
	writing := snapshot("snap-b", func(sn *store.Snapshot) { sn.State, sn.MachineID, sn.LineageID = store.SnapshotWriting, "b", "b" })
	writing.SizeBytes, writing.Checksum = 4096, "sha256:b"
	b.State, b.SnapshotID = api.StatePausing, "snap-b"
	check(t, s.CommitSnapshot(ctx, writing, b))
	snapshot("snap-u", func(sn *store.Snapshot) {
		sn.TeamID, sn.MachineID, sn.LineageID, sn.State = "u", "u1", "u1", store.SnapshotWriting
	})

	for _, v := range []store.Volume{{TeamID: "t", Name: "data"}, {TeamID: "t", Name: "cache"}, {TeamID: "u", Name: "data"}} {
		v.CreatedAt = tick()
		check(t, s.CreateVolume(ctx, v))
	}

	// Events 1-10; 10 carries an old time, so that pruning by age removes
	// it with 1-4 and leaves 5-9: the counter stays at 10.
	for i := 1; i <= 10; i++ {
		ev := &api.Event{Type: "machine.paused", TeamID: "t", MachineID: "a", Cause: "idle",
			Time: copyBase.Add(time.Duration(i)*time.Hour + time.Duration(i)*time.Microsecond)}
		switch {
		case i%3 == 0:
			ev.TeamID, ev.MachineID, ev.Type = "u", "u1", "machine.created"
			ev.Details = map[string]any{"template": "base", "cpu": float64(2), "nested": map[string]any{"ok": true}}
		case i >= 9:
			ev.Time = copyBase.Add(-time.Hour)
		}
		check(t, s.AppendEvent(ctx, ev))
		if ev.Seq != int64(i) {
			t.Fatalf("event %d got seq %d", i, ev.Seq)
		}
	}
	check(t, s.SetCursor(ctx, "webhook", 10))
	check(t, s.SetCursor(ctx, "audit", 3))
	if n, err := s.PruneEvents(ctx, copyBase.Add(4*time.Hour+time.Minute), 0, 10); err != nil || n != 5 {
		t.Fatalf("prune events: %d %v, want 5 pruned", n, err)
	}

	for i, team := range []string{"t", "t", "u"} {
		check(t, s.AddSSHKey(ctx, store.SSHKey{ID: fmt.Sprintf("key%d", i), TeamID: team, Name: fmt.Sprintf("laptop %d", i),
			Fingerprint: fmt.Sprintf("SHA256:fp%d", i), PublicKey: fmt.Sprintf("ssh-ed25519 AAAA%d", i), CreatedAt: tick()}))
	}
	for _, name := range []string{"url-signing", "ssh-host-key"} {
		if _, _, err := s.PutSecret(ctx, name, []byte("secret \x00\xff "+name), tick()); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.BeginIdempotent(ctx, store.IdempotencyRecord{TeamID: "t", Key: "retry-1", Route: "POST /v1/machines",
		RequestHash: "h", CreatedAt: tick()}, copyBase, copyBase); err != nil || got != nil {
		t.Fatalf("begin idempotent: %+v %v", got, err)
	}
	check(t, s.FinishIdempotent(ctx, "t", "retry-1", 201, []byte(`{"id":"a"}`)))
	check(t, s.AppendAudit(ctx, store.AuditEntry{ID: "aud_1", Time: tick(), TeamID: "u", ActorTeamID: "t", ActorKeyID: "key_t",
		Action: "quota.set", Target: "u", Outcome: "ok", Source: "127.0.0.1:5000", Details: `{"running_machines":3}`}))
	check(t, s.SetQuota(ctx, "u", store.Quota{RunningMachines: 3, VCPUs: -1, MemoryMB: 2048, SnapshotBytes: 0, CreatesPerMinute: 10}))
	check(t, s.CreateSpare(ctx, &store.Spare{MachineID: "spare1", ContainerID: "c-spare1", Shape: `{"memory_mb":128}`, CreatedAt: tick()}, 64))
}

// readAll reads everything a store answers about the records fillNode
// made, through the interface, keyed by the call.
func readAll(t *testing.T, s store.Store) map[string]any {
	ctx := t.Context()
	out := map[string]any{}
	put := func(key string, v any, err error) {
		t.Helper()
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s: %v", key, err)
		}
		if err != nil {
			v = "not found"
		}
		out[key] = v
	}
	all, err := s.ListMachines(ctx, store.MachineFilter{})
	put("ListMachines", all, err)
	lineages := map[string]bool{}
	for _, m := range all {
		got, err := s.GetMachine(ctx, m.ID)
		put("GetMachine "+m.ID, got, err)
		lineages[m.LineageID] = true
	}
	for _, id := range []string{"br1", "nope"} {
		got, err := s.GetMachine(ctx, id)
		put("GetMachine "+id, got, err)
	}
	ids := slices.Sorted(maps.Keys(lineages))
	for _, l := range ids {
		got, err := s.LineageHead(ctx, l)
		put("LineageHead "+l, got, err)
	}
	sums, err := s.LineageSummaries(ctx, ids)
	put("LineageSummaries", sums, err)
	for _, f := range []store.MachineFilter{{TeamID: "t"}, {States: []string{api.StatePaused}}, {LineageID: "a"}, {RestoredFrom: "snap-a"}, {Template: "minimal"}} {
		got, err := s.ListMachines(ctx, f)
		put(fmt.Sprintf("ListMachines %+v", f), got, err)
	}
	for _, q := range []store.MachinePageQuery{
		{TeamID: "t"}, {TeamID: "t", Aliases: true}, {TeamID: "t", Desc: true}, {TeamID: "t", Aliases: true, Desc: true},
		{TeamID: "t", Metadata: map[string]string{"app": "web"}, Aliases: true}, {TeamID: "t", States: []string{api.StateRunning}},
		{TeamID: "t", CreatedFrom: copyBase.Add(8 * time.Second), Aliases: true},
	} {
		var pages [][]*store.Machine
		for i := 0; ; i++ {
			q.Limit = 2
			page, more, err := s.ListMachinesPage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			pages = append(pages, page)
			if !more || i > 20 {
				break
			}
			q.After = store.CursorOf(page[len(page)-1], q.Aliases)
		}
		q.After = store.MachineCursor{}
		out[fmt.Sprintf("ListMachinesPage %+v", q)] = pages
	}
	counts, err := s.CountMachines(ctx)
	put("CountMachines", counts, err)

	snaps, err := s.ListSnapshots(ctx, store.SnapshotFilter{})
	put("ListSnapshots", snaps, err)
	var snapIDs []string
	for _, sn := range snaps {
		got, err := s.GetSnapshot(ctx, sn.ID)
		put("GetSnapshot "+sn.ID, got, err)
		snapIDs = append(snapIDs, sn.ID)
	}
	for _, name := range []string{"golden", "web-base", "nope"} {
		got, err := s.GetSnapshotByName(ctx, "t", name)
		put("GetSnapshotByName "+name, got, err)
	}
	for _, f := range []store.SnapshotFilter{
		{LineageID: "a", Kinds: []string{"checkpoint"}}, {States: []string{store.SnapshotReady}, Newest: 3},
		{States: []string{store.SnapshotReady}, NotDurable: true},
	} {
		got, err := s.ListSnapshots(ctx, f)
		put(fmt.Sprintf("ListSnapshots %+v", f), got, err)
	}
	for _, q := range []store.SnapshotPageQuery{
		{TeamID: "t", States: []string{store.SnapshotReady}}, {LineageID: "a", ByGeneration: true},
		{TeamID: "t", Kinds: []string{"checkpoint"}}, {TeamID: "t", Name: "golden"},
	} {
		var pages [][]*store.Snapshot
		for i := 0; ; i++ {
			q.Limit = 2
			page, more, err := s.ListSnapshotsPage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			pages = append(pages, page)
			if !more || i > 20 {
				break
			}
			q.After = store.SnapshotCursorOf(page[len(page)-1], q.ByGeneration)
		}
		q.After = store.SnapshotCursor{}
		out[fmt.Sprintf("ListSnapshotsPage %+v", q)] = pages
	}
	restored, err := s.CountRestoredFrom(ctx, snapIDs, nil)
	put("CountRestoredFrom", restored, err)
	bytes, err := s.SnapshotBytes(ctx)
	put("SnapshotBytes", bytes, err)
	byKind, err := s.SnapshotBytesByKind(ctx)
	put("SnapshotBytesByKind", byKind, err)

	for _, team := range []string{"t", "u"} {
		vols, err := s.ListVolumes(ctx, team)
		put("ListVolumes "+team, vols, err)
		page, more, err := s.ListVolumesPage(ctx, team, "cache", 1)
		put("ListVolumesPage "+team, []any{page, more}, err)
		users, err := s.VolumeMachines(ctx, team, []string{"data", "cache"})
		put("VolumeMachines "+team, users, err)
		keys, err := s.ListSSHKeys(ctx, team)
		put("ListSSHKeys "+team, keys, err)
		got, err := s.APIKeyByHash(ctx, "hash-"+team)
		put("APIKeyByHash "+team, got, err)
		apiKeys, err := s.ListAPIKeys(ctx, team)
		put("ListAPIKeys "+team, apiKeys, err)
	}
	n, err := s.CountTeams(ctx)
	put("CountTeams", n, err)
	teams, err := s.ListTeams(ctx)
	put("ListTeams", teams, err)
	idem, err := s.GetIdempotent(ctx, "t", "retry-1")
	put("GetIdempotent", idem, err)
	audit, err := s.ListAudit(ctx, store.AuditFilter{})
	put("ListAudit", audit, err)
	for _, team := range []string{"t", "u"} {
		q, err := s.GetQuota(ctx, team)
		put("GetQuota "+team, q, err)
		u, err := s.TeamUsage(ctx, team, copyBase)
		put("TeamUsage "+team, u, err)
	}
	key, err := s.SSHKeyByFingerprint(ctx, "SHA256:fp1")
	put("SSHKeyByFingerprint", key, err)

	for _, f := range []store.EventFilter{{}, {After: 6}, {TeamID: "u"}, {TeamID: "t", MachineID: "a"}, {Types: []string{"machine.created"}}, {Limit: 2}} {
		evs, err := s.ListEvents(ctx, f)
		put(fmt.Sprintf("ListEvents %+v", f), evs, err)
	}
	for _, name := range []string{"webhook", "audit", "none"} {
		seq, err := s.Cursor(ctx, name)
		put("Cursor "+name, seq, err)
	}
	for _, name := range []string{"url-signing", "ssh-host-key", "none"} {
		v, at, err := s.Secret(ctx, name)
		put("Secret "+name, struct {
			V  []byte
			At time.Time
		}{v, at}, err)
	}
	return out
}

// sameAnswers compares two stores' answers call by call (as JSON, where
// times read the same whatever their location).
func sameAnswers(t *testing.T, want, got map[string]any) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		w, _ := json.Marshal(want[k])
		g, _ := json.Marshal(got[k])
		if string(w) != string(g) {
			t.Errorf("%s:\n got %s\nwant %s", k, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d answers, want %d", len(got), len(want))
	}
}

// dumpTables reads every copied row of db as the database stores it (no
// conversion: NULL and ” differ, as do 0 and false), sorted per table.
// Two databases of one backend holding the same records dump the same.
func dumpTables(t *testing.T, db *DB) map[string][]string {
	out := map[string][]string{}
	for _, tb := range copyTables {
		names := make([]string, len(tb.cols))
		for i, c := range tb.cols {
			names[i] = c.name
		}
		rows, err := queryAll(t.Context(), db.c(), "dump", `SELECT `+strings.Join(names, ", ")+` FROM `+tb.name, nil,
			func(r scanner) (string, error) {
				vals := make([]any, len(names))
				dest := make([]any, len(names))
				for i := range vals {
					dest[i] = &vals[i]
				}
				if err := r.Scan(dest...); err != nil {
					return "", err
				}
				var b strings.Builder
				for i, v := range vals {
					if tm, ok := v.(time.Time); ok {
						v = tm.UTC().Format(time.RFC3339Nano)
					}
					fmt.Fprintf(&b, "%s=%T(%v) ", names[i], v, v)
				}
				return b.String(), nil
			})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(rows)
		out[tb.name] = rows
	}
	return out
}

func sameRows(t *testing.T, what string, want, got map[string][]string) {
	t.Helper()
	for _, tb := range copyTables {
		if !slices.Equal(want[tb.name], got[tb.name]) {
			t.Errorf("%s, table %s:\n got %q\nwant %q", what, tb.name, got[tb.name], want[tb.name])
		}
	}
}

// TestCopySQLiteToPostgres: a node's SQLite state copied into an empty
// PostgreSQL database answers every read as the source does; new events
// are numbered after the copied ones (and after pruned ones); the spare
// stays behind; a second copy into the same target is refused. Row by
// row, the copy holds what PostgreSQL's own writes of the same records
// hold, and the copy back into SQLite the source's very values.
func TestCopySQLiteToPostgres(t *testing.T) {
	ctx := t.Context()
	src := openSQLite(t)
	fillNode(t, src)
	dst := openPostgres(t, pgtest.URL(t))

	var progress []TableCount
	stats, err := CopyWithProgress(ctx, src, dst, func(tc TableCount) { progress = append(progress, tc) })
	if err != nil {
		t.Fatal(err)
	}
	wantRows := map[string]int64{"teams": 2, "api_keys": 2, "machines": 7, "machine_metadata": 7, "machine_volumes": 5,
		"snapshots": 9, "volumes": 3, "events": 5, "cursors": 2, "ssh_keys": 3, "cluster_secrets": 2, "team_quotas": 1, "idempotency_keys": 1, "audit_log": 1, "usage_records": 9}
	var total int64
	for _, tc := range stats.Tables {
		if tc.Rows != wantRows[tc.Table] {
			t.Errorf("copied %d rows of %s, want %d", tc.Rows, tc.Table, wantRows[tc.Table])
		}
		total += tc.Rows
	}
	if len(stats.Tables) != len(wantRows) || stats.Rows != total || !slices.Equal(progress, stats.Tables) {
		t.Errorf("stats %+v, progress %+v; want one count per table of %v, summed", stats, progress, wantRows)
	}
	if stats.SparesSkipped != 1 || stats.LastEventSeq != 10 {
		t.Errorf("spares skipped %d, last event %d; want 1, 10", stats.SparesSkipped, stats.LastEventSeq)
	}

	want := readAll(t, src)
	sameAnswers(t, want, readAll(t, dst))
	// The copy stores what PostgreSQL's own writes of the same records do.
	native := openPostgres(t, pgtest.URL(t))
	fillNode(t, native)
	sameRows(t, "copied into PostgreSQL vs written there", dumpTables(t, native), dumpTables(t, dst))
	if spares, err := dst.ListSpares(ctx); err != nil || len(spares) != 0 {
		t.Errorf("target spares: %v %v, want none", spares, err)
	}

	// Back into SQLite, before either changes.
	back := openSQLite(t)
	if _, err := Copy(ctx, dst, back); err != nil {
		t.Fatalf("copy back to SQLite: %v", err)
	}
	sameAnswers(t, want, readAll(t, back))
	sameRows(t, "copied back into SQLite vs the source", dumpTables(t, src), dumpTables(t, back))

	// The next event on either copy comes after the source's last number
	// (10, pruned), not after the last stored one (9).
	for name, db := range map[string]*DB{"postgres": dst, "sqlite copy": back} {
		ev := &api.Event{Type: "machine.created", TeamID: "t", MachineID: "x", Cause: "api", Time: time.Now()}
		if err := db.AppendEvent(ctx, ev); err != nil || ev.Seq != 11 {
			t.Errorf("%s: event after the copy got seq %d (%v), want 11", name, ev.Seq, err)
		}
	}

	_, err = Copy(ctx, src, dst)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "must be empty") {
		t.Fatalf("second copy into the same target: %v, want a failed precondition saying the target must be empty", err)
	}
	if n, err := dst.CountTeams(ctx); err != nil || n != 2 {
		t.Errorf("teams after the refused copy: %d %v, want 2", n, err)
	}
}

// TestCopyRefuses: a target with any record, or at another schema
// version, is refused, and nothing is written.
func TestCopyRefuses(t *testing.T) {
	ctx := t.Context()
	src := openSQLite(t)
	fillNode(t, src)

	// A server's first start on the target made a team.
	dst := openPostgres(t, pgtest.URL(t))
	check(t, dst.CreateTeam(ctx, store.Team{ID: "other", Name: "other", CreatedAt: time.Now()}))
	_, err := Copy(ctx, src, dst)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "teams has 1 rows") {
		t.Errorf("copy into a target with a team: %v, want a failed precondition naming teams", err)
	}

	// Events only.
	dst2 := openSQLite(t)
	check(t, dst2.AppendEvent(ctx, &api.Event{Type: "x", Time: time.Now()}))
	if _, err := Copy(ctx, src, dst2); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("copy into a target with an event: %v, want a failed precondition", err)
	}

	// Another schema version.
	dst3 := openSQLite(t)
	latest := sqliteSchema.latestVersion()
	check(t, func() error {
		_, err := dst3.c().exec(ctx, fmt.Sprintf("PRAGMA user_version = %d", latest-1))
		return err
	}())
	_, err = Copy(ctx, src, dst3)
	if want := fmt.Sprintf("version %d, the target's %d", latest, latest-1); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), want) {
		t.Errorf("copy into an older schema: %v, want a failed precondition naming both versions", err)
	}
	if n, err := dst3.CountTeams(ctx); err != nil || n != 0 {
		t.Errorf("teams after a refused copy: %d %v, want 0", n, err)
	}
}

// TestCopyCoversSchema: Copy's tables are every table of both schemas
// with exactly their columns, but those it leaves out on purpose. A
// migration that adds a table or a column fails here until copy.go knows
// how to copy it.
func TestCopyCoversSchema(t *testing.T) {
	listings := map[string]struct {
		db              *DB
		tables, columns string
	}{
		"sqlite": {openSQLite(t), `SELECT name FROM sqlite_master WHERE type = 'table'`,
			`SELECT name FROM pragma_table_info(?)`},
		"postgres": {openPostgres(t, pgtest.URL(t)), `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`,
			`SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?`},
	}
	known := map[string][]string{}
	for _, tb := range copyTables {
		for _, c := range tb.cols {
			known[tb.name] = append(known[tb.name], c.name)
		}
	}
	str := func(r scanner) (string, error) {
		var s string
		err := r.Scan(&s)
		return s, err
	}
	for name, l := range listings {
		tables, err := queryAll(t.Context(), l.db.c(), "tables", l.tables, nil, str)
		check(t, err)
		seen := map[string]bool{}
		for _, tb := range tables {
			if _, skip := notCopied[tb]; skip {
				continue
			}
			seen[tb] = true
			cols, err := queryAll(t.Context(), l.db.c(), "columns", l.columns, []any{tb}, str)
			check(t, err)
			want := slices.Sorted(slices.Values(known[tb]))
			if slices.Sort(cols); !slices.Equal(cols, want) {
				t.Errorf("%s: table %s has columns %v; copy knows %v", name, tb, cols, want)
			}
		}
		for tb := range known {
			if !seen[tb] {
				t.Errorf("%s: copy knows table %s, which the schema does not have", name, tb)
			}
		}
	}
}
