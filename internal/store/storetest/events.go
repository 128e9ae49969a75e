package storetest

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func seqs(evs []api.Event) []int64 {
	out := []int64{}
	for _, ev := range evs {
		out = append(out, ev.Seq)
	}
	return out
}

// testEvents: AppendEvent gives increasing sequence numbers; ListEvents
// reads by sequence, filtered.
func testEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	if evs, err := s.ListEvents(ctx, store.EventFilter{}); err != nil || len(evs) != 0 {
		t.Fatalf("events of an empty store: %v, %v", evs, err)
	}
	in := []api.Event{
		{Type: "machine.created", TeamID: "t", MachineID: "a", Cause: "api", Details: map[string]any{"template": "base", "cpu": float64(2)}},
		{Type: "machine.paused", TeamID: "t", MachineID: "a", Cause: "idle"},
		{Type: "machine.created", TeamID: "u", MachineID: "b", Cause: "api"},
		{Type: "machine.killed", TeamID: "t", MachineID: "c", Cause: "timeout", Details: map[string]any{"nested": map[string]any{"ok": true}}},
		{Type: "template.built", TeamID: "t", Cause: "api"},
	}
	var last int64
	for i := range in {
		in[i].Time = base.Add(time.Duration(i)*time.Second + time.Duration(i)*time.Microsecond)
		must(t, s.AppendEvent(ctx, &in[i]))
		if in[i].Seq <= last {
			t.Fatalf("event %d got seq %d, after %d", i, in[i].Seq, last)
		}
		last = in[i].Seq
	}
	all, err := s.ListEvents(ctx, store.EventFilter{})
	must(t, err)
	if len(all) != len(in) {
		t.Fatalf("listed %d events, want %d", len(all), len(in))
	}
	for i, got := range all {
		w := in[i]
		if !got.Time.Equal(w.Time) {
			t.Errorf("event %d: time %v, want %v", i, got.Time, w.Time)
		}
		got.Time, w.Time = time.Time{}, time.Time{}
		if len(got.Details) == 0 {
			got.Details = nil
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, w)
		}
	}

	seq := func(i int) int64 { return in[i].Seq }
	for _, c := range []struct {
		name string
		f    store.EventFilter
		want []int64
	}{
		{"team", store.EventFilter{TeamID: "t"}, []int64{seq(0), seq(1), seq(3), seq(4)}},
		{"machine", store.EventFilter{TeamID: "t", MachineID: "a"}, []int64{seq(0), seq(1)}},
		{"types", store.EventFilter{Types: []string{"machine.created", "machine.killed"}}, []int64{seq(0), seq(2), seq(3)}},
		{"after", store.EventFilter{After: seq(2)}, []int64{seq(3), seq(4)}},
		{"after the last", store.EventFilter{After: seq(4)}, []int64{}},
		{"limit", store.EventFilter{Limit: 2}, []int64{seq(0), seq(1)}},
		{"after and limit", store.EventFilter{TeamID: "t", After: seq(0), Limit: 2}, []int64{seq(1), seq(3)}},
	} {
		got, err := s.ListEvents(ctx, c.f)
		must(t, err)
		if g := seqs(got); !slices.Equal(g, c.want) {
			t.Errorf("%s: seqs %v, want %v", c.name, g, c.want)
		}
	}
}

// testEventsDefaultLimit: without a limit, a list returns 1000 events.
func testEventsDefaultLimit(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 1001 {
		must(t, s.AppendEvent(ctx, &api.Event{Type: "machine.created", TeamID: "t", MachineID: fmt.Sprint(i), Time: base}))
	}
	evs, err := s.ListEvents(ctx, store.EventFilter{})
	must(t, err)
	if len(evs) != 1000 || evs[999].MachineID != "999" {
		t.Fatalf("listed %d events, want the first 1000", len(evs))
	}
	rest, err := s.ListEvents(ctx, store.EventFilter{After: evs[999].Seq})
	if err != nil || len(rest) != 1 || rest[0].MachineID != "1000" {
		t.Fatalf("after the first 1000: %v %v, want the last one", rest, err)
	}
}

func testCursors(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, c := range []struct {
		name string
		set  int64 // -1: do not set
		want int64
	}{
		{"webhook", -1, 0}, // no position yet
		{"webhook", 5, 5},
		{"webhook", 9, 9}, // moved on
		{"other", 3, 3},   // cursors are apart
		{"webhook", -1, 9},
		{"webhook", 2, 2}, // set, not max
	} {
		if c.set >= 0 {
			must(t, s.SetCursor(ctx, c.name, c.set))
		}
		if got, err := s.Cursor(ctx, c.name); err != nil || got != c.want {
			t.Errorf("cursor %s after setting %d: %d, %v; want %d", c.name, c.set, got, err, c.want)
		}
	}
}

// testPruneEvents: events older than the cutoff, and those beyond the
// newest keep, go, but never one after notAfter.
func testPruneEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.PruneEvents(ctx, now(), 0, 1<<62); err != nil || n != 0 {
		t.Fatalf("prune an empty store: %d, %v", n, err)
	}
	start := now()
	var first int64
	for i := range 10 {
		ev := &api.Event{Type: "machine.created", TeamID: "t", Time: start.Add(time.Duration(i-10) * time.Hour)}
		must(t, s.AppendEvent(ctx, ev))
		if i == 0 {
			first = ev.Seq
		}
	}
	// seq returns the sequence number of the i-th event (1-based).
	seq := func(i int64) int64 { return first + i - 1 }
	// Older than 5 h: events 1..5 (times -10h..-6h); but a consumer is at 3.
	n, err := s.PruneEvents(ctx, start.Add(-5*time.Hour), 0, seq(3))
	if err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3 (the consumer has not seen 4 and 5)", n, err)
	}
	// Keep the newest 4, the consumer everywhere.
	n, err = s.PruneEvents(ctx, start.Add(-100*time.Hour), 4, 1<<62)
	if err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3 (4, 5, 6)", n, err)
	}
	evs, err := s.ListEvents(ctx, store.EventFilter{})
	if err != nil || !slices.Equal(seqs(evs), []int64{seq(7), seq(8), seq(9), seq(10)}) {
		t.Fatalf("left %v %v, want events 7..10", seqs(evs), err)
	}
	// Sequence numbers are not reused after a prune.
	ev := &api.Event{Type: "machine.created", TeamID: "t", Time: start}
	must(t, s.AppendEvent(ctx, ev))
	if ev.Seq <= seq(10) {
		t.Fatalf("an event after the prune got seq %d, want above %d", ev.Seq, seq(10))
	}
	// Pruning everything before now, keeping none, with no consumer bound.
	n, err = s.PruneEvents(ctx, start.Add(time.Second), 0, 1<<62)
	if err != nil || n != 5 {
		t.Fatalf("pruned %d, %v; want 5", n, err)
	}
	next := &api.Event{Type: "machine.created", TeamID: "t", Time: start}
	must(t, s.AppendEvent(ctx, next))
	if next.Seq <= ev.Seq {
		t.Fatalf("an event appended to an emptied log got seq %d, want above %d", next.Seq, ev.Seq)
	}
}

func testSSHKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, team := range []string{"t", "u"} {
		must(t, s.CreateTeam(ctx, store.Team{ID: team, Name: team, CreatedAt: base}))
	}
	key := func(id, team string, at int) store.SSHKey {
		return store.SSHKey{ID: id, TeamID: team, Name: "key " + id, Fingerprint: "SHA256:" + id, PublicKey: "ssh-ed25519 AAAA" + id,
			CreatedAt: base.Add(time.Duration(at) * time.Second)}
	}
	in := []store.SSHKey{key("k2", "t", 1), key("k1", "t", 2), key("k3", "u", 3)}
	for _, k := range in {
		must(t, s.AddSSHKey(ctx, k))
	}
	for _, c := range []struct {
		name string
		k    store.SSHKey
	}{
		{"same team", store.SSHKey{ID: "k4", TeamID: "t", Name: "again", Fingerprint: "SHA256:k1", PublicKey: "x", CreatedAt: base}},
		{"another team", store.SSHKey{ID: "k5", TeamID: "u", Name: "again", Fingerprint: "SHA256:k1", PublicKey: "x", CreatedAt: base}},
	} {
		checkErr(t, "a registered key added again, "+c.name, s.AddSSHKey(ctx, c.k), errdefs.ErrFailedPrecondition, errdefs.CodeSSHKeyExists)
	}

	sameKey := func(got, want store.SSHKey) bool {
		return got.CreatedAt.Equal(want.CreatedAt) && got.ID == want.ID && got.TeamID == want.TeamID && got.Name == want.Name &&
			got.Fingerprint == want.Fingerprint && got.PublicKey == want.PublicKey
	}
	for team, want := range map[string][]store.SSHKey{"t": {in[0], in[1]}, "u": {in[2]}, "none": nil} {
		got, err := s.ListSSHKeys(ctx, team)
		must(t, err)
		if len(got) != len(want) {
			t.Errorf("keys of %s: %+v, want %+v", team, got, want)
			continue
		}
		for i := range got {
			if !sameKey(got[i], want[i]) {
				t.Errorf("key %d of %s: %+v, want %+v", i, team, got[i], want[i])
			}
		}
	}
	if k, err := s.SSHKeyByFingerprint(ctx, "SHA256:k3"); err != nil || !sameKey(k, in[2]) {
		t.Errorf("by fingerprint: %+v, %v; want %+v", k, err, in[2])
	}
	_, err := s.SSHKeyByFingerprint(ctx, "SHA256:nope")
	checkErr(t, "an unknown fingerprint", err, errdefs.ErrNotFound, "")

	for _, c := range []struct {
		name, team, key string
		code            string // "": deleted
	}{
		{"another team's key", "t", "k3", errdefs.CodeSSHKeyNotFound},
		{"another team's key by fingerprint", "t", "SHA256:k3", errdefs.CodeSSHKeyNotFound},
		{"by id", "t", "k1", ""},
		{"by id again", "t", "k1", errdefs.CodeSSHKeyNotFound},
		{"by fingerprint", "t", "SHA256:k2", ""},
		{"unknown", "t", "nope", errdefs.CodeSSHKeyNotFound},
	} {
		err := s.DeleteSSHKey(ctx, c.team, c.key)
		if c.code == "" {
			if err != nil {
				t.Errorf("delete %s: %v", c.name, err)
			}
			continue
		}
		checkErr(t, "delete "+c.name, err, errdefs.ErrNotFound, c.code)
	}
	if got, err := s.ListSSHKeys(ctx, "t"); err != nil || len(got) != 0 {
		t.Errorf("team t's keys after the deletes: %+v, %v", got, err)
	}
	// A deleted key can be registered again, by another team.
	must(t, s.AddSSHKey(ctx, key("k1", "u", 4)))
}

// testSSHKeyQuota: a team holds at most store.MaxSSHKeysPerTeam keys.
func testSSHKeyQuota(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, team := range []string{"t", "u"} {
		must(t, s.CreateTeam(ctx, store.Team{ID: team, Name: team, CreatedAt: base}))
	}
	add := func(team string, i int) error {
		id := fmt.Sprintf("%s%d", team, i)
		return s.AddSSHKey(ctx, store.SSHKey{ID: id, TeamID: team, Name: id, Fingerprint: "SHA256:" + id, PublicKey: "x", CreatedAt: base})
	}
	for i := range store.MaxSSHKeysPerTeam {
		must(t, add("t", i))
	}
	checkErr(t, "a key beyond the quota", add("t", store.MaxSSHKeysPerTeam), errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted)
	must(t, add("u", 0)) // another team's quota is its own
	must(t, s.DeleteSSHKey(ctx, "t", "t0"))
	must(t, add("t", store.MaxSSHKeysPerTeam))
}
