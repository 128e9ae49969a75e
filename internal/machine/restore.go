package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/faults"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

// MaxFork bounds the children of one fork call.
const MaxFork = 16

// readySnapshot returns a team's committed snapshot, by id or name.
func (m *Manager) readySnapshot(ctx context.Context, teamID, id string) (*store.Snapshot, error) {
	sn, err := m.snapshotByIDOrName(ctx, teamID, id)
	if err == nil && sn.TeamID == teamID && (sn.State == store.SnapshotPruned || sn.State == store.SnapshotPruning) {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeSnapshotNotFound,
			fmt.Sprintf("snapshot %s was pruned by the checkpoint retention of machine %s (it keeps its newest checkpoints)", id, sn.MachineID),
			"restore a newer checkpoint (GET /v1/machines/{id}/checkpoints); pin checkpoints to keep them, or create machines with a larger checkpoint_retention")
	}
	if err != nil || sn.TeamID != teamID || sn.State != store.SnapshotReady {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeSnapshotNotFound, fmt.Sprintf("snapshot %s not found", id),
			"list your snapshots with GET /v1/snapshots or `nullspace snapshot ls`")
	}
	return sn, nil
}

// Resume restores a paused machine's hibernate snapshot into a new running
// machine id. The paused id stays as an alias of the lineage. Only the
// lineage's latest state can be resumed: an older snapshot is refused with
// snapshot_superseded (restore it explicitly as a checkpoint instead).
func (m *Manager) Resume(ctx context.Context, teamID, snapshotID string) (_ *store.Machine, err error) {
	sn, err := m.readySnapshot(ctx, teamID, snapshotID)
	if err != nil {
		return nil, err
	}
	if sn.Kind != api.SnapshotHibernate {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSnapshotKind,
			fmt.Sprintf("snapshot %s is a %s, not the state of a paused machine", sn.ID, sn.Kind),
			"create a machine from it with POST /v1/machines {\"snapshot_id\": ...}, or restore it in place with POST /v1/machines/{id}/checkpoints/{snapshot_id}/restore")
	}
	ctx, unlock, err := m.tryLockOp(ctx, lineageKey(sn.LineageID), sn.MachineID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer wrapInterrupted(ctx, sn.MachineID, "resume", &err)
	src, err := m.store.GetMachine(ctx, sn.MachineID)
	if err != nil {
		return nil, err
	}
	head, err := m.lineageHead(ctx, sn.LineageID)
	if err != nil {
		return nil, err
	}
	if head.ID != src.ID || src.State != api.StatePaused || src.SnapshotID != sn.ID {
		return nil, superseded(sn, head)
	}
	return m.resumeLocked(ctx, src, sn)
}

func superseded(sn *store.Snapshot, head *store.Machine) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotSuperseded,
		fmt.Sprintf("snapshot %s is not the latest state of machine %s: its latest execution is %s (%s)", sn.ID, sn.MachineID, head.ID, head.State),
		"use POST /v1/machines/{id}/connect to reach the latest execution, or restore this snapshot explicitly with POST /v1/machines/{id}/checkpoints/{snapshot_id}/restore")
}

// Connect returns the running latest execution of id's lineage, resuming it
// first if it is paused. Unlike Pause and Resume it waits for an operation
// in progress instead of failing: many clients may connect at once.
func (m *Manager) Connect(ctx context.Context, teamID, id string) (_ *store.Machine, err error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	if rec.State == api.StateKilled || rec.State == api.StateFailed {
		return nil, notRunning(rec) // a deleted alias leads nowhere
	}
	ctx, unlock, err := m.lockOp(ctx, lineageKey(rec.LineageID))
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer wrapInterrupted(ctx, id, "connect", &err)
	head, err := m.wakeLocked(ctx, rec.LineageID)
	if err != nil {
		return nil, err
	}
	if head.State == api.StateRunning || head.State == api.StateSnapshotting {
		return head, nil
	}
	if head.ID != rec.ID {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeMachineNotRunning,
			fmt.Sprintf("machine %s was resumed as %s, which is %s", rec.ID, head.ID, head.State),
			"create a new machine; the latest state of this one is gone")
	}
	return nil, notRunning(head)
}

// wakeLocked brings the latest execution of a lineage to running: a paused
// one is resumed, a stopped one started, a running one returned as it is.
// Any other state is returned as it is, without an error. The caller holds
// the lineage lock.
func (m *Manager) wakeLocked(ctx context.Context, lineageID string) (*store.Machine, error) {
	head, err := m.lineageHead(ctx, lineageID)
	if err != nil {
		return nil, err
	}
	switch head.State {
	case api.StateStopped:
		return m.startLocked(ctx, head.ID)
	case api.StatePaused:
		sn, err := m.store.GetSnapshot(ctx, head.SnapshotID)
		if err != nil {
			return nil, fmt.Errorf("paused machine %s: %w", head.ID, err)
		}
		return m.resumeLocked(ctx, head, sn)
	}
	return head, nil
}

// resumeLocked restores sn, the state of the paused machine src, into a new
// machine of src's lineage. The caller holds the lineage lock.
func (m *Manager) resumeLocked(ctx context.Context, src *store.Machine, sn *store.Snapshot) (*store.Machine, error) {
	start := time.Now()
	rec := &store.Machine{
		ID: newMachineID(), TeamID: src.TeamID, State: api.StateResuming, Template: src.Template,
		CPUCount: src.CPUCount, MemoryMB: src.MemoryMB, DiskMB: src.DiskMB, Env: src.Env, Metadata: src.Metadata,
		AllowInternet: src.AllowInternet, ContainerID: newContainerID(), AgentToken: randomHex(32),
		CreatedAt: time.Now().UTC(), LineageID: src.LineageID, RestoredFrom: sn.ID,
		Volumes: src.Volumes, Hooks: src.Hooks, AgentDir: src.AgentDir,
		TimeoutMS: src.TimeoutMS, OnTimeout: src.OnTimeout, AutoResume: src.AutoResume, IdleTimeoutMS: src.IdleTimeoutMS,
		Persistence: src.Persistence, Command: src.Command, MainPID: src.MainPID, MainExit: src.MainExit,
		PublicPorts: src.PublicPorts, CheckpointRetention: src.CheckpointRetention, Origin: src.Origin,
	}
	spec, err := decodeSpec(sn)
	if err != nil {
		return nil, err
	}
	if err := m.restoreNew(ctx, rec, sn, spec); err != nil {
		m.emit(ctx, api.EventMachineResumeFailed, src, map[string]any{"snapshot_id": sn.ID, "error": err.Error()})
		return nil, fmt.Errorf("resume machine %s: %w", src.ID, err)
	}
	m.logger.InfoContext(ctx, "machine resumed", "machine_id", rec.ID, "from", src.ID, "snapshot_id", sn.ID)
	m.emit(ctx, api.EventMachineResumed, rec, map[string]any{"from": src.ID, "snapshot_id": sn.ID})
	m.observe("resume", start)
	return rec, nil
}

// createFromSnapshot makes an independent machine (a new lineage) from any
// committed snapshot.
func (m *Manager) createFromSnapshot(ctx context.Context, teamID string, req api.CreateMachineRequest) (_ *store.Machine, err error) {
	start := time.Now()
	sn, err := m.readySnapshot(ctx, teamID, req.SnapshotID)
	if err != nil {
		return nil, err
	}
	if sn.Kind == api.SnapshotDisk {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSnapshotKind,
			fmt.Sprintf("snapshot %s is the disk of stopped machine %s, not a state to create machines from", sn.ID, sn.MachineID),
			"start that machine with POST /v1/machines/{id}/start, then take a reusable snapshot of it")
	}
	if slices.Contains(historyKinds, sn.Kind) {
		// A state of a history may be pruned by its lineage's next
		// checkpoint: hold the lineage until the child counts as one of
		// its dependents.
		// A kill of that lineage cancels the child's restore (lockOp).
		var unlock func()
		ctx, unlock, err = m.lockOp(ctx, lineageKey(sn.LineageID))
		if err != nil {
			return nil, err
		}
		defer unlock()
		defer wrapInterrupted(ctx, sn.MachineID, "child", &err)
		if sn, err = m.readySnapshot(ctx, teamID, req.SnapshotID); err != nil {
			return nil, err
		}
	}
	spec, err := decodeSpec(sn)
	if err != nil {
		return nil, err
	}
	rec := &store.Machine{
		ID: newMachineID(), TeamID: teamID, State: api.StateResuming, Template: spec.Template,
		CPUCount: spec.CPUCount, MemoryMB: spec.MemoryMB, DiskMB: spec.DiskMB, Env: spec.Env, Metadata: req.Metadata,
		AllowInternet: req.AllowInternet || (spec.AllowInternet && m.cfg.AllowInternet),
		ContainerID:   newContainerID(), AgentToken: randomHex(32), CreatedAt: time.Now().UTC(),
		RestoredFrom: sn.ID, Volumes: spec.Volumes, Hooks: spec.Hooks, AgentDir: spec.AgentDir,
		TimeoutMS: *req.TimeoutMS, OnTimeout: req.OnTimeout, AutoResume: req.AutoResume, IdleTimeoutMS: req.IdleTimeoutMS,
		Persistence: req.Persistence, Command: spec.Command, MainPID: spec.MainPID, PublicPorts: req.PublicPorts,
		CheckpointRetention: retentionOr(req.CheckpointRetention), Origin: req.Origin,
	}
	if err := m.restoreNew(ctx, rec, sn, spec); err != nil {
		return nil, fmt.Errorf("create machine from snapshot %s: %w", sn.ID, err)
	}
	m.logger.InfoContext(ctx, "machine created from snapshot", "machine_id", rec.ID, "snapshot_id", sn.ID)
	m.emit(ctx, api.EventMachineCreated, rec, map[string]any{"template": rec.Template, "snapshot_id": sn.ID})
	m.observe("child", start)
	return rec, nil
}

// restoreNew stores rec (state resuming), restores sn into it and marks it
// running. It restores into a spare of the snapshot's shape when there is
// one (rec then takes the spare's id, container and slot), and into a new
// container when there is none or the spare failed (its sandbox may have
// died just now). On error nothing of rec is left.
func (m *Manager) restoreNew(ctx context.Context, rec *store.Machine, sn *store.Snapshot, spec savedSpec) error {
	release, err := m.prepareRestore(ctx, sn, spec)
	if err != nil {
		return err
	}
	defer release()
	if sp, ok := m.spares.take(ctx, shapeOf(rec.TeamID, spec)); ok {
		// A spare's memory is committed already: it becomes the machine's.
		warm := *rec
		err := m.restoreAs(ctx, &warm, sn, spec, sp)
		if err == nil {
			*rec = warm
			return nil
		}
		m.spares.poke() // the spare is gone
		if errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Classify(err).Code == errdefs.CodeQuotaExceeded || ctx.Err() != nil {
			return err // the snapshot itself is refused, or the operation was cancelled: a new container would not help
		}
		m.logger.WarnContext(ctx, "restore into a spare failed; restoring into a new container", "snapshot_id", sn.ID, "err", err)
	}
	return m.restoreAs(ctx, rec, sn, spec, nil)
}

// restoreAs is one attempt of restoreNew, into sp if it is not nil.
func (m *Manager) restoreAs(ctx context.Context, rec *store.Machine, sn *store.Snapshot, spec savedSpec, sp *spare) error {
	opts := restoreOpts{}
	if sp != nil {
		rec.ID = sp.MachineID
		opts.net = &sp.net
	}
	unlock, err := m.lock(ctx, rec.ID)
	if err != nil {
		if sp != nil {
			m.spares.destroy(ctx, sp)
		}
		return err
	}
	defer unlock()
	// A machine without a lineage yet begins one (a child, a fork); with
	// one, it is the next execution of a paused lineage (a resume).
	create := rec.LineageID == ""
	if sp != nil {
		if err := m.admitQuota(ctx, rec, create, func() error { return m.store.CreateMachineFromSpare(ctx, rec, sp.Spare) }); err != nil {
			m.spares.destroy(ctx, sp)
			return err
		}
	} else if err := m.admit(ctx, rec, create, func() error { return m.store.CreateMachine(ctx, rec, m.net.Slots()) }); err != nil {
		return err
	}
	if err := m.restoreInto(ctx, rec, sn, spec, opts); err != nil {
		if uerr := m.undoCreate(ctx, rec); uerr != nil {
			m.logger.ErrorContext(ctx, "clean up failed restore", "machine_id", rec.ID, "err", uerr)
		}
		return interrupted(ctx, rec.ID, "restore", err)
	}
	m.spares.used(rec.TeamID, spec)
	// Restored: it is recorded running whatever happened to ctx meanwhile
	// (a kill that came now kills a running machine).
	return m.setState(context.WithoutCancel(ctx), rec, api.StateRunning)
}

// Fork snapshots a running machine and creates count children from the
// snapshot, concurrently. Either all children are made or none is (the
// snapshot stays, and is in the error message).
func (m *Manager) Fork(ctx context.Context, teamID, id string, count int) (*store.Snapshot, []*store.Machine, error) {
	if count < 1 || count > MaxFork {
		return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("count %d is out of range: fork makes 1 to %d children per call", count, MaxFork), "fix count")
	}
	src, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, nil, err
	}
	sn, err := m.CreateSnapshot(ctx, teamID, id, "")
	if err != nil {
		return nil, nil, err
	}
	children := make([]*store.Machine, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Children come through the parent's front door.
			children[i], errs[i] = m.Create(ctx, teamID, api.CreateMachineRequest{SnapshotID: sn.ID, Origin: src.Origin})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, c := range children {
			if c != nil {
				if _, kerr := m.Kill(ctx, teamID, c.ID); kerr != nil {
					m.logger.ErrorContext(ctx, "kill child of failed fork", "machine_id", c.ID, "err", kerr)
				}
			}
		}
		return sn, nil, fmt.Errorf("fork machine %s (snapshot %s was kept): %w", id, sn.ID, err)
	}
	return sn, children, nil
}

// RestoreCheckpoint replaces the state of a machine's latest execution with
// one of its lineage's checkpoints, keeping that execution's id. Newer
// checkpoints stay in the history. The snapshot is checked (host, template,
// files) before the current state is dropped; id may be any alias of the
// lineage, and the machine returned is the execution restored.
func (m *Manager) RestoreCheckpoint(ctx context.Context, teamID, id, snapshotID string) (_ *store.Machine, err error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	sn, err := m.readySnapshot(ctx, teamID, snapshotID)
	if err != nil {
		return nil, err
	}
	if sn.Kind == api.SnapshotDisk {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSnapshotKind,
			fmt.Sprintf("snapshot %s is a stopped machine's disk, not a checkpoint", sn.ID), "start the machine with POST /v1/machines/{id}/start")
	}
	if sn.LineageID != rec.LineageID {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSnapshotKind,
			fmt.Sprintf("snapshot %s is not in the history of machine %s", sn.ID, rec.ID),
			"list the machine's checkpoints with GET /v1/machines/{id}/checkpoints; to start from another machine's snapshot, create a machine from it")
	}
	ctx, unlockLineage, err := m.tryLockOp(ctx, lineageKey(rec.LineageID), id)
	if err != nil {
		return nil, err
	}
	defer unlockLineage()
	defer wrapInterrupted(ctx, id, "restore", &err)
	head, unlock, err := m.headLocked(ctx, rec.LineageID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if head.State == api.StateStopped {
		return nil, notRunning(head) // its disk would be lost; start it first
	}
	spec, err := decodeSpec(sn)
	if err != nil {
		return nil, err
	}
	release, err := m.prepareRestore(ctx, sn, spec)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := m.snaps.Verify(ctx, sn.ID, snapshotFiles(sn)); err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	wasPaused := head.State == api.StatePaused
	prevSnapshot := head.SnapshotID
	if wasPaused {
		if err := m.admit(ctx, head, false, func() error { return m.store.AssignSlot(ctx, head, m.net.Slots()) }); err != nil {
			return nil, err
		}
	}
	head.SnapshotID = sn.ID // where Reconcile leaves it if the server stops now
	if err := m.setState(ctx, head, api.StateRestoring); err != nil {
		return nil, err
	}
	// Drop the current sandbox and network; the restore makes both anew.
	if err := m.release(ctx, head); err != nil {
		return nil, m.restoreFailed(ctx, head, wasPaused, prevSnapshot, err)
	}
	head.ContainerID = newContainerID()
	// The restored machine answers on the same address: connections kept
	// alive to the old sandbox must not be reused.
	agentclient.SharedHTTPClient().CloseIdleConnections()
	if err := m.store.UpdateMachine(ctx, head); err != nil {
		return nil, m.restoreFailed(ctx, head, wasPaused, prevSnapshot, err)
	}
	if err := m.restoreInto(ctx, head, sn, spec, restoreOpts{verified: true}); err != nil {
		return nil, m.restoreFailed(ctx, head, wasPaused, prevSnapshot, err)
	}
	head.RestoredFrom = sn.ID
	head.SnapshotID = ""
	if err := m.setState(ctx, head, api.StateRunning); err != nil {
		return nil, err
	}
	m.logger.InfoContext(ctx, "checkpoint restored in place", "machine_id", head.ID, "snapshot_id", sn.ID)
	m.emit(ctx, api.EventMachineRestored, head, map[string]any{"snapshot_id": sn.ID})
	return head, nil
}

// restoreFailed settles a machine whose in-place restore failed: a paused
// machine stays paused on its previous state; a running one has lost its
// sandbox and is failed.
func (m *Manager) restoreFailed(ctx context.Context, rec *store.Machine, wasPaused bool, prevSnapshot string, cause error) error {
	if rerr := m.release(ctx, rec); rerr != nil {
		cause = errors.Join(cause, rerr)
	}
	rec.Slot = -1
	if wasPaused {
		rec.SnapshotID = prevSnapshot
		if err := m.setState(ctx, rec, api.StatePaused); err != nil {
			return errors.Join(cause, err)
		}
		return cause
	}
	rec.Error = "restoring a checkpoint failed: " + cause.Error()
	if err := m.setState(ctx, rec, api.StateFailed); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

func decodeSpec(sn *store.Snapshot) (savedSpec, error) {
	var spec savedSpec
	if err := json.Unmarshal(sn.Spec, &spec); err != nil {
		return spec, snapshot.Corrupt(sn.ID, "its recorded spec cannot be read", err)
	}
	return spec, nil
}

func snapshotFiles(sn *store.Snapshot) []snapshot.File {
	var files []snapshot.File
	json.Unmarshal(sn.Files, &files)
	return files
}

// prepareRestore checks that sn is restorable here (checkRestorable),
// keeps its local files from the cache's eviction until release, and
// fetches them from the object store if this server does not have them.
func (m *Manager) prepareRestore(ctx context.Context, sn *store.Snapshot, spec savedSpec) (release func(), err error) {
	if err := m.checkRestorable(ctx, sn, spec); err != nil {
		return nil, err
	}
	release = m.snaps.Hold(sn.ID)
	if err := m.fetchSnapshot(ctx, sn); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// checkRestorable refuses, with snapshot_incompatible, a snapshot this host
// cannot restore exactly: another runsc, platform or CPU, a template that
// was rebuilt or removed, a missing agent binary or volume.
func (m *Manager) checkRestorable(ctx context.Context, sn *store.Snapshot, spec savedSpec) error {
	var host snapshot.Host
	if err := json.Unmarshal(sn.Host, &host); err != nil {
		return snapshot.Corrupt(sn.ID, "its recorded host cannot be read", err)
	}
	if err := snapshot.CheckHost(sn.ID, host, m.cfg.Host); err != nil {
		return err
	}
	return m.checkSpec(ctx, sn.ID, sn.TeamID, spec)
}

// specRootfs returns the root filesystem a snapshot was taken on: by its
// digest (fetched from the object store if this server lacks it), or, for
// a snapshot taken before digests, the template of its name if it was not
// rebuilt since.
func (m *Manager) specRootfs(ctx context.Context, snapshotID string, spec savedSpec) (string, error) {
	if spec.TemplateDigest != "" {
		dir, err := m.templates.RootfsByDigest(ctx, spec.Template, spec.TemplateDigest)
		if err != nil {
			return "", fmt.Errorf("snapshot %s: %w", snapshotID, err)
		}
		return dir, nil
	}
	tmpl, err := m.templates.Get(ctx, spec.Template)
	if err != nil || tmpl.State != api.TemplateReady {
		return "", snapshot.Incompatible(snapshotID, fmt.Sprintf("spec: its template %s is gone", spec.Template))
	}
	if !tmpl.CreatedAt.Equal(spec.TemplateCreated) {
		return "", snapshot.Incompatible(snapshotID, fmt.Sprintf("spec: template %s was rebuilt at %s, after the snapshot's template of %s",
			spec.Template, tmpl.CreatedAt.Format(time.RFC3339), spec.TemplateCreated.Format(time.RFC3339)))
	}
	return m.templates.RootfsDir(spec.Template)
}

// checkSpec is the part of checkRestorable about what a container is made
// of: the template (not rebuilt since), the agent binary and the volumes.
func (m *Manager) checkSpec(ctx context.Context, snapshotID, teamID string, spec savedSpec) error {
	if _, err := m.specRootfs(ctx, snapshotID, spec); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(m.localAgent(spec.AgentDir), "nullspace-agent")); err != nil {
		return snapshot.Incompatible(snapshotID, "spec: the agent binary it ran is no longer installed")
	}
	for _, v := range spec.Volumes {
		if _, err := os.Stat(m.volumeDir(teamID, v.Name)); err != nil {
			return snapshot.Incompatible(snapshotID, fmt.Sprintf("spec: its volume %s is gone", v.Name))
		}
	}
	return nil
}

// restoreOpts say what the caller of restoreInto has done already.
type restoreOpts struct {
	// verified: the snapshot's checksums were checked.
	verified bool
	// net is the network of a spare whose container rec took over.
	net *NetInfo
	// boot: the restore is a start (a stopped machine's disk), not a
	// resume, so the resume hooks do not run.
	boot bool
}

// restoreInto restores sn into rec, which holds a network slot and a fresh
// (or spare) container id, and gives the restored agent rec's identity.
// Unless the caller has verified them already, the files' checksums are
// verified while runsc restores (a corrupt snapshot is reported as such even
// when runsc fails first). On error the caller releases rec's resources.
func (m *Manager) restoreInto(ctx context.Context, rec *store.Machine, sn *store.Snapshot, spec savedSpec, opts restoreOpts) error {
	// A kill of the lineage cancels the restore, even where the caller
	// detached ctx from its own caller; its error then says so, whatever
	// step it cut short.
	ctx, cancelOp := preemptible(ctx)
	defer cancelOp()
	return interrupted(ctx, rec.ID, "restore", m.restoreSteps(ctx, rec, sn, spec, opts))
}

// restoreSteps is restoreInto's work.
func (m *Manager) restoreSteps(ctx context.Context, rec *store.Machine, sn *store.Snapshot, spec savedSpec, opts restoreOpts) error {
	m.spares.restoreStarted()
	defer m.spares.restoreDone()
	t0 := time.Now()
	ni, err := m.setupNetwork(ctx, rec, opts.net)
	if err != nil {
		return err
	}
	rootfs, err := m.specRootfs(ctx, sn.ID, spec)
	if err != nil {
		return err
	}
	rspec, err := m.machineSpec(rec, ni, rootfs, spec.TemplateEnv, spec.Workdir)
	if err != nil {
		return err
	}
	verify := make(chan error, 1)
	if opts.verified {
		verify <- nil
	} else {
		go func() { verify <- m.snaps.Verify(ctx, sn.ID, snapshotFiles(sn)) }()
	}
	t1 := time.Now()
	rctx, cancel := context.WithTimeout(ctx, runscTimeout(spec.MemoryMB))
	rerr := m.driver.Restore(rctx, rspec, m.snaps.Path(sn.ID))
	cancel()
	t2 := time.Now()
	if verr := <-verify; verr != nil {
		return verr
	}
	if rerr != nil {
		return restoreError(sn.ID, rerr)
	}
	faults.Point("restore.restored")
	agent := agentclient.New(m.agentURL(ni.GuestIP), sn.AgentToken, nil)
	if err := m.waitAgent(ctx, agent); err != nil {
		return err
	}
	files := map[string]string{}
	for name, content := range m.etcFiles(rec, ni) {
		files["/etc/"+name] = content
	}
	hooks := rec.Hooks.OnResume
	if opts.boot {
		hooks = nil
	}
	actx, cancel := context.WithTimeout(ctx, prepareTimeout(hooks))
	res, err := agent.Restored(actx, api.AgentRestoredRequest{
		MachineID: rec.ID, Hostname: hostnameOf(rec.ID), Token: rec.AgentToken, Now: time.Now().UTC(),
		Files: files, Hooks: hooks, TimeoutMS: hookBudget.Milliseconds(),
	})
	cancel()
	if err != nil {
		return fmt.Errorf("tell the restored agent its identity: %w", err)
	}
	for _, h := range res.Hooks {
		if h.ExitCode != 0 {
			m.logger.WarnContext(ctx, "on_resume hook failed", "machine_id", rec.ID, "command", h.Command, "exit_code", h.ExitCode, "output", h.Output)
		}
	}
	rec.StartedAt = time.Now().UTC()
	m.logger.DebugContext(ctx, "machine restored", "machine_id", rec.ID, "snapshot_id", sn.ID, "spare", opts.net != nil, "prepare", t1.Sub(t0),
		"runsc_restore", t2.Sub(t1), "agent", rec.StartedAt.Sub(t2), "clock_skew_ms", res.ClockSkewMS)
	return nil
}

// restoreError reports runsc's refusal of a checkpoint as an incompatibility
// when runsc says so (spec validation, CPU features), and as a plain error
// otherwise. runsc's own words stay in the cause, for the server log: they
// hold host paths and its command line.
func restoreError(id string, err error) error {
	msg := err.Error()
	for _, marker := range []string{"validat", "incompatible", "mismatch", "CPU feature", "cpuid"} {
		if strings.Contains(msg, marker) {
			return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotIncompatible,
				fmt.Sprintf("snapshot %s cannot be restored here: the runtime refused it as incompatible with this host (its CPU features or configuration differ)", id),
				"restore it on a host that matches, or create a new machine from a template; the server log has the runtime's reason")
		}
	}
	return fmt.Errorf("restore snapshot %s: %w", id, err)
}
