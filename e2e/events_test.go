package e2e

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func lastSeq(t *testing.T) int64 {
	t.Helper()
	var last int64
	for {
		evs, err := env.client.ListEvents(t.Context(), client.EventQuery{After: last})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return last
		}
		last = evs[len(evs)-1].Seq
	}
}

// TestEvents: every transition of a pause/resume/refresh/kill cycle is
// recorded in order with its machine and cause; a follower that drops its
// stream and reconnects with after=<last seq> misses nothing and sees
// nothing twice.
func TestEvents(t *testing.T) {
	start := lastSeq(t)
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	pause(t, m.ID)
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.client.SetTimeout(t.Context(), r.ID, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := env.client.KillMachine(t.Context(), r.ID); err != nil {
		t.Fatal(err)
	}

	all, err := env.client.ListEvents(t.Context(), client.EventQuery{After: start})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ typ, machine string }{
		{api.EventMachineCreated, m.ID}, {api.EventSnapshotCreated, m.ID}, {api.EventMachinePaused, m.ID},
		{api.EventMachineResumed, r.ID}, {api.EventLeaseUpdated, r.ID}, {api.EventMachineKilled, r.ID},
	}
	i := 0
	for k, ev := range all {
		if k > 0 && ev.Seq <= all[k-1].Seq {
			t.Fatalf("seq does not grow: %d after %d", ev.Seq, all[k-1].Seq)
		}
		if i < len(want) && ev.Type == want[i].typ && ev.MachineID == want[i].machine {
			if ev.Cause != "api" || ev.Time.IsZero() {
				t.Fatalf("event %+v: want cause api and a time", ev)
			}
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("events %+v: missing %s of %s (in order)", all, want[i].typ, want[i].machine)
	}
	if evs, _ := env.client.ListEvents(t.Context(), client.EventQuery{After: start, MachineID: r.ID, Types: []string{api.EventMachineResumed}}); len(evs) != 1 || evs[0].Details["from"] != m.ID {
		t.Fatalf("filtered resumed events of %s: %+v", r.ID, evs)
	}

	code, out, errOut := nullspace(t, "", "events", "--machine", r.ID, "--type", api.EventMachineResumed, "--after", strconv.FormatInt(start, 10))
	if code != 0 || !strings.Contains(out, api.EventMachineResumed) || !strings.Contains(out, "from="+m.ID) || strings.Count(out, "\n") != 1 {
		t.Fatalf("nullspace events: %d %q %q", code, out, errOut)
	}

	// Follow from the start, drop the stream after 3 events, resume.
	var seen []int64
	stop := errors.New("drop the stream")
	err = env.client.FollowEvents(t.Context(), client.EventQuery{After: start}, func(ev api.Event) error {
		seen = append(seen, ev.Seq)
		if len(seen) == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("follow: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	env.client.FollowEvents(ctx, client.EventQuery{After: seen[len(seen)-1]}, func(ev api.Event) error {
		seen = append(seen, ev.Seq)
		if len(seen) == len(all) {
			cancel()
		}
		return nil
	})
	if len(seen) != len(all) {
		t.Fatalf("followed %d events with a reconnect, listed %d", len(seen), len(all))
	}
	for k := range all {
		if seen[k] != all[k].Seq {
			t.Fatalf("followed seqs %v, listed %v", seen, all)
		}
	}
}
