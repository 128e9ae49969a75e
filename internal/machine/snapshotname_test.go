package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

func TestCheckSnapshotName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"web-1_b", true},
		{"0day", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"", false},
		{"Web", false},
		{"-web", false},
		{"_web", false},
		{"web.1", false},
		{"team/web", false},
		{"web:v1", false},
		{"snp_0123", false}, // an id's shape
		{"snp-0123", true},
	} {
		if err := checkSnapshotName(c.name); (err == nil) != c.ok || (err != nil && !errors.Is(err, errdefs.ErrInvalidArgument)) {
			t.Errorf("checkSnapshotName(%q) = %v, want ok %v", c.name, err, c.ok)
		}
	}
}

func codeOf(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// TestNamedSnapshot: a name is held from the checkpoint's start, refused
// to a second snapshot, freed by a failed checkpoint and by a delete, and
// names the snapshot wherever its id does (get, delete, create from it).
func TestNamedSnapshot(t *testing.T) {
	ctx := t.Context()
	m, d, _ := newHangManager(t, healthyAgent(t))
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)

	sn, err := m.CreateSnapshot(ctx, "team", "a", "web")
	if err != nil || sn.Name != "web" {
		t.Fatalf("create snapshot web: %+v %v", sn, err)
	}
	if got, err := m.GetSnapshot(ctx, "team", "web"); err != nil || got.ID != sn.ID {
		t.Fatalf("get by name: %+v %v, want %s", got, err, sn.ID)
	}
	if _, err := m.GetSnapshot(ctx, "other-team", "web"); codeOf(err) != errdefs.CodeSnapshotNotFound {
		t.Fatalf("another team gets it by name: %v, want snapshot_not_found", err)
	}
	if v := m.SnapshotView(ctx, sn); v.Name != "web" {
		t.Fatalf("view has name %q, want web", v.Name)
	}
	if _, err := m.CreateSnapshot(ctx, "team", "a", "web"); codeOf(err) != errdefs.CodeSnapshotNameExists {
		t.Fatalf("a second snapshot named web: %v, want snapshot_name_exists", err)
	}
	if _, err := m.CreateSnapshot(ctx, "team", "a", "Bad Name"); codeOf(err) != errdefs.CodeInvalidArgument {
		t.Fatalf("an invalid name: %v, want invalid_argument", err)
	}
	page, _, err := m.ListSnapshots(ctx, "team", SnapshotFilter{Name: "web"}, SnapshotPage{Limit: 10})
	if err != nil || len(page) != 1 || page[0].ID != sn.ID {
		t.Fatalf("list named web: %v %v", page, err)
	}

	// A checkpoint that fails frees the name it took.
	d.checkpoint = func(context.Context) error { return errors.New("runsc failed") }
	if _, err := m.CreateSnapshot(ctx, "team", "a", "db"); err == nil {
		t.Fatal("snapshot with a failing checkpoint succeeded")
	}
	d.checkpoint = nil
	if _, err := m.CreateSnapshot(ctx, "team", "a", "db"); err != nil {
		t.Fatalf("the name of a failed snapshot is still taken: %v", err)
	}

	// A machine is created from a snapshot by its name (a restore needs
	// the agent binary the snapshot ran).
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	child, err := m.Create(ctx, "team", api.CreateMachineRequest{SnapshotID: "web"})
	if err != nil || child.RestoredFrom != sn.ID {
		t.Fatalf("create from snapshot name web: %+v %v, want restored from %s", child, err, sn.ID)
	}
	if _, err := m.Kill(ctx, "team", child.ID); err != nil {
		t.Fatal(err)
	}

	// Deleting it by name frees the name.
	if err := m.DeleteSnapshot(ctx, "team", "web", false); err != nil {
		t.Fatalf("delete by name: %v", err)
	}
	if _, err := m.GetSnapshot(ctx, "team", sn.ID); codeOf(err) != errdefs.CodeSnapshotNotFound {
		t.Fatalf("deleted snapshot: %v, want snapshot_not_found", err)
	}
	if _, err := m.CreateSnapshot(ctx, "team", "a", "web"); err != nil {
		t.Fatalf("reuse the name of a deleted snapshot: %v", err)
	}
}
