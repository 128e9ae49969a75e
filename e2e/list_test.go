package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestListOneRowPerMachine: a machine paused and resumed several times is
// listed once (its latest execution, with its paused aliases counted),
// every alias is listed with include_aliases and still answers GET and
// connect, and pages of one machine each list every machine once.
func TestListOneRowPerMachine(t *testing.T) {
	owner := map[string]string{"list-test": t.Name()}
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", Metadata: owner})
	killLineage(t, m.ID)
	other := newMachine(t, api.CreateMachineRequest{Template: "minimal", Metadata: owner})
	ids := []string{m.ID}
	for range 4 {
		pause(t, ids[len(ids)-1])
		r, err := env.client.Connect(t.Context(), m.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	latest := ids[len(ids)-1]

	rows, err := env.client.ListMachines(t.Context(), client.ListOptions{Metadata: owner})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].ID != latest || rows[0].LineageID != m.ID || rows[0].LatestID != latest ||
		rows[0].PausedAliases != 4 || rows[1].ID != other.ID {
		t.Fatalf("one row per machine: got %+v", rows)
	}
	all, err := env.client.ListMachines(t.Context(), client.ListOptions{Metadata: owner, IncludeAliases: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range all {
		if r.LineageID == m.ID {
			got = append(got, r.ID)
			if r.LatestID != latest {
				t.Errorf("alias %s: latest_id %s, want %s", r.ID, r.LatestID, latest)
			}
		}
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("include_aliases: %v, want %v", got, ids)
	}
	// Pages of one: each machine once, in creation order.
	paged, err := env.client.ListMachines(t.Context(), client.ListOptions{Metadata: owner, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(paged) != 2 || paged[0].ID != latest || paged[1].ID != other.ID {
		t.Fatalf("pages of one: %+v", paged)
	}
	for _, id := range ids[:len(ids)-1] {
		if g := getMachine(t, id); g.State != api.StatePaused || g.LatestID != latest {
			t.Fatalf("alias %s: %s, latest %s", id, g.State, g.LatestID)
		}
	}
	if r, err := env.client.Connect(t.Context(), ids[1]); err != nil || r.ID != latest {
		t.Fatalf("connect to an old alias: %+v %v, want %s", r, err, latest)
	}
	// Page sizes out of range are refused.
	for _, limit := range []string{"0", "100000", "x"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+env.inst.Addr+"/v1/machines?limit="+limit, nil)
		req.Header.Set("Authorization", "Bearer "+env.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Code != "invalid_argument" {
			t.Fatalf("limit=%s: %d %+v, want 400 invalid_argument", limit, resp.StatusCode, e)
		}
	}
	// A token of other filters is refused.
	page, err := env.client.ListMachinesPage(t.Context(), client.ListOptions{Metadata: owner, Limit: 1}, "")
	if err != nil || page.NextToken == "" {
		t.Fatalf("first page: %+v %v", page, err)
	}
	_, err = env.client.ListMachinesPage(t.Context(), client.ListOptions{State: api.StateRunning, Limit: 1}, page.NextToken)
	wantCode(t, err, "invalid_argument")
}

// TestCheckpointPages: a lineage's history read a page of one at a time
// through the HTTP API is the whole history, by generation.
func TestCheckpointPages(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	killLineage(t, m.ID)
	for range 3 {
		if _, err := env.client.Checkpoint(t.Context(), m.ID); err != nil {
			t.Fatal(err)
		}
	}
	var gens []int
	token := ""
	for range 10 {
		var l api.SnapshotList
		u := "http://" + env.inst.Addr + "/v1/machines/" + m.ID + "/checkpoints?limit=1"
		if token != "" {
			u += "&next_token=" + token
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+env.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(l.Snapshots) != 1 {
			t.Fatalf("page: %d %+v %v", resp.StatusCode, l, err)
		}
		gens = append(gens, l.Snapshots[0].Generation)
		if token = l.NextToken; token == "" {
			break
		}
	}
	if !slices.Equal(gens, []int{1, 2, 3}) {
		t.Fatalf("generations over pages of one: %v, want 1 2 3", gens)
	}
	all, err := env.client.Checkpoints(t.Context(), m.ID)
	if err != nil || len(all) != 3 {
		t.Fatalf("client Checkpoints: %d, %v", len(all), err)
	}
}

// TestCheckpointRetention: 30 pause/resume cycles of a machine that keeps
// 3 checkpoints leave one list row, 3 states plus the pinned one on disk,
// every alias answering GET and connect, the pinned first state
// restorable, and a pruned one refused with a message that says so.
func TestCheckpointRetention(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CheckpointRetention: ptr(3), Metadata: map[string]string{"list-test": t.Name()}})
	killLineage(t, m.ID)
	if m.CheckpointRetention != 3 {
		t.Fatalf("checkpoint_retention %d, want 3", m.CheckpointRetention)
	}
	run(t, m.ID, "echo first > /root/state")
	first := pause(t, m.ID)
	if _, err := env.client.PinCheckpoint(t.Context(), m.ID, first.ID, true); err != nil {
		t.Fatal(err)
	}
	ids := []string{m.ID}
	var states []string
	for i := range 30 {
		r, err := env.client.Connect(t.Context(), m.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
		run(t, r.ID, fmt.Sprintf("echo %d > /root/state", i))
		states = append(states, pause(t, r.ID).ID)
	}
	head, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := env.client.ListMachines(t.Context(), client.ListOptions{Metadata: map[string]string{"list-test": t.Name()}})
	if err != nil || len(rows) != 1 || rows[0].ID != head.ID || rows[0].PausedAliases != 31 {
		t.Fatalf("list rows %+v (%v), want one row %s with 31 paused aliases", rows, err, head.ID)
	}
	hist, err := env.client.Checkpoints(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, sn := range hist {
		kept = append(kept, sn.ID)
	}
	want := append([]string{first.ID}, states[len(states)-3:]...)
	if !slices.Equal(kept, want) {
		t.Fatalf("history after 30 cycles: %v, want the pinned first state and the newest 3 %v", kept, want)
	}
	if pinned := hist[0]; !pinned.Pinned {
		t.Fatalf("first state %+v is not shown pinned", pinned)
	}
	var bytes int64
	for _, sn := range hist {
		bytes += sn.SizeBytes
	}
	if got := getMachine(t, head.ID).SnapshotBytes; got != bytes || bytes == 0 {
		t.Fatalf("machine info: snapshot_bytes %d, want the history's %d", got, bytes)
	}
	if s := snapshotDirsMatch(t); s != "" {
		t.Fatalf("snapshot store: %s", s)
	}
	for _, id := range ids {
		if g := getMachine(t, id); g.State != api.StatePaused || g.LatestID != head.ID {
			t.Fatalf("alias %s: %s, latest %s", id, g.State, g.LatestID)
		}
	}
	if r, err := env.client.Connect(t.Context(), ids[5]); err != nil || r.ID != head.ID {
		t.Fatalf("connect to an old alias: %+v %v", r, err)
	}
	_, err = env.client.RestoreCheckpoint(t.Context(), m.ID, states[0])
	wantCode(t, err, "snapshot_not_found")
	if !strings.Contains(err.Error(), "pruned") {
		t.Fatalf("restore of a pruned checkpoint: %v, want it to say it was pruned", err)
	}
	r, err := env.client.RestoreCheckpoint(t.Context(), m.ID, first.ID)
	if err != nil {
		t.Fatalf("restore the pinned first state: %v", err)
	}
	if got := run(t, r.ID, "cat /root/state"); got != "first\n" {
		t.Fatalf("restored state %q, want first", got)
	}
}

// TestPruneRaces: a checkpoint that prunes the oldest state races a
// restore of that state, a child made from it and a kill of the machine.
// Each ends cleanly (done, or refused with a stable code), no state is
// half there, and nothing is left once the machines are gone.
func TestPruneRaces(t *testing.T) {
	for round := range 3 {
		m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CheckpointRetention: ptr(1)})
		killLineage(t, m.ID)
		run(t, m.ID, "echo old > /root/state")
		old, err := env.client.Checkpoint(t.Context(), m.ID)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var child *api.Machine
		errs := make([]error, 4)
		ops := []func() error{
			func() error { _, err := env.client.Checkpoint(t.Context(), m.ID); return err },
			func() error { _, err := env.client.RestoreCheckpoint(t.Context(), m.ID, old.ID); return err },
			func() error {
				var err error
				child, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{SnapshotID: old.ID})
				return err
			},
			func() error {
				if round != 2 {
					return nil
				}
				time.Sleep(20 * time.Millisecond)
				_, err := env.client.KillMachine(t.Context(), m.ID)
				return err
			},
		}
		for i, op := range ops {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = op() }()
		}
		wg.Wait()
		t.Logf("round %d: checkpoint %v; restore %v; child %v; kill %v", round, errs[0], errs[1], errs[2], errs[3])
		for i, err := range errs {
			var ae *client.APIError
			if err != nil && (!errors.As(err, &ae) || !slices.Contains([]string{"snapshot_not_found", "conflict", "machine_not_running",
				"machine_not_found", "invalid_transition"}, ae.Code)) {
				t.Errorf("round %d, op %d: %v, want success or a stable refusal", round, i, err)
			}
		}
		if child != nil {
			t.Cleanup(func() { env.client.KillMachine(context.Background(), child.ID) })
			if got := run(t, child.ID, "cat /root/state"); got != "old\n" {
				t.Errorf("round %d: child of the old state has %q", round, got)
			}
		}
		if s := snapshotDirsMatch(t); s != "" {
			t.Fatalf("round %d: snapshot store: %s", round, s)
		}
		if round != 2 {
			if info := getMachine(t, m.ID); info.State != api.StateRunning {
				t.Fatalf("round %d: machine is %s after the races", round, info.State)
			}
		}
	}
	assertNoLeftovers(t)
}
