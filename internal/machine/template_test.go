package machine

import (
	"context"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// TestDeleteTemplate: a template that a machine (running, paused, stopped)
// or a restorable snapshot uses is template_in_use, saying what uses it;
// killed machines and pruned snapshots do not count.
func TestDeleteTemplate(t *testing.T) {
	ctx := t.Context()
	m, _, _, db := newTestManager(t)
	mk := func(id, team, state, tmpl string) {
		rec := &store.Machine{ID: id, TeamID: team, State: state, Template: tmpl, CPUCount: 1, MemoryMB: 64,
			ContainerID: "c-" + id, AgentToken: "x"}
		if err := db.CreateMachine(ctx, rec, 16); err != nil {
			t.Fatal(err)
		}
	}
	snap := func(id, team, state, tmpl string) {
		sn := &store.Snapshot{ID: id, TeamID: team, Kind: api.SnapshotReusable, State: state, MachineID: "gone",
			LineageID: "gone", Template: tmpl}
		if err := db.CreateSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	mk("mch_run", "team", api.StateRunning, "running")
	mk("mch_paused", "team", api.StatePaused, "paused")
	mk("mch_stopped", "team", api.StateStopped, "stopped")
	snap("snap_ready", "team", store.SnapshotReady, "snapshotted")
	mk("mch_other", "other", api.StatePaused, "other")
	mk("mch_killed", "team", api.StateKilled, "free")
	mk("mch_failed", "team", api.StateFailed, "free")
	snap("snap_pruned", "team", store.SnapshotPruned, "free")

	for _, tc := range []struct {
		tmpl, want string
	}{
		{"running", "machine mch_run (running)"},
		{"paused", "machine mch_paused (paused)"},
		{"stopped", "machine mch_stopped (stopped)"},
		{"snapshotted", "snapshot snap_ready"},
		{"other", "1 machines or snapshots of other teams"},
	} {
		deleted := false
		err := m.DeleteTemplate(ctx, "team", tc.tmpl, func(context.Context, string) error { deleted = true; return nil })
		p := errdefs.Classify(err)
		if p.Status != 409 || p.Code != errdefs.CodeTemplateInUse || !strings.Contains(p.Message, tc.want) || deleted {
			t.Errorf("DeleteTemplate(%s) = %+v, deleted %v; want 409 template_in_use naming %q", tc.tmpl, p, deleted, tc.want)
		}
		if strings.Contains(p.Message, "mch_other") {
			t.Errorf("DeleteTemplate(%s) names another team's machine: %q", tc.tmpl, p.Message)
		}
	}
	deleted := ""
	if err := m.DeleteTemplate(ctx, "team", "free", func(_ context.Context, name string) error { deleted = name; return nil }); err != nil || deleted != "free" {
		t.Errorf("DeleteTemplate(free) = %v, deleted %q; want it deleted", err, deleted)
	}
}

// TestCreateWaitsForTemplateDelete: a create from a template being deleted
// waits for the deletion and then finds no template, instead of starting a
// machine on a root filesystem that is going away.
func TestCreateWaitsForTemplateDelete(t *testing.T) {
	ctx := t.Context()
	m, _, _, db := newTestManager(t)
	gone := map[string]bool{}
	m.templates = fakeTemplates{gone: gone}
	inDelete, release := make(chan struct{}), make(chan struct{})
	deleted := make(chan error, 1)
	go func() {
		deleted <- m.DeleteTemplate(ctx, "team", "tpl", func(context.Context, string) error {
			close(inDelete)
			<-release
			gone["tpl"] = true
			return nil
		})
	}()
	<-inDelete
	created := make(chan error, 1)
	go func() {
		_, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "tpl"})
		created <- err
	}()
	select {
	case err := <-created:
		t.Fatalf("create returned during the delete: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	if err := <-created; err == nil || !strings.Contains(err.Error(), "no such template") {
		t.Errorf("create after the delete = %v, want the template missing", err)
	}
	if rows, _ := db.ListMachines(ctx, store.MachineFilter{}); len(rows) != 0 {
		t.Errorf("%d machines made from a deleted template", len(rows))
	}
}
