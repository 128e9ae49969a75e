package machine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/faults"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

// savedSpec is what a restore needs to rebuild a checkpointed machine's
// container and identity. It is stored with every snapshot (in the state
// store and in the snapshot's meta.json).
type savedSpec struct {
	Template        string    `json:"template"`
	TemplateCreated time.Time `json:"template_created"`
	// TemplateDigest identifies the template's tree wherever it is ("" in
	// snapshots taken before digests: TemplateCreated is checked then).
	TemplateDigest string            `json:"template_digest,omitempty"`
	TemplateEnv    map[string]string `json:"template_env,omitempty"`
	Workdir        string            `json:"workdir,omitempty"`
	CPUCount       int               `json:"cpu_count"`
	MemoryMB       int               `json:"memory_mb"`
	// DiskMB is the machine's disk limit; 0 in snapshots taken before
	// machines had one (read as the server's default).
	DiskMB        int               `json:"disk_mb,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	AllowInternet bool              `json:"allow_internet"`
	Volumes       []api.VolumeMount `json:"volumes,omitempty"`
	Hooks         api.Hooks         `json:"hooks"`
	AgentDir      string            `json:"agent_dir"`
	// Command and MainPID: the main process, which children of a reusable
	// snapshot share (its pid is the same in every restored copy).
	Command []string `json:"command,omitempty"`
	MainPID int      `json:"main_pid,omitempty"`
}

// snapshotMeta is written as meta.json beside the checkpoint files, so a
// snapshot directory describes itself (for operators, and for a future
// remote snapshot store).
type snapshotMeta struct {
	ID         string        `json:"id"`
	Kind       string        `json:"kind"`
	MachineID  string        `json:"machine_id"`
	ParentID   string        `json:"parent_id,omitempty"`
	Generation int           `json:"generation"`
	CreatedAt  time.Time     `json:"created_at"`
	Host       snapshot.Host `json:"host"`
	Spec       savedSpec     `json:"spec"`
}

func lineageKey(id string) string { return "lineage:" + id }

// captureOps names the operation of each snapshot kind, for fault points
// and latency metrics.
var captureOps = map[string]string{api.SnapshotHibernate: "pause", api.SnapshotReusable: "snapshot",
	api.SnapshotCheckpoint: "checkpoint", api.SnapshotDisk: "stop"}

func newSnapshotID() string { return snapshotIDPrefix + randomHex(10) }

// busy is the error for a lifecycle call on a lineage that is in the middle
// of another one: concurrent calls are serialized and the loser is told so
// at once instead of queueing.
func busy(id string) error {
	return errdefs.New(errdefs.ErrConflict, errdefs.CodeConflict,
		fmt.Sprintf("machine %s is in the middle of another lifecycle operation (pause, resume, snapshot or restore)", id),
		"retry when it has finished; GET /v1/machines/{id} shows its state")
}

// lineageHead returns the latest execution of a lineage.
func (m *Manager) lineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	head, err := m.store.LineageHead(ctx, lineageID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, machineNotFound(lineageID)
	}
	return head, err
}

// headLocked locks the latest execution of a lineage, whose lock the
// caller holds, and returns it read afresh; it must be running or paused.
func (m *Manager) headLocked(ctx context.Context, lineageID string) (*store.Machine, func(), error) {
	head, err := m.lineageHead(ctx, lineageID)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := m.lock(ctx, head.ID)
	if err != nil {
		return nil, nil, err
	}
	if head, err = m.store.GetMachine(ctx, head.ID); err != nil {
		unlock()
		return nil, nil, err
	}
	if err := m.ownHere(head); err != nil {
		unlock()
		return nil, nil, err
	}
	if head.State != api.StateRunning && head.State != api.StatePaused && head.State != api.StateStopped {
		unlock()
		return nil, nil, notRunning(head)
	}
	return head, unlock, nil
}

// Pause checkpoints a running machine and stops it: memory, processes and
// files go into a hibernate snapshot, its resources are freed, and its id
// stays as a paused alias. Pausing a paused machine returns its snapshot.
func (m *Manager) Pause(ctx context.Context, teamID, id string) (*store.Snapshot, error) {
	return m.captureCall(ctx, teamID, id, api.SnapshotHibernate, "")
}

// CreateSnapshot checkpoints a running machine and leaves it running: the
// reusable snapshot returned can be restored into any number of children.
// A name ("": none) must be free in the team; the snapshot holds it from
// the start of the checkpoint until it is deleted.
func (m *Manager) CreateSnapshot(ctx context.Context, teamID, id, name string) (*store.Snapshot, error) {
	if name != "" {
		if err := checkSnapshotName(name); err != nil {
			return nil, err
		}
		if err := m.nameFree(ctx, teamID, name); err != nil {
			return nil, err
		}
	}
	return m.captureCall(ctx, teamID, id, api.SnapshotReusable, name)
}

// Checkpoint adds a checkpoint of a running machine to its history without
// stopping it.
func (m *Manager) Checkpoint(ctx context.Context, teamID, id string) (*store.Snapshot, error) {
	return m.captureCall(ctx, teamID, id, api.SnapshotCheckpoint, "")
}

// captureCall checkpoints the latest execution of id's lineage (an
// operation on a paused alias acts on the latest execution). Pausing a
// paused machine returns its snapshot. name names the snapshot ("": none).
func (m *Manager) captureCall(ctx context.Context, teamID, id, kind, name string) (_ *store.Snapshot, err error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	ctx, head, unlock, err := m.lockHead(ctx, rec)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer wrapInterrupted(ctx, id, captureOps[kind], &err)
	switch {
	case kind == api.SnapshotHibernate && head.State == api.StatePaused:
		return m.store.GetSnapshot(ctx, head.SnapshotID)
	case head.State != api.StateRunning:
		return nil, notRunning(head)
	case kind == api.SnapshotHibernate && head.Persistence == api.PersistenceEphemeral:
		return nil, ephemeralPause(head)
	}
	if err := m.checkStorage(ctx, head.TeamID); err != nil {
		return nil, err
	}
	return m.captureNamed(ctx, head, kind, 0, name)
}

// lockHead takes the lineage lock of rec (failing at once with a conflict
// if another lifecycle operation holds it) and the machine lock of the
// lineage's latest execution. It returns the operation's context (a kill
// cancels it), the latest execution read afresh (running, paused or
// stopped) and the function that unlocks both.
func (m *Manager) lockHead(ctx context.Context, rec *store.Machine) (context.Context, *store.Machine, func(), error) {
	opCtx, unlockLineage, err := m.tryLockOp(ctx, lineageKey(rec.LineageID), rec.ID)
	if err != nil {
		return nil, nil, nil, err
	}
	head, unlock, err := m.headLocked(opCtx, rec.LineageID)
	if err != nil {
		unlockLineage()
		return nil, nil, nil, err
	}
	return opCtx, head, func() { unlock(); unlockLineage() }, nil
}

// capture takes a checkpoint of a running machine; the caller holds the
// lineage and machine locks. For a hibernate snapshot (pause) and a disk
// snapshot (stop) the machine is frozen first (nothing runs after the point
// the checkpoint records), and stopped only once the snapshot is durable;
// if anything fails before that, the machine is thawed and keeps running,
// and nothing of the snapshot remains. Before a disk snapshot every
// process is ended (SIGTERM, SIGKILL after grace), so that it holds the
// files and no memory; a stop that fails leaves the machine running
// without them.
//
// What it waits for is bounded (bounds.go) and preemptible: a kill or the
// server's shutdown cancels it, and it is undone. An agent that does not
// answer the pre-pause call does not stop a pause: the checkpoint is taken
// without the hooks and the flush, and the event says so.
func (m *Manager) capture(ctx context.Context, rec *store.Machine, kind string, grace time.Duration) (*store.Snapshot, error) {
	return m.captureNamed(ctx, rec, kind, grace, "")
}

// captureNamed is capture of a snapshot named name ("": none). The name is
// in the snapshot's first row, so that a taken one fails before anything
// is checkpointed, and an undone checkpoint frees it with the row.
func (m *Manager) captureNamed(ctx context.Context, rec *store.Machine, kind string, grace time.Duration, name string) (*store.Snapshot, error) {
	// opCtx is what the checkpoint waits under: a kill ends it. ctx, for
	// the writes that record or undo it, ends with nothing.
	opCtx, cancelOp := preemptible(context.WithoutCancel(ctx))
	defer cancelOp()
	ctx = context.WithoutCancel(ctx) // a checkpoint, once begun, finishes or is undone
	stop := kind == api.SnapshotHibernate || kind == api.SnapshotDisk
	op := captureOps[kind]
	log := m.logger.With("machine_id", rec.ID, "kind", kind)

	spec, err := m.savedSpecOf(ctx, rec)
	if err != nil {
		return nil, err
	}
	gen, err := m.nextGeneration(ctx, rec)
	if err != nil {
		return nil, err
	}
	sn := &store.Snapshot{
		ID: newSnapshotID(), TeamID: rec.TeamID, Kind: kind, State: store.SnapshotWriting, MachineID: rec.ID,
		LineageID: rec.LineageID, Template: rec.Template, ParentID: rec.RestoredFrom, Generation: gen,
		CreatedAt: time.Now().UTC(), AgentToken: rec.AgentToken, Name: name,
	}
	sn.Host, _ = json.Marshal(m.cfg.Host)
	sn.Spec, _ = json.Marshal(spec)
	if err := m.store.CreateSnapshot(ctx, sn); err != nil {
		return nil, err
	}
	to, next := api.StateSnapshotting, api.StateRunning
	switch kind {
	case api.SnapshotHibernate:
		to, next = api.StatePausing, api.StatePaused
	case api.SnapshotDisk:
		to, next = api.StateStopping, api.StateStopped
	}
	if err := m.setState(ctx, rec, to); err != nil {
		m.store.DeleteSnapshot(ctx, sn.ID)
		return nil, err
	}
	var pending *snapshot.Pending
	frozen := false
	undo := func(cause error) error {
		var errs []error
		if pending != nil {
			errs = append(errs, pending.Abort())
		}
		if frozen {
			tctx, cancel := context.WithTimeout(ctx, freezeTimeout)
			errs = append(errs, m.driver.Thaw(tctx, rec.ContainerID))
			cancel()
		}
		errs = append(errs, m.store.DeleteSnapshot(ctx, sn.ID))
		errs = append(errs, m.setState(ctx, rec, api.StateRunning))
		if err := errors.Join(errs...); err != nil {
			log.ErrorContext(ctx, "undo failed checkpoint", "err", err)
		}
		log.WarnContext(ctx, "checkpoint failed; machine kept running", "err", cause)
		return interrupted(opCtx, rec.ID, op, cause)
	}

	// Hooks and a filesystem flush inside the machine, while it still runs.
	ip, err := m.guestAddr(rec)
	if err != nil {
		return nil, undo(err)
	}
	agent := agentclient.New(m.agentURL(ip), rec.AgentToken, nil)
	t0 := time.Now()
	var mainExit *api.MainExit
	skipped := "" // why the pre-pause hooks and flush did not run
	if kind == api.SnapshotDisk {
		sctx, cancel := context.WithTimeout(opCtx, grace+agentSlack)
		res, err := agent.Stop(sctx, api.AgentStopRequest{GraceMS: grace.Milliseconds()})
		cancel()
		if err != nil {
			return nil, undo(fmt.Errorf("end the processes of machine %s: %w", rec.ID, err))
		}
		mainExit = res.Main
		log.InfoContext(ctx, "processes ended for a stop", "ended", res.Ended, "killed", res.Killed)
	} else {
		pctx, cancel := context.WithTimeout(opCtx, prepareTimeout(rec.Hooks.OnPause))
		prep, err := agent.Prepare(pctx, api.AgentPrepareRequest{Hooks: rec.Hooks.OnPause, TimeoutMS: hookBudget.Milliseconds()})
		cancel()
		switch {
		case err != nil && opCtx.Err() != nil:
			return nil, undo(fmt.Errorf("prepare machine %s for a checkpoint: %w", rec.ID, err))
		case err != nil && !errors.Is(err, errdefs.ErrUnavailable) && !errors.Is(err, errdefs.ErrDeadlineExceeded):
			return nil, undo(fmt.Errorf("prepare machine %s for a checkpoint: %w", rec.ID, err))
		case err != nil:
			// The agent is silent (a wedged machine, a lost network): the
			// checkpoint does not need it, and holds every write anyway.
			skipped = fmt.Sprintf("the machine's agent did not answer within %s: on_pause hooks and the filesystem flush were skipped", prepareTimeout(rec.Hooks.OnPause))
			log.WarnContext(ctx, "checkpoint without the pre-pause call", "err", err)
		default:
			for _, h := range prep.Hooks {
				if h.ExitCode != 0 {
					log.WarnContext(ctx, "on_pause hook failed", "command", h.Command, "exit_code", h.ExitCode, "output", h.Output)
				}
			}
		}
	}
	if pending, err = m.snaps.Begin(sn.ID); err != nil {
		return nil, undo(err)
	}
	t1 := time.Now()
	// A pause freezes the machine so that nothing runs after the point its
	// checkpoint records. A stop has ended every process already: only the
	// idle agent is left, so the freeze would cost time and buy nothing.
	if kind == api.SnapshotHibernate {
		fctx, cancel := context.WithTimeout(opCtx, freezeTimeout)
		err := m.driver.Freeze(fctx, rec.ContainerID)
		cancel()
		if err != nil {
			return nil, undo(err)
		}
		frozen = true
	}
	cctx, cancelCheckpoint := context.WithTimeout(opCtx, runscTimeout(rec.MemoryMB))
	err = m.driver.Checkpoint(cctx, rec.ContainerID, pending.Dir())
	cancelCheckpoint()
	if err != nil {
		return nil, undo(checkpointError(rec.ID, err))
	}
	window := time.Since(t1)
	faults.Point(op + ".checkpointed")
	meta := snapshotMeta{ID: sn.ID, Kind: kind, MachineID: rec.ID, ParentID: sn.ParentID, Generation: gen,
		CreatedAt: sn.CreatedAt, Host: m.cfg.Host, Spec: spec}
	files, size, err := pending.Commit(meta)
	if err != nil {
		return nil, undo(checkpointError(rec.ID, err))
	}
	if stop {
		window = time.Since(t1) // frozen until the snapshot is durable
	}
	sn.Files, _ = json.Marshal(files)
	sn.SizeBytes = size
	sn.Checksum = combinedChecksum(files)
	sn.PauseWindowMS = window.Milliseconds()

	// Commit the snapshot and the machine's new state together.
	if err := checkTransition(rec.ID, rec.State, next); err != nil {
		return nil, undo(err)
	}
	prev := *rec
	rec.State = next
	if stop {
		rec.SnapshotID = sn.ID
		rec.Deadline = time.Time{} // the lease does not run while paused
	}
	if err := m.store.CommitSnapshot(ctx, sn, rec); err != nil {
		// With the database unreachable, the commit may have happened and
		// only its answer been lost: ask it again before undoing, since an
		// undo of a commit that landed would delete a paused machine's
		// state, and a thaw would run a machine the database has paused.
		landed, known := m.commitOutcome(ctx, sn.ID, err)
		if !landed {
			*rec = prev
			if known {
				m.snaps.Delete(sn.ID)
			} // else the files stay, and the next start's Reconcile removes them unless the snapshot is ready
			return nil, undo(err)
		}
		fresh, gerr := m.store.GetMachine(ctx, rec.ID)
		if gerr != nil {
			return nil, gerr
		}
		*rec = *fresh
		sn.State = store.SnapshotReady
		log.WarnContext(ctx, "the snapshot's commit landed; its answer was lost", "err", err)
	}
	m.transitioned(rec)
	m.emitSnapshot(ctx, api.EventSnapshotCreated, sn)
	m.background(func() { m.enforceBudget(context.WithoutCancel(ctx)) })
	switch kind {
	case api.SnapshotHibernate:
		details := map[string]any{"snapshot_id": sn.ID}
		if skipped != "" {
			details["hooks_skipped"] = skipped
		}
		m.emit(ctx, api.EventMachinePaused, rec, details)
	case api.SnapshotDisk:
		if rec.MainPID > 0 && rec.MainExit == nil && mainExit != nil {
			if _, err := m.store.SetMainExit(ctx, rec.ID, rec.MainPID, mainExit); err != nil {
				log.ErrorContext(ctx, "record the main process's exit", "err", err)
			}
			rec.MainExit = mainExit
		}
		m.emit(ctx, api.EventMachineStopped, rec, map[string]any{"snapshot_id": sn.ID, "main_exit": mainExit})
	}
	faults.Point(op + ".committed")
	if kind != api.SnapshotDisk {
		m.spares.used(rec.TeamID, spec) // a restore of this shape may come (a start restores in place)
	}
	if stop {
		// The state is safe: free what the stopped machine held, then its
		// slot (never before its network is gone). A failure here leaves
		// orphans that Reconcile removes, never a lost state.
		if err := m.release(ctx, rec); err != nil {
			log.ErrorContext(ctx, "free paused machine's resources", "err", err)
		} else {
			rec.Slot = -1
			if err := m.store.UpdateMachine(ctx, rec); err != nil {
				log.ErrorContext(ctx, "free paused machine's slot", "err", err)
			}
		}
		agentclient.SharedHTTPClient().CloseIdleConnections()
	}
	m.observe(op, t0)
	// After the teardown: on a small host the upload's compression would
	// otherwise share the CPUs with the pause it follows.
	m.queueUpload(sn.ID)
	log.InfoContext(ctx, "checkpoint taken", "snapshot_id", sn.ID, "size_bytes", sn.SizeBytes,
		"prepare", t1.Sub(t0), "window", window, "total", time.Since(t0))
	if kind == api.SnapshotHibernate || kind == api.SnapshotCheckpoint {
		// The history grew by one: drop what the retention no longer keeps.
		if err := m.pruneLocked(ctx, rec.LineageID); err != nil {
			log.ErrorContext(ctx, "prune the history after a checkpoint", "err", err)
		}
	}
	return sn, nil
}

// checkpointError turns a failed checkpoint into a public error; a full disk
// gets its own message, since the operator can act on it.
func checkpointError(id string, err error) error {
	if strings.Contains(err.Error(), "no space left") {
		return &errdefs.Error{Class: errdefs.ErrResourceExhausted, Code: errdefs.CodeResourceExhausted,
			Message:         fmt.Sprintf("no space left on the snapshot disk: machine %s was not checkpointed and keeps running", id),
			SuggestedAction: "free disk space on the server (delete unused snapshots) and retry",
			Err:             err, Status: http.StatusInsufficientStorage}
	}
	return fmt.Errorf("checkpoint machine %s: %w", id, err)
}

func combinedChecksum(files []snapshot.File) string {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	for _, f := range files {
		h.Write([]byte(f.Name))
		binary.Write(h, binary.LittleEndian, f.Size)
		binary.Write(h, binary.LittleEndian, f.CRC32C)
	}
	return fmt.Sprintf("crc32c:%08x", h.Sum32())
}

func (m *Manager) savedSpecOf(ctx context.Context, rec *store.Machine) (savedSpec, error) {
	agentDir := rec.AgentDir
	if agentDir == "" {
		agentDir = m.cfg.AgentDir
	}
	spec := savedSpec{
		Template: rec.Template, CPUCount: rec.CPUCount, MemoryMB: rec.MemoryMB, DiskMB: m.diskMB(rec.DiskMB), Env: rec.Env, AllowInternet: rec.AllowInternet,
		Volumes: rec.Volumes, Hooks: rec.Hooks, AgentDir: agentDir, Command: rec.Command, MainPID: rec.MainPID,
	}
	// The tree a machine runs on never changes: a machine restored from a
	// snapshot runs on that snapshot's, which this server may hold only by
	// its digest (fetched from the object store), under no template name.
	if from, ok := m.treeOf(ctx, rec); ok {
		spec.TemplateCreated, spec.TemplateDigest, spec.TemplateEnv, spec.Workdir = from.TemplateCreated, from.TemplateDigest, from.TemplateEnv, from.Workdir
		return spec, nil
	}
	tmpl, err := m.templates.Get(ctx, rec.Template)
	if err != nil {
		return savedSpec{}, fmt.Errorf("template of machine %s: %w", rec.ID, err)
	}
	digest, err := m.templates.Digest(ctx, rec.Template)
	if err != nil {
		// The snapshot then restores only where this template is.
		m.logger.WarnContext(ctx, "template digest", "template", rec.Template, "err", err)
		digest = ""
	}
	spec.TemplateCreated, spec.TemplateDigest, spec.TemplateEnv, spec.Workdir = tmpl.CreatedAt, digest, tmpl.Env, tmpl.Workdir
	return spec, nil
}

// treeOf returns the spec of a snapshot that names the tree rec runs on:
// the one it was restored from, else any ready one of its lineage (a
// lineage's tree never changes); false when none has a digest.
func (m *Manager) treeOf(ctx context.Context, rec *store.Machine) (savedSpec, bool) {
	var candidates []*store.Snapshot
	if rec.RestoredFrom != "" {
		if sn, err := m.store.GetSnapshot(ctx, rec.RestoredFrom); err == nil {
			candidates = append(candidates, sn)
		}
	}
	if rest, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: rec.LineageID, States: []string{store.SnapshotReady}, Newest: 5}); err == nil {
		candidates = append(candidates, rest...)
	}
	for _, sn := range candidates {
		if spec, err := decodeSpec(sn); err == nil && spec.TemplateDigest != "" {
			return spec, true
		}
	}
	return savedSpec{}, false
}

// nextGeneration is one more than the newest state the machine's lineage or
// its origin has recorded, so generations grow along every history.
func (m *Manager) nextGeneration(ctx context.Context, rec *store.Machine) (int, error) {
	gen := 0
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: rec.LineageID})
	if err != nil {
		return 0, err
	}
	for _, s := range snaps {
		gen = max(gen, s.Generation)
	}
	if rec.RestoredFrom != "" {
		if p, err := m.store.GetSnapshot(ctx, rec.RestoredFrom); err == nil {
			gen = max(gen, p.Generation)
		}
	}
	return gen + 1, nil
}

// commitOutcomeWait bounds how long a pause asks an unreachable database
// whether its commit landed.
var commitOutcomeWait = 30 * time.Second

// commitOutcome says whether a commit that failed with err landed after
// all: only a database that went away can have committed and lost the
// answer; then the snapshot's row is read again, with backoff, until it
// answers or commitOutcomeWait passes (known false).
func (m *Manager) commitOutcome(ctx context.Context, id string, err error) (landed, known bool) {
	if !errors.Is(err, errdefs.ErrUnavailable) {
		return false, true
	}
	deadline := time.Now().Add(commitOutcomeWait)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		sn, err := m.store.GetSnapshot(ctx, id)
		if err == nil {
			return sn.State == store.SnapshotReady, true
		}
		if errors.Is(err, errdefs.ErrNotFound) {
			return false, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}
