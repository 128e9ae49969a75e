// Package storetest is the conformance suite of store.Store: every
// behaviour that the machine manager and the store's other consumers rely
// on, checked through the interface only, so that each backend (SQLite,
// PostgreSQL) runs the same tests.
//
// Times the suite stores are in UTC and whole microseconds (PostgreSQL's
// precision), and are compared with Equal: a backend may return them in
// another location.
package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Run runs the suite, one subtest per behaviour. open returns a fresh,
// empty store for one subtest (it may register its own cleanups with t);
// Run closes the store when the subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.run(t, s)
		})
	}
}

var tests = []struct {
	name string
	run  func(t *testing.T, s store.Store)
}{
	{"Teams", testTeams},
	{"Quotas", testQuotas},
	{"Idempotency", testIdempotency},
	{"Audit", testAudit},
	{"MachineRoundTrip", testMachineRoundTrip},
	{"MachineDefaults", testMachineDefaults},
	{"MainProcess", testMainProcess},
	{"SlotAllocation", testSlotAllocation},
	{"Spares", testSpares},
	{"CreateMachineFromSpare", testCreateMachineFromSpare},
	{"Lineages", testLineages},
	{"ListMachines", testListMachines},
	{"CountsAndCommittedMemory", testCountsAndCommittedMemory},
	{"MachinePageFilters", testMachinePageFilters},
	{"MachinePageStability", testMachinePageStability},
	{"MachinePageDescAndRange", testMachinePageDescAndRange},
	{"LineageSummaries", testLineageSummaries},
	{"PruneEnded", testPruneEnded},
	{"PruneEndedKeepsOneLatest", testPruneEndedKeepsOneLatest},
	{"AssignSlotOfMissingMachine", testAssignSlotOfMissingMachine},
	{"SnapshotRoundTrip", testSnapshotRoundTrip},
	{"CommitSnapshotIsAtomic", testCommitSnapshotIsAtomic},
	{"CommitMissingSnapshot", testCommitMissingSnapshot},
	{"SnapshotNames", testSnapshotNames},
	{"ListSnapshots", testListSnapshots},
	{"SnapshotPageFilters", testSnapshotPageFilters},
	{"SnapshotPageStability", testSnapshotPageStability},
	{"CountRestoredFrom", testCountRestoredFrom},
	{"SnapshotRetention", testSnapshotRetention},
	{"SnapshotBytes", testSnapshotBytes},
	{"Volumes", testVolumes},
	{"VolumeMachines", testVolumeMachines},
	{"Events", testEvents},
	{"EventsDefaultLimit", testEventsDefaultLimit},
	{"Cursors", testCursors},
	{"PruneEvents", testPruneEvents},
	{"SSHKeys", testSSHKeys},
	{"SSHKeyQuota", testSSHKeyQuota},
	{"StaleWrite", testStaleWrite},
	{"Usage", testUsage},
	{"Secrets", testSecrets},
	{"Durable", testDurable},
}

// base is the suite's clock origin.
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// now is the current time as the suite stores times.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// slots is the network pool of tests that do not test it.
const slots = 1000

// fixture stores records with increasing creation times, a second apart.
type fixture struct {
	t     *testing.T
	s     store.Store
	clock time.Time
}

func newFixture(t *testing.T, s store.Store) *fixture {
	return &fixture{t: t, s: s, clock: base}
}

// tick advances the clock by a second and returns it.
func (f *fixture) tick() time.Time {
	f.clock = f.clock.Add(time.Second)
	return f.clock
}

// machine stores a machine of team, created at the next tick, as the next
// execution of lineage ("": a new lineage), after applying opts.
func (f *fixture) machine(id, team, lineage, state string, opts ...func(*store.Machine)) *store.Machine {
	f.t.Helper()
	m := &store.Machine{ID: id, TeamID: team, State: state, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		LineageID: lineage, ContainerID: "c-" + id, AgentToken: "tok-" + id, CreatedAt: f.tick()}
	for _, o := range opts {
		o(m)
	}
	if err := f.s.CreateMachine(f.t.Context(), m, slots); err != nil {
		f.t.Fatalf("create machine %s: %v", id, err)
	}
	return m
}

// update applies change to m and stores it.
func (f *fixture) update(m *store.Machine, change func(*store.Machine)) {
	f.t.Helper()
	change(m)
	if err := f.s.UpdateMachine(f.t.Context(), m); err != nil {
		f.t.Fatalf("update machine %s: %v", m.ID, err)
	}
}

// get returns a stored machine.
func (f *fixture) get(id string) *store.Machine {
	f.t.Helper()
	m, err := f.s.GetMachine(f.t.Context(), id)
	if err != nil {
		f.t.Fatalf("get machine %s: %v", id, err)
	}
	return m
}

// snapshot stores a ready hibernate snapshot of machine m (lineage m) in
// team t, created at the next tick, after applying opts.
func (f *fixture) snapshot(id string, opts ...func(*store.Snapshot)) *store.Snapshot {
	f.t.Helper()
	sn := &store.Snapshot{ID: id, TeamID: "t", Kind: "hibernate", State: store.SnapshotReady, MachineID: "m", LineageID: "m",
		Template: "minimal", Generation: 1, SizeBytes: 10, CreatedAt: f.tick(),
		Host: json.RawMessage(`{}`), Spec: json.RawMessage(`{}`), Files: json.RawMessage(`[]`)}
	for _, o := range opts {
		o(sn)
	}
	if err := f.s.CreateSnapshot(f.t.Context(), sn); err != nil {
		f.t.Fatalf("create snapshot %s: %v", id, err)
	}
	return sn
}

// Options of fixture records.
func withMeta(kv ...string) func(*store.Machine) {
	return func(m *store.Machine) {
		m.Metadata = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m.Metadata[kv[i]] = kv[i+1]
		}
	}
}

func withTemplate(name string) func(*store.Machine) {
	return func(m *store.Machine) { m.Template = name }
}

func withRestoredFrom(id string) func(*store.Machine) {
	return func(m *store.Machine) { m.RestoredFrom = id }
}

func withMounts(names ...string) func(*store.Machine) {
	return func(m *store.Machine) {
		for _, n := range names {
			m.Volumes = append(m.Volumes, api.VolumeMount{Name: n, Path: "/" + n})
		}
	}
}

// must fails the test on an error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkErr checks that err is of class and, unless code is "", carries
// that public code.
func checkErr(t *testing.T, what string, err, class error, code string) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Errorf("%s: got %v, want an error matching %v", what, err, class)
		return
	}
	if got := errdefs.Classify(err).Code; code != "" && got != code {
		t.Errorf("%s: got code %q (%v), want %q", what, got, err, code)
	}
}

// ids returns the ids of records, in order.
func ids[T any](recs []T, id func(T) string) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, id(r))
	}
	return out
}

func machineIDs(ms []*store.Machine) []string {
	return ids(ms, func(m *store.Machine) string { return m.ID })
}
func snapshotIDs(ss []*store.Snapshot) []string {
	return ids(ss, func(s *store.Snapshot) string { return s.ID })
}

// normalMachine returns a copy of m that compares with reflect.DeepEqual
// across backends: times in UTC, empty maps and slices nil.
func normalMachine(m *store.Machine) store.Machine {
	c := *m
	for _, tp := range []*time.Time{&c.CreatedAt, &c.StartedAt, &c.EndedAt, &c.Deadline, &c.LineageCreated} {
		*tp = tp.UTC()
	}
	if c.MainExit != nil {
		e := *c.MainExit
		e.At = e.At.UTC()
		c.MainExit = &e
	}
	if len(c.Env) == 0 {
		c.Env = nil
	}
	if len(c.Metadata) == 0 {
		c.Metadata = nil
	}
	if len(c.Volumes) == 0 {
		c.Volumes = nil
	}
	if len(c.Command) == 0 {
		c.Command = nil
	}
	if len(c.Hooks.OnPause) == 0 {
		c.Hooks.OnPause = nil
	}
	if len(c.Hooks.OnResume) == 0 {
		c.Hooks.OnResume = nil
	}
	return c
}

// checkMachine checks that a stored machine reads back as want.
func checkMachine(t *testing.T, what string, got, want *store.Machine) {
	t.Helper()
	if g, w := normalMachine(got), normalMachine(want); !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

// sameJSON reports whether a and b hold the same JSON value (a backend may
// store JSON reformatted).
func sameJSON(a, b json.RawMessage) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// checkSnapshot checks that a stored snapshot reads back as want.
func checkSnapshot(t *testing.T, what string, got, want *store.Snapshot) {
	t.Helper()
	g, w := *got, *want
	if !g.CreatedAt.Equal(w.CreatedAt) {
		t.Errorf("%s: created %v, want %v", what, g.CreatedAt, w.CreatedAt)
	}
	for _, p := range []struct {
		name string
		g, w json.RawMessage
	}{{"host", g.Host, w.Host}, {"spec", g.Spec, w.Spec}, {"files", g.Files, w.Files}} {
		if !sameJSON(p.g, p.w) {
			t.Errorf("%s: %s %s, want %s", what, p.name, p.g, p.w)
		}
	}
	g.CreatedAt, w.CreatedAt = time.Time{}, time.Time{}
	g.Host, g.Spec, g.Files, w.Host, w.Spec, w.Files = nil, nil, nil, nil, nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

func testTeams(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.CountTeams(ctx); err != nil || n != 0 {
		t.Fatalf("CountTeams of an empty store = %d, %v; want 0", n, err)
	}
	must(t, s.CreateTeam(ctx, store.Team{ID: "t1", Name: "one", CreatedAt: base}))
	must(t, s.CreateTeam(ctx, store.Team{ID: "t2", Name: "two", CreatedAt: base.Add(time.Second)}))
	if n, err := s.CountTeams(ctx); err != nil || n != 2 {
		t.Fatalf("CountTeams = %d, %v; want 2", n, err)
	}
	err := s.CreateTeam(ctx, store.Team{ID: "t3", Name: "one", CreatedAt: base})
	checkErr(t, "a second team named one", err, errdefs.ErrConflict, errdefs.CodeTeamExists)
	if got, err := s.GetTeam(ctx, "t2"); err != nil || got.Name != "two" || !got.CreatedAt.Equal(base.Add(time.Second)) || !got.DeletedAt.IsZero() {
		t.Fatalf("GetTeam(t2) = %+v, %v", got, err)
	}
	_, err = s.GetTeam(ctx, "nope")
	checkErr(t, "unknown team", err, errdefs.ErrNotFound, errdefs.CodeTeamNotFound)

	expires := base.Add(time.Hour)
	keys := []store.APIKey{
		{ID: "k1", TeamID: "t1", Hash: "hash1", Prefix: "ns_abc", Name: "ci", Scopes: []string{"machines:read", "machines:write"}, CreatedAt: base},
		{ID: "k2", TeamID: "t1", Hash: "hash2", Prefix: "ns_def", Name: "admin", Scopes: []string{"keys:admin"}, CreatedAt: base.Add(time.Second), ExpiresAt: expires},
		{ID: "k3", TeamID: "t2", Hash: "hash3", Prefix: "ns_ghi", Scopes: []string{"operator"}, CreatedAt: base},
	}
	for _, k := range keys {
		must(t, s.AddAPIKey(ctx, k))
	}
	for _, want := range keys {
		got, err := s.APIKeyByHash(ctx, want.Hash)
		if err != nil || !reflect.DeepEqual(*got, want) {
			t.Errorf("APIKeyByHash(%s) = %+v, %v; want %+v", want.Hash, got, err, want)
		}
	}
	_, err = s.APIKeyByHash(ctx, "other")
	checkErr(t, "unknown key", err, errdefs.ErrUnauthenticated, "")
	_, err = s.GetAPIKey(ctx, "nope")
	checkErr(t, "unknown key id", err, errdefs.ErrNotFound, errdefs.CodeKeyNotFound)
	if got, err := s.ListAPIKeys(ctx, "t1"); err != nil || len(got) != 2 || got[0].ID != "k1" || got[1].ID != "k2" {
		t.Fatalf("ListAPIKeys(t1) = %+v, %v; want k1, k2", got, err)
	}

	used := base.Add(time.Minute)
	must(t, s.TouchAPIKey(ctx, "k1", used))
	must(t, s.RevokeAPIKey(ctx, "k1", used))
	must(t, s.RevokeAPIKey(ctx, "k1", used.Add(time.Hour))) // the first revocation stands
	if got, err := s.GetAPIKey(ctx, "k1"); err != nil || !got.LastUsedAt.Equal(used) || !got.RevokedAt.Equal(used) {
		t.Fatalf("k1 after a use and a revocation: %+v, %v", got, err)
	}
	checkErr(t, "revoke an unknown key", s.RevokeAPIKey(ctx, "nope", used), errdefs.ErrNotFound, errdefs.CodeKeyNotFound)

	// A deleted team: gone from lists, its keys revoked, its SSH keys
	// gone, its name free.
	must(t, s.AddSSHKey(ctx, store.SSHKey{ID: "s1", TeamID: "t1", Name: "n", Fingerprint: "SHA256:t1", PublicKey: "ssh-ed25519 AAAA", CreatedAt: base}))
	must(t, s.DeleteTeam(ctx, "t1", used))
	if keys, err := s.ListSSHKeys(ctx, "t1"); err != nil || len(keys) != 0 {
		t.Fatalf("SSH keys of a deleted team: %+v, %v", keys, err)
	}
	checkErr(t, "delete a deleted team", s.DeleteTeam(ctx, "t1", used), errdefs.ErrNotFound, errdefs.CodeTeamNotFound)
	if got, err := s.APIKeyByHash(ctx, "hash2"); err != nil || !got.RevokedAt.Equal(used) {
		t.Fatalf("a key of a deleted team: %+v, %v; want it revoked", got, err)
	}
	if got, err := s.ListTeams(ctx); err != nil || len(got) != 1 || got[0].ID != "t2" {
		t.Fatalf("ListTeams after deleting t1 = %+v, %v; want t2", got, err)
	}
	must(t, s.CreateTeam(ctx, store.Team{ID: "t4", Name: "one", CreatedAt: used}))
	if n, err := s.CountTeams(ctx); err != nil || n != 3 {
		t.Fatalf("CountTeams counts deleted teams too: %d, %v; want 3", n, err)
	}
}

// testQuotas: a team's own limits round-trip (defaults until set), and
// its usage counts what holds a slot, its ready snapshots and the
// lineages it began since a time, and nothing of another team's.
func testQuotas(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateTeam(ctx, store.Team{ID: "t", Name: "t", CreatedAt: base}))
	if q, err := s.GetQuota(ctx, "t"); err != nil || q != store.DefaultQuota {
		t.Fatalf("quota never set: %+v, %v; want the defaults", q, err)
	}
	q := store.Quota{RunningMachines: 5, VCPUs: -1, MemoryMB: 4096, SnapshotBytes: 1 << 30, CreatesPerMinute: 0, APIRate: 7, APIBurst: -1}
	must(t, s.SetQuota(ctx, "t", q))
	must(t, s.SetQuota(ctx, "t", q)) // replaces
	if got, err := s.GetQuota(ctx, "t"); err != nil || got != q {
		t.Fatalf("quota %+v, %v; want %+v", got, err, q)
	}

	f := newFixture(t, s)
	shape := func(cpu, mb int) func(*store.Machine) {
		return func(m *store.Machine) { m.CPUCount, m.MemoryMB = cpu, mb }
	}
	f.machine("a", "t", "", api.StateRunning, shape(2, 512))
	since := f.clock.Add(time.Millisecond)
	b := f.machine("b", "t", "", api.StateRunning, shape(1, 256))
	f.machine("b2", "t", b.LineageID, api.StateRunning, shape(1, 256)) // a resume: not a create
	paused := f.machine("p", "t", "", api.StatePaused, shape(4, 1024))
	f.update(paused, func(m *store.Machine) { m.Slot = -1 })
	f.machine("o", "u", "", api.StateRunning, shape(8, 8192))
	f.snapshot("s1", func(sn *store.Snapshot) { sn.SizeBytes = 1000 })
	f.snapshot("s2", func(sn *store.Snapshot) { sn.SizeBytes = 234; sn.State = store.SnapshotWriting })
	f.snapshot("s3", func(sn *store.Snapshot) { sn.SizeBytes = 99; sn.TeamID = "u" })
	u, err := s.TeamUsage(ctx, "t", since)
	want := store.TeamUsage{RunningMachines: 3, VCPUs: 4, MemoryMB: 1024, SnapshotBytes: 1000, Creates: 2, FirstCreate: b.CreatedAt}
	if err != nil || u != want {
		t.Fatalf("usage %+v, %v; want %+v", u, err, want)
	}
}

// testIdempotency: one record per team and key; in progress, then
// finished or abandoned; a record older than notBefore is replaced; prune.
func testIdempotency(t *testing.T, s store.Store) {
	ctx := t.Context()
	rec := store.IdempotencyRecord{TeamID: "t", Key: "k1", Route: "POST /v1/machines", RequestHash: "h1", CreatedAt: base}
	begin := func(r store.IdempotencyRecord, notBefore time.Time) *store.IdempotencyRecord {
		t.Helper()
		got, err := s.BeginIdempotent(ctx, r, notBefore, notBefore)
		must(t, err)
		return got
	}
	if got := begin(rec, base.Add(-time.Hour)); got != nil {
		t.Fatalf("first begin: %+v, want nil (let in)", got)
	}
	other := rec
	other.RequestHash = "h2"
	if got := begin(other, base.Add(-time.Hour)); got == nil || got.Status != 0 || got.RequestHash != "h1" || !got.CreatedAt.Equal(base) {
		t.Fatalf("second begin: %+v, want the first, in progress", got)
	}
	if got := begin(store.IdempotencyRecord{TeamID: "u", Key: "k1", Route: "r", RequestHash: "x", CreatedAt: base}, base); got != nil {
		t.Fatalf("another team's key: %+v, want nil", got)
	}
	body := []byte(`{"id":"mch_1"}`)
	must(t, s.FinishIdempotent(ctx, "t", "k1", 201, body))
	must(t, s.AbandonIdempotent(ctx, "t", "k1")) // a finished record stays
	if got, err := s.GetIdempotent(ctx, "t", "k1"); err != nil || got.Status != 201 || string(got.Body) != string(body) || got.Route != rec.Route {
		t.Fatalf("finished record: %+v, %v", got, err)
	}
	// An old record is replaced.
	newer := rec
	newer.RequestHash, newer.CreatedAt = "h3", base.Add(25*time.Hour)
	if got := begin(newer, base.Add(time.Hour)); got != nil {
		t.Fatalf("begin over an expired record: %+v, want nil", got)
	}
	// One in progress is taken over once stale (its server died), not
	// before.
	stale := newer
	stale.RequestHash, stale.CreatedAt = "h4", newer.CreatedAt.Add(time.Minute)
	if got, err := s.BeginIdempotent(ctx, stale, base, newer.CreatedAt); err != nil || got == nil || got.RequestHash != "h3" {
		t.Fatalf("begin beside a fresh record in progress: %+v %v, want it", got, err)
	}
	if got, err := s.BeginIdempotent(ctx, stale, base, newer.CreatedAt.Add(time.Second)); err != nil || got != nil {
		t.Fatalf("begin over a stale record in progress: %+v %v, want nil (taken over)", got, err)
	}
	must(t, s.AbandonIdempotent(ctx, "t", "k1"))
	_, err := s.GetIdempotent(ctx, "t", "k1")
	checkErr(t, "an abandoned record", err, errdefs.ErrNotFound, "")
	if n, err := s.PruneIdempotent(ctx, base.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want the other team's 1", n, err)
	}
}

// testAudit: entries newest first, filtered and paged; pruned by age and
// by count.
func testAudit(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, a := range []struct{ team, action string }{{"t", "key.create"}, {"u", "team.create"}, {"t", "request.denied"}, {"t", "key.revoke"}} {
		must(t, s.AppendAudit(ctx, store.AuditEntry{ID: fmt.Sprintf("aud_%02d", i), Time: base.Add(time.Duration(i) * time.Hour),
			TeamID: a.team, ActorTeamID: "op", ActorKeyID: "ak_1", Action: a.action, Target: "x", Outcome: "ok", Source: "127.0.0.1", Details: `{"n":1}`}))
	}
	ids := func(f store.AuditFilter) []string {
		t.Helper()
		es, err := s.ListAudit(ctx, f)
		must(t, err)
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out
	}
	for _, c := range []struct {
		f    store.AuditFilter
		want []string
	}{
		{store.AuditFilter{}, []string{"aud_03", "aud_02", "aud_01", "aud_00"}},
		{store.AuditFilter{TeamID: "t"}, []string{"aud_03", "aud_02", "aud_00"}},
		{store.AuditFilter{Action: "team.create"}, []string{"aud_01"}},
		{store.AuditFilter{TeamID: "t", Limit: 1, Before: "aud_03"}, []string{"aud_02"}},
	} {
		if got := ids(c.f); !slices.Equal(got, c.want) {
			t.Errorf("ListAudit(%+v) = %v, want %v", c.f, got, c.want)
		}
	}
	es, err := s.ListAudit(ctx, store.AuditFilter{Limit: 1})
	must(t, err)
	want := store.AuditEntry{ID: "aud_03", Time: base.Add(3 * time.Hour), TeamID: "t", ActorTeamID: "op", ActorKeyID: "ak_1",
		Action: "key.revoke", Target: "x", Outcome: "ok", Source: "127.0.0.1", Details: `{"n":1}`}
	if len(es) != 1 || es[0] != want {
		t.Fatalf("entry %+v, want %+v", es, want)
	}
	if n, err := s.PruneAudit(ctx, base.Add(time.Hour), 0); err != nil || n != 1 {
		t.Fatalf("prune by age: %d %v, want 1", n, err)
	}
	if n, err := s.PruneAudit(ctx, base, 2); err != nil || n != 1 {
		t.Fatalf("prune by count: %d %v, want 1", n, err)
	}
	if got := ids(store.AuditFilter{}); !slices.Equal(got, []string{"aud_03", "aud_02"}) {
		t.Fatalf("after the prunes: %v", got)
	}
}
