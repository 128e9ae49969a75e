package machine

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

var volumeNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// maxVolumes bounds the volumes of one machine.
const maxVolumes = 16

// reservedPaths cannot be volume mount points: the machine's own plumbing.
var reservedPaths = []string{"/proc", "/sys", "/dev", "/.nullspace", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}

func (m *Manager) volumeDir(teamID, name string) string {
	return filepath.Join(m.cfg.VolumesDir, teamID, name)
}

func volumeNotFound(name string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeVolumeNotFound, fmt.Sprintf("volume %s not found", name),
		"create it first with POST /v1/volumes or `nullspace volume create`")
}

// CreateVolume makes a named volume: a directory on the server that
// machines mount, outside every snapshot.
func (m *Manager) CreateVolume(ctx context.Context, teamID, name string) (api.Volume, error) {
	if !volumeNameRe.MatchString(name) {
		return api.Volume{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("volume name %q is invalid", name), "use 1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	v := store.Volume{TeamID: teamID, Name: name, CreatedAt: time.Now().UTC()}
	if err := m.store.CreateVolume(ctx, v); err != nil {
		return api.Volume{}, err
	}
	if err := os.MkdirAll(m.volumeDir(teamID, name), 0o755); err != nil {
		m.store.DeleteVolume(context.WithoutCancel(ctx), teamID, name)
		return api.Volume{}, fmt.Errorf("create volume %s: %w", name, err)
	}
	return api.Volume{Name: name, CreatedAt: v.CreatedAt}, nil
}

// ListVolumes returns a page of a team's volumes by name, after the name
// after, with their size and how many machines mount them, and whether
// more follow.
func (m *Manager) ListVolumes(ctx context.Context, teamID, after string, limit int) ([]api.Volume, bool, error) {
	vols, more, err := m.store.ListVolumesPage(ctx, teamID, after, limit)
	if err != nil {
		return nil, false, err
	}
	names := make([]string, len(vols))
	for i, v := range vols {
		names[i] = v.Name
	}
	users, err := m.store.VolumeMachines(ctx, teamID, names)
	if err != nil {
		return nil, false, err
	}
	out := make([]api.Volume, 0, len(vols))
	for _, v := range vols {
		out = append(out, api.Volume{Name: v.Name, CreatedAt: v.CreatedAt, SizeBytes: dirSize(m.volumeDir(teamID, v.Name)),
			Machines: users[v.Name]})
	}
	return out, more, nil
}

// DeleteVolume removes a volume and its files. A volume mounted by a live
// or paused machine, or recorded in a snapshot, is refused with
// volume_in_use: a restore must find it.
func (m *Manager) DeleteVolume(ctx context.Context, teamID, name string) error {
	users, snaps, err := m.volumeUsers(ctx, teamID)
	if err != nil {
		return err
	}
	if len(users[name]) > 0 || len(snaps[name]) > 0 {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeVolumeInUse,
			fmt.Sprintf("volume %s is in use by machines [%s] and snapshots [%s]", name, strings.Join(users[name], ", "), strings.Join(snaps[name], ", ")),
			"kill those machines and delete those snapshots first")
	}
	ok, err := m.store.DeleteVolume(ctx, teamID, name)
	if err != nil {
		return err
	}
	if !ok {
		return volumeNotFound(name)
	}
	return os.RemoveAll(m.volumeDir(teamID, name))
}

// volumeUsers maps volume names to the machines (not killed) and snapshots
// that use them.
func (m *Manager) volumeUsers(ctx context.Context, teamID string) (machines, snaps map[string][]string, err error) {
	machines, snaps = map[string][]string{}, map[string][]string{}
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{TeamID: teamID, States: visibleStates})
	if err != nil {
		return nil, nil, err
	}
	for _, r := range recs {
		for _, v := range r.Volumes {
			machines[v.Name] = append(machines[v.Name], r.ID)
		}
	}
	all, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{TeamID: teamID})
	if err != nil {
		return nil, nil, err
	}
	for _, sn := range all {
		var spec savedSpec
		if json.Unmarshal(sn.Spec, &spec) == nil {
			for _, v := range spec.Volumes {
				snaps[v.Name] = append(snaps[v.Name], sn.ID)
			}
		}
	}
	return machines, snaps, nil
}

// validateVolumes checks a create request's volume mounts.
func (m *Manager) validateVolumes(ctx context.Context, teamID string, mounts []api.VolumeMount) error {
	if len(mounts) == 0 {
		return nil
	}
	bad := func(format string, args ...any) error {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, fmt.Sprintf(format, args...),
			"fix the volumes and create the machine again")
	}
	if len(mounts) > maxVolumes {
		return bad("%d volumes: at most %d are allowed", len(mounts), maxVolumes)
	}
	vols, err := m.store.ListVolumes(ctx, teamID)
	if err != nil {
		return err
	}
	exists := map[string]bool{}
	for _, v := range vols {
		exists[v.Name] = true
	}
	seen := map[string]bool{}
	for _, v := range mounts {
		if !exists[v.Name] {
			return volumeNotFound(v.Name)
		}
		if !path.IsAbs(v.Path) || path.Clean(v.Path) != v.Path || v.Path == "/" {
			return bad("volume %s: path %q must be an absolute, clean path other than /", v.Name, v.Path)
		}
		for _, r := range reservedPaths {
			if v.Path == r || strings.HasPrefix(v.Path, r+"/") {
				return bad("volume %s: path %s is reserved for the machine itself", v.Name, v.Path)
			}
		}
		if seen[v.Path] {
			return bad("two volumes are mounted at %s", v.Path)
		}
		seen[v.Path] = true
	}
	return nil
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func hostOf(sn *store.Snapshot) (snapshot.Host, error) {
	var h snapshot.Host
	err := json.Unmarshal(sn.Host, &h)
	return h, err
}
