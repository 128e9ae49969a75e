package machine

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/template"
)

// TemplateUse is what keeps a template from being deleted.
type TemplateUse struct {
	// Machines made from the template that are not killed or failed:
	// running, paused or stopped ones need its root filesystem to run again.
	Machines []*store.Machine
	// Snapshots of machines made from it that can still be restored: a
	// snapshot's overlay lies on top of its template's root filesystem.
	Snapshots []*store.Snapshot
}

// InUse reports whether anything uses the template.
func (u TemplateUse) InUse() bool { return len(u.Machines)+len(u.Snapshots) > 0 }

// TemplateUse returns the machines and snapshots, of every team, that use
// the template name.
// Template returns the template called name if the team may use it (its
// own, or a built-in one), and template_not_found otherwise.
func (m *Manager) Template(ctx context.Context, teamID, name string) (api.Template, error) {
	t, err := m.templates.Get(ctx, name)
	if err != nil {
		return api.Template{}, err
	}
	if !template.Visible(t, teamID) {
		return api.Template{}, errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound, fmt.Sprintf("template %s not found", name),
			"list templates with GET /v1/templates")
	}
	return t, nil
}

func (m *Manager) TemplateUse(ctx context.Context, name string) (TemplateUse, error) {
	var u TemplateUse
	var err error
	u.Machines, err = m.store.ListMachines(ctx, store.MachineFilter{States: slices.Concat(heldStates, liveStates), Template: name})
	if err != nil {
		return u, fmt.Errorf("template %s use: %w", name, err)
	}
	// A pruned snapshot's files are gone: it needs no template.
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotWriting, store.SnapshotReady}})
	if err != nil {
		return u, fmt.Errorf("template %s use: %w", name, err)
	}
	for _, sn := range snaps {
		if sn.Template == name {
			u.Snapshots = append(u.Snapshots, sn)
		}
	}
	return u, nil
}

// DeleteTemplate deletes the template name with del unless a machine or a
// snapshot uses it: then it answers template_in_use (409), naming what of
// teamID's uses it and counting what of other teams does. Creates from the
// template wait while it runs, so none starts on a template being deleted.
func (m *Manager) DeleteTemplate(ctx context.Context, teamID, name string, del func(context.Context, string) error) error {
	m.templateMu.Lock()
	defer m.templateMu.Unlock()
	u, err := m.TemplateUse(ctx, name)
	if err != nil {
		return fmt.Errorf("delete template %s: %w", name, err)
	}
	if u.InUse() {
		return fmt.Errorf("delete template %s: %w", name, errTemplateInUse(teamID, name, u))
	}
	return del(ctx, name)
}

func errTemplateInUse(teamID, name string, u TemplateUse) error {
	var own []string
	others := 0
	for _, rec := range u.Machines {
		if rec.TeamID == teamID {
			own = append(own, fmt.Sprintf("machine %s (%s)", rec.ID, rec.State))
		} else {
			others++
		}
	}
	for _, sn := range u.Snapshots {
		if sn.TeamID == teamID {
			own = append(own, fmt.Sprintf("%s snapshot %s of machine %s", sn.Kind, sn.ID, sn.MachineID))
		} else {
			others++
		}
	}
	const shown = 10
	users := own
	if len(own) > shown {
		users = append(slices.Clip(own[:shown]), fmt.Sprintf("%d more", len(own)-shown))
	}
	if others > 0 {
		users = append(users, fmt.Sprintf("%d machines or snapshots of other teams", others))
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeTemplateInUse,
		fmt.Sprintf("template %s is in use by %s", name, strings.Join(users, ", ")),
		"kill the machines made from it (paused and stopped ones too) and delete their snapshots, then delete it again")
}
