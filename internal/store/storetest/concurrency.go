package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// testStaleWrite: a write of a copy read before someone else's write
// fails with a *store.ConflictError and changes nothing; a write of a
// fresh copy succeeds; a write of a deleted machine is not found.
func testStaleWrite(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	m := f.machine("a", "t", "", api.StateRunning)
	if m.Version != 0 {
		t.Fatalf("a new machine's version: %d, want 0", m.Version)
	}
	stale := f.get("a")
	f.update(m, func(m *store.Machine) { m.State = api.StatePausing })
	if m.Version != 1 || f.get("a").Version != 1 {
		t.Fatalf("version after one write: caller %d, stored %d; want 1", m.Version, f.get("a").Version)
	}
	stale.State = api.StateKilled
	err := s.UpdateMachine(ctx, stale)
	var ce *store.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, errdefs.ErrConflict) || ce.Want != 0 || ce.Have != 1 {
		t.Fatalf("write of a stale copy: %v, want a ConflictError (want 0, have 1) matching ErrConflict", err)
	}
	if stale.Version != 0 || f.get("a").State != api.StatePausing {
		t.Fatalf("after the lost write: copy at %d, stored state %s; want 0 and pausing", stale.Version, f.get("a").State)
	}
	// AssignSlot and CommitSnapshot are compare-and-set too.
	must(t, s.AssignSlot(ctx, m, slots))
	if m.Version != 2 {
		t.Fatalf("version after AssignSlot: %d, want 2", m.Version)
	}
	checkErr(t, "AssignSlot of a stale copy", s.AssignSlot(ctx, stale, slots), errdefs.ErrConflict, "")
	sn := f.snapshot("s", func(sn *store.Snapshot) { sn.State = store.SnapshotWriting })
	stale = f.get("a")
	f.update(m, func(m *store.Machine) { m.Error = "moved" })
	stale.State = api.StatePaused
	checkErr(t, "CommitSnapshot with a stale machine", s.CommitSnapshot(ctx, sn, stale), errdefs.ErrConflict, "")
	if got, _ := s.GetSnapshot(ctx, "s"); got == nil || got.State != store.SnapshotWriting {
		t.Fatalf("the snapshot after a commit that lost: %+v, want still writing", got)
	}
	fresh := f.get("a")
	fresh.State = api.StatePaused
	must(t, s.CommitSnapshot(ctx, sn, fresh))
	if fresh.Version != f.get("a").Version {
		t.Fatalf("version after a commit: caller %d, stored %d", fresh.Version, f.get("a").Version)
	}
	must(t, s.DeleteMachine(ctx, "a"))
	checkErr(t, "write of a deleted machine", s.UpdateMachine(ctx, fresh), errdefs.ErrNotFound, "")
}

// RunConcurrent runs the tests of two store handles on one database at
// once (two servers sharing it). open returns both handles on a fresh,
// empty database; RunConcurrent closes them.
func RunConcurrent(t *testing.T, open func(t *testing.T) (store.Store, store.Store)) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, a, b store.Store)
	}{
		{"NoLostUpdates", testNoLostUpdates},
		{"Slots", testConcurrentSlots},
		{"OneLineage", testConcurrentLineage},
		{"EventsInCommitOrder", testConcurrentEvents},
		{"OneIdempotentRequest", testConcurrentIdempotency},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := open(t)
			t.Cleanup(func() { a.Close(); b.Close() })
			tc.run(t, a, b)
		})
	}
}

const workers = 8 // per handle

// both runs fn in workers goroutines on each handle and waits.
func both(a, b store.Store, fn func(s store.Store, worker int)) {
	var wg sync.WaitGroup
	for i := range 2 * workers {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(s, i)
		}()
	}
	wg.Wait()
}

// testNoLostUpdates: read-modify-write loops from both handles at once,
// retrying on conflict, lose no increment.
func testNoLostUpdates(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	newFixture(t, a).machine("m", "t", "", api.StateRunning)
	const rounds = 5
	errs := make(chan error, 2*workers)
	both(a, b, func(s store.Store, _ int) {
		for range rounds {
			for {
				m, err := s.GetMachine(ctx, "m")
				if err != nil {
					errs <- err
					return
				}
				m.TimeoutMS++
				err = s.UpdateMachine(ctx, m)
				if err == nil {
					break
				}
				if !errors.Is(err, errdefs.ErrConflict) {
					errs <- err
					return
				}
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := a.GetMachine(ctx, "m")
	must(t, err)
	if want := int64(2 * workers * rounds); got.TimeoutMS != want || got.Version != want {
		t.Fatalf("after %d increments: counter %d, version %d", want, got.TimeoutMS, got.Version)
	}
}

// testConcurrentSlots: machines and spares made from both handles at once
// all get distinct slots, and the pool's bound holds.
func testConcurrentSlots(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	const pool = 3 * workers // fewer than the 4*workers asked for
	var mu sync.Mutex
	held := map[int]string{}
	exhausted := 0
	both(a, b, func(s store.Store, w int) {
		for j := range 2 {
			id := fmt.Sprintf("w%d-%d", w, j)
			var slot int
			var err error
			if j == 0 {
				m := &store.Machine{ID: id, TeamID: "t", State: api.StateCreating, Template: "minimal", MemoryMB: 64, CreatedAt: now()}
				err, slot = s.CreateMachine(ctx, m, pool), m.Slot
			} else {
				sp := &store.Spare{MachineID: id, ContainerID: "c", Shape: `{"memory_mb":64}`, CreatedAt: now()}
				err, slot = s.CreateSpare(ctx, sp, pool), sp.Slot
			}
			mu.Lock()
			switch {
			case errors.Is(err, errdefs.ErrResourceExhausted):
				exhausted++
			case err != nil:
				t.Errorf("%s: %v", id, err)
			case held[slot] != "":
				t.Errorf("slot %d given to %s and %s", slot, held[slot], id)
			default:
				held[slot] = id
			}
			mu.Unlock()
		}
	})
	if len(held) != pool || exhausted != 4*workers-pool {
		t.Fatalf("%d slots held, %d refused; want %d and %d", len(held), exhausted, pool, 4*workers-pool)
	}
}

// testConcurrentLineage: executions added to one lineage from both
// handles at once get distinct, contiguous sequence numbers and leave
// exactly one latest row; an insert that loses a race fails with a
// conflict, never with a duplicate.
func testConcurrentLineage(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	newFixture(t, a).machine("l", "t", "", api.StatePaused)
	var mu sync.Mutex
	made := 0
	both(a, b, func(s store.Store, w int) {
		for {
			m := &store.Machine{ID: fmt.Sprintf("l-%d", w), TeamID: "t", State: api.StateCreating, Template: "minimal",
				LineageID: "l", CreatedAt: now()}
			err := s.CreateMachine(ctx, m, slots)
			if errors.Is(err, errdefs.ErrConflict) {
				continue // the lineage moved: a caller reads it again
			}
			mu.Lock()
			if err != nil {
				t.Errorf("%s: %v", m.ID, err)
			} else {
				made++
			}
			mu.Unlock()
			return
		}
	})
	rows, err := a.ListMachines(ctx, store.MachineFilter{LineageID: "l"})
	must(t, err)
	var seqs []int
	latest := 0
	for _, m := range rows {
		seqs = append(seqs, m.LineageSeq)
		if m.Latest {
			latest++
			if m.LineageSeq != len(rows) {
				t.Errorf("the latest row has seq %d of %d", m.LineageSeq, len(rows))
			}
		}
	}
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != i+1 {
			t.Fatalf("sequence numbers %v, want 1..%d", seqs, len(rows))
		}
	}
	if latest != 1 || made != 2*workers || len(rows) != made+1 {
		t.Fatalf("%d rows, %d latest, %d made; want %d, 1, %d", len(rows), latest, made, 2*workers+1, 2*workers)
	}
	head, err := b.LineageHead(ctx, "l")
	if err != nil || !head.Latest {
		t.Fatalf("lineage head: %+v %v", head, err)
	}
}

// testConcurrentEvents: while both handles append, a follower reading
// "after the last seen" from one of them sees every event, in order: no
// number is given out before a smaller one is committed.
func testConcurrentEvents(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	const each = 10
	done := make(chan struct{})
	var seen []int64
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		var after int64
		for {
			// Whether every append had returned before this read began:
			// only such a read, finding nothing, is the last (one that
			// began earlier may miss the last commit).
			finished := false
			select {
			case <-done:
				finished = true
			default:
			}
			evs, err := a.ListEvents(ctx, store.EventFilter{After: after})
			if err != nil {
				t.Error(err)
				return
			}
			for _, ev := range evs {
				seen = append(seen, ev.Seq)
				after = ev.Seq
			}
			if finished && len(evs) == 0 {
				return
			}
			if !finished {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var mu sync.Mutex
	var appended []int64
	both(a, b, func(s store.Store, w int) {
		for i := range each {
			ev := &api.Event{TeamID: "t", Type: "machine.created", MachineID: fmt.Sprintf("m%d-%d", w, i), Time: now()}
			if err := s.AppendEvent(ctx, ev); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			appended = append(appended, ev.Seq)
			mu.Unlock()
		}
	})
	close(done)
	<-followed
	slices.Sort(appended)
	if !slices.Equal(seen, appended) || len(seen) != 2*workers*each {
		t.Fatalf("the follower saw %d events %v;\nappended %d %v", len(seen), seen, len(appended), appended)
	}
}

// testSecrets: the first value offered for a secret is kept unless a
// newer one comes (a rotation); an older one changes nothing.
func testSecrets(t *testing.T, s store.Store) {
	ctx := t.Context()
	got, _, err := s.Secret(ctx, "edge")
	if err != nil || got != nil {
		t.Fatalf("a secret never stored: %q %v, want nil", got, err)
	}
	t0 := base
	for _, tc := range []struct {
		offer string
		at    time.Time
		want  string
	}{
		{"first\x00\xff", t0, "first\x00\xff"},
		{"same time", t0, "first\x00\xff"},
		{"older", t0.Add(-time.Hour), "first\x00\xff"},
		{"rotated", t0.Add(time.Second), "rotated"},
		{"", t0.Add(2 * time.Second), ""},
	} {
		got, at, err := s.PutSecret(ctx, "edge", []byte(tc.offer), tc.at)
		if err != nil || string(got) != tc.want || got == nil {
			t.Fatalf("put %q at %v: %q %v, want %q", tc.offer, tc.at, got, err, tc.want)
		}
		if stored, sat, _ := s.Secret(ctx, "edge"); string(stored) != tc.want || !sat.Equal(at) {
			t.Fatalf("after putting %q: %q set at %v, want %q set at %v", tc.offer, stored, sat, tc.want, at)
		}
	}
}

// testDurable: a ready snapshot becomes durable once; the filter of
// snapshots not yet durable leaves it out; a snapshot no longer ready is
// not marked.
func testDurable(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	a := f.snapshot("a")
	f.snapshot("b")
	if a.Durable {
		t.Fatal("a new snapshot is durable")
	}
	ok, err := s.MarkDurable(ctx, "a")
	if err != nil || !ok {
		t.Fatalf("mark a: %v %v", ok, err)
	}
	got, err := s.GetSnapshot(ctx, "a")
	if err != nil || !got.Durable {
		t.Fatalf("a after the mark: %+v %v", got, err)
	}
	rest, err := s.ListSnapshots(ctx, store.SnapshotFilter{NotDurable: true, States: []string{store.SnapshotReady}})
	if err != nil || len(rest) != 1 || rest[0].ID != "b" {
		t.Fatalf("not durable: %v %v, want [b]", rest, err)
	}
	if ok, err := s.MarkPruning(ctx, "b"); err != nil || !ok {
		t.Fatalf("prune b: %v %v", ok, err)
	}
	if ok, err := s.MarkDurable(ctx, "b"); err != nil || ok {
		t.Fatalf("mark of a pruning snapshot: %v %v, want false", ok, err)
	}
}

// testConcurrentIdempotency: requests with one Idempotency-Key from both
// handles at once: exactly one is let in, the others see its record.
func testConcurrentIdempotency(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	var won atomic.Int32
	both(a, b, func(s store.Store, w int) {
		got, err := s.BeginIdempotent(ctx, store.IdempotencyRecord{TeamID: "t", Key: "k", Route: "POST /v1/machines",
			RequestHash: "h", CreatedAt: now()}, now().Add(-time.Hour), now().Add(-time.Hour))
		if err != nil {
			t.Error(err)
			return
		}
		if got == nil {
			won.Add(1)
		} else if got.RequestHash != "h" {
			t.Errorf("the record seen: %+v", got)
		}
	})
	if won.Load() != 1 {
		t.Fatalf("%d requests let in with one key, want 1", won.Load())
	}
}
