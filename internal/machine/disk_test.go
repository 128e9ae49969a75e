package machine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// newDiskManager is a manager whose machines boot (a healthy fake agent)
// and restore (an installed agent binary), with disk limits of 1000 MiB by
// default and 4000 at most.
func newDiskManager(t *testing.T) (*Manager, *fakeDriver, *sqlstore.DB) {
	t.Helper()
	m, d, _, db := newManagerWith(t, func(cfg *Config, db *sqlstore.DB) {
		cfg.AgentPort = healthyAgent(t)
		cfg.Events = events.New(db, slog.New(slog.NewTextHandler(io.Discard, nil)))
		cfg.DefaultDiskMB, cfg.MaxDiskMB = 1000, 4000
	})
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	return m, d, db
}

// TestDiskMBValidation: disk_mb defaults to the server's default, may be
// up to its maximum, and anything else (0 or less, above the maximum, or
// beside snapshot_id) is invalid_argument naming the allowed range.
func TestDiskMBValidation(t *testing.T) {
	m, d, _ := newDiskManager(t)
	for _, tc := range []struct {
		name    string
		req     api.CreateMachineRequest
		want    int    // the machine's disk_mb when valid
		wantErr string // substring of the error's message; "" means valid
	}{
		{name: "default", req: api.CreateMachineRequest{}, want: 1000},
		{name: "the maximum", req: api.CreateMachineRequest{DiskMB: 4000}, want: 4000},
		{name: "small", req: api.CreateMachineRequest{DiskMB: 1}, want: 1},
		{name: "above the maximum", req: api.CreateMachineRequest{DiskMB: 4001}, wantErr: "disk_mb 4001 is out of range: this server allows 1 to 4000"},
		{name: "negative", req: api.CreateMachineRequest{DiskMB: -5}, wantErr: "disk_mb -5 is out of range"},
		{name: "with a snapshot", req: api.CreateMachineRequest{SnapshotID: "snp_x", DiskMB: 100}, wantErr: "snapshot_id cannot be combined with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := m.Create(t.Context(), "team", tc.req)
			if tc.wantErr != "" {
				pub := errdefs.Classify(err)
				if !errors.Is(err, errdefs.ErrInvalidArgument) || pub.Code != errdefs.CodeInvalidArgument || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v (code %s), want invalid_argument saying %q", err, pub.Code, tc.wantErr)
				}
				if !strings.Contains(tc.wantErr, "snapshot") && !strings.Contains(pub.SuggestedAction, "--disk-max-mb") {
					t.Errorf("suggested action %q, want it to say what to do (name --disk-max-mb)", pub.SuggestedAction)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := m.View(t.Context(), rec).DiskMB; got != tc.want {
				t.Errorf("view disk_mb %d, want %d", got, tc.want)
			}
			if got := d.spec(rec.ContainerID).DiskMB; got != tc.want {
				t.Errorf("container spec disk %d MiB, want %d", got, tc.want)
			}
		})
	}
}

// TestDiskMBKept: every container of a machine's lineage and of its
// children gets the machine's disk limit: after a pause and resume, a
// stop and start, and in a fork's children. A record written before
// machines had a limit (0) gets the server's default.
func TestDiskMBKept(t *testing.T) {
	ctx := t.Context()
	m, d, db := newDiskManager(t)
	rec, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", DiskMB: 300})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, rec *store.Machine, want int) {
		t.Helper()
		if got := d.spec(rec.ContainerID).DiskMB; got != want {
			t.Errorf("%s: container spec disk %d MiB, want %d", what, got, want)
		}
		if got := m.View(ctx, rec).DiskMB; got != want {
			t.Errorf("%s: view disk_mb %d, want %d", what, got, want)
		}
		if got := m.metricsDiskTotal(rec); got != uint64(want)<<20 {
			t.Errorf("%s: metrics disk_total %d, want %d", what, got, uint64(want)<<20)
		}
	}
	check("created", rec, 300)

	if _, err := m.Pause(ctx, "team", rec.ID); err != nil {
		t.Fatal(err)
	}
	resumed, err := m.Connect(ctx, "team", rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if resumed.ContainerID == rec.ContainerID {
		t.Fatal("resume reused the container")
	}
	check("resumed", resumed, 300)

	if _, err := m.Stop(ctx, "team", resumed.ID, 0); err != nil {
		t.Fatal(err)
	}
	started, err := m.Start(ctx, "team", resumed.ID)
	if err != nil {
		t.Fatal(err)
	}
	check("started", started, 300)

	_, children, err := m.Fork(ctx, "team", started.ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range children {
		check("fork child", c, 300)
	}

	// A record from before disk limits.
	old := &store.Machine{ID: "old", TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-old", AgentToken: "x", CreatedAt: time.Now()}
	if err := db.CreateMachine(ctx, old, 16); err != nil {
		t.Fatal(err)
	}
	if got := m.View(ctx, old).DiskMB; got != 1000 {
		t.Errorf("record without a limit: view disk_mb %d, want the default 1000", got)
	}
	spec, err := m.machineSpec(old, NetInfo{}, "/nonexistent", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if spec.DiskMB != 1000 {
		t.Errorf("record without a limit: spec disk %d MiB, want the default 1000", spec.DiskMB)
	}
}

// TestSparesKeepDiskLimit: a spare is made for one disk limit and serves
// only restores of that limit.
func TestSparesKeepDiskLimit(t *testing.T) {
	ctx := t.Context()
	m, d, _, _ := newSpareManager(t, 1)
	spec := specOf(m, "minimal")
	spec.DiskMB = 500
	m.spares.used("team", spec)
	m.spares.fill(ctx)
	idle := m.Spares()
	if len(idle) != 1 {
		t.Fatalf("spares after fill = %+v, want 1", idle)
	}
	if got := d.spec(idle[0].ContainerID).DiskMB; got != 500 {
		t.Fatalf("spare created with disk %d MiB, want 500", got)
	}
	other := spec
	other.DiskMB = 700
	if sp, ok := m.spares.take(ctx, shapeOf("team", other)); ok {
		t.Fatalf("a restore with a 700 MiB disk took spare %+v made for 500 MiB", sp)
	}
	if _, ok := m.spares.take(ctx, shapeOf("team", spec)); !ok {
		t.Fatal("a restore with the spare's disk limit got no spare")
	}
}
