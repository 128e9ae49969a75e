package machine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/faults"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/template"
)

// With an object store (Config.Remote), every committed snapshot is
// copied there after its pause, in the background: a pause must not keep
// its machine frozen for an upload, and a slow or failing object store
// must not fail a pause whose checkpoint is safe on this disk. A snapshot
// is durable once its copy is complete; until then only this server can
// restore it (another refuses with snapshot_not_durable, retryable). An
// upload that fails is retried with backoff while the server runs, and a
// restart queues again every ready snapshot that is not yet durable.
//
// The local directory is a cache in front of the object store, bounded by
// Config.CacheMaxBytes: past it, durable snapshots' local copies go,
// oldest first (those no paused machine waits on before the others), and
// come back from the object store when a restore needs them.

// uploader is the queue of snapshots to copy.
type uploader struct {
	wake chan struct{}

	evictMu sync.Mutex // one evictCache at a time

	mu      sync.Mutex
	queue   []string        // snapshot ids, oldest first
	queued  map[string]bool // ids in queue, being uploaded, or waiting to be tried again
	backoff map[string]retry
}

// retry is a snapshot's failed uploads so far and the wait before the
// next.
type retry struct {
	wait     time.Duration
	attempts int
}

func newUploader() *uploader {
	return &uploader{wake: make(chan struct{}, 1), queued: map[string]bool{}, backoff: map[string]retry{}}
}

// queueUpload adds a committed snapshot to the upload queue (no-op
// without an object store).
func (m *Manager) queueUpload(id string) {
	if m.snaps.Remote() == nil {
		return
	}
	u := m.uploads
	u.mu.Lock()
	if !u.queued[id] {
		u.queued[id] = true
		u.queue = append(u.queue, id)
	}
	u.mu.Unlock()
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// next takes the oldest queued id, or "" when the queue is empty.
func (u *uploader) next() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.queue) == 0 {
		return ""
	}
	id := u.queue[0]
	u.queue = u.queue[1:]
	return id
}

func (u *uploader) done(id string) {
	u.mu.Lock()
	delete(u.queued, id)
	delete(u.backoff, id)
	u.mu.Unlock()
}

// failed records a failed attempt of id and returns how long to wait
// before the next one, and which attempt failed.
func (u *uploader) failed(id string) (time.Duration, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	b := u.backoff[id]
	if b.wait == 0 {
		b.wait = uploadBackoff
	} else {
		b.wait = min(2*b.wait, time.Minute)
	}
	b.attempts++
	u.backoff[id] = b
	return b.wait, b.attempts
}

// requeue puts id, still queued, back at the end of the queue.
func (u *uploader) requeue(id string) {
	u.mu.Lock()
	if u.queued[id] {
		u.queue = append(u.queue, id)
	}
	u.mu.Unlock()
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// Pending reports how many snapshots wait for their upload.
func (u *uploader) pending() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.queued)
}

// uploadBackoff is the first wait before an upload is tried again; it
// doubles up to a minute.
var uploadBackoff = time.Second

// remoteSweepEvery is how often the object store's unreferenced objects
// are swept.
var remoteSweepEvery = 10 * time.Minute

// RunUploads copies snapshots to the object store until ctx ends: those
// left not durable by an earlier run first, then each one committed.
// Without an object store it returns at once.
func (m *Manager) RunUploads(ctx context.Context) {
	if m.snaps.Remote() == nil {
		return
	}
	if left, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotReady}, NotDurable: true}); err != nil {
		m.logger.ErrorContext(ctx, "list snapshots to upload", "err", err)
	} else {
		for _, sn := range left {
			if m.snaps.Local(sn.ID) {
				m.queueUpload(sn.ID)
			}
		}
	}
	for {
		for id := m.uploads.next(); id != ""; id = m.uploads.next() {
			if !m.uploadAttempt(ctx, id) {
				m.uploads.done(id)
			}
			if ctx.Err() != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-m.uploads.wake:
		}
	}
}

// uploadAttempt tries snapshot id's upload once. A failed one is queued
// again after a backoff of its own (doubling to a minute), behind the
// others: one snapshot that cannot be uploaded yet (its template, say)
// holds up no other. It reports whether id stays queued.
func (m *Manager) uploadAttempt(ctx context.Context, id string) (again bool) {
	sn, err := m.store.GetSnapshot(ctx, id)
	if err != nil || sn.State != store.SnapshotReady || sn.Durable {
		return false // deleted, pruned, or done by an earlier run
	}
	err = m.uploadOnce(ctx, sn)
	if err == nil || ctx.Err() != nil {
		return false // uploaded, or the server stops (its next start queues it again)
	}
	wait, attempt := m.uploads.failed(id)
	m.logger.WarnContext(ctx, "snapshot upload failed; retrying", "snapshot_id", id, "attempt", attempt, "in", wait, "err", err)
	time.AfterFunc(wait+time.Duration(rand.Int64N(int64(wait/2)+1)), func() { m.uploads.requeue(id) })
	return true
}

func (m *Manager) uploadOnce(ctx context.Context, sn *store.Snapshot) error {
	// Restorable elsewhere only with its tree: the template uploads on its
	// own (a big tar, after its build), and the snapshot waits for it
	// before it starts, so that its one upload says what it put.
	if spec, err := decodeSpec(sn); err == nil && spec.TemplateDigest != "" {
		key := template.ManifestKey(spec.TemplateDigest)
		_, err := m.snaps.Remote().Remote.Stat(ctx, key)
		if errors.Is(err, objstore.ErrNotFound) {
			if err = m.templates.Upload(ctx, spec.Template, spec.TemplateDigest); err == nil {
				_, err = m.snaps.Remote().Remote.Stat(ctx, key) // it is there now, not just no error
			}
		}
		if err != nil {
			return fmt.Errorf("snapshot %s waits for its template %s (%s) to be in the object store: %w", sn.ID, spec.Template, spec.TemplateDigest, err)
		}
	}
	t0 := time.Now()
	st, err := m.snaps.Upload(ctx, sn.ID, snapshotFiles(sn))
	if err != nil {
		return err
	}
	faults.Point("upload.uploaded") // the objects are there, the row does not say so yet
	ok, err := m.store.MarkDurable(ctx, sn.ID)
	if err != nil {
		return err
	}
	if !ok {
		// Pruned or deleted while it was uploaded: its copy goes too.
		return m.snaps.DeleteRemote(ctx, sn.ID)
	}
	m.observe("upload", t0)
	m.logger.InfoContext(ctx, "snapshot durable in the object store", "snapshot_id", sn.ID, "bytes", st.BytesRead,
		"chunks", st.Chunks, "chunks_uploaded", st.ChunksUploaded, "bytes_uploaded", st.BytesUploaded, "took", time.Since(t0))
	m.emitSnapshotDetails(ctx, api.EventSnapshotDurable, sn, map[string]any{
		"bytes_uploaded": st.BytesUploaded, "chunks": st.Chunks, "chunks_uploaded": st.ChunksUploaded})
	m.evictCache(ctx)
	return nil
}

// RunRemoteSweeps sweeps the object store a minute after it starts, then
// every remoteSweepEvery, until ctx ends: the cluster's leader runs it (a
// sweep spares the chunks young enough to be an upload in flight, so two
// leaders overlapping for a moment do no harm).
func (m *Manager) RunRemoteSweeps(ctx context.Context) {
	if m.snaps.Remote() == nil {
		return
	}
	sweep := time.NewTimer(time.Minute)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			m.sweepRemote(ctx)
			sweep.Reset(remoteSweepEvery)
		}
	}
}

// sweepRemote deletes the object store's manifests of snapshots that no
// longer exist, and the chunks nothing names any more.
func (m *Manager) sweepRemote(ctx context.Context) {
	rows, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotWriting, store.SnapshotReady}})
	if err != nil {
		m.logger.ErrorContext(ctx, "sweep the object store: list snapshots", "err", err)
		return
	}
	live := map[string]bool{}
	for _, sn := range rows {
		live[sn.ID] = true
	}
	st, err := m.snaps.SweepRemote(ctx, func(id string) bool { return live[id] }, template.ManifestPrefix) // the chunks templates name are kept
	if err != nil {
		m.logger.ErrorContext(ctx, "sweep the object store", "err", err)
		return
	}
	m.logger.InfoContext(ctx, "swept the object store", "stats", st)
}

// fetchSnapshot makes sure a snapshot's files are on this disk before a
// restore, fetching them from the object store when they are not: only a
// durable snapshot is there.
func (m *Manager) fetchSnapshot(ctx context.Context, sn *store.Snapshot) error {
	if m.snaps.Local(sn.ID) || m.snaps.Remote() == nil {
		return nil // held: no eviction removes it now; Verify says what is missing
	}
	if !sn.Durable {
		return snapshot.NotDurable(sn.ID)
	}
	t0 := time.Now()
	if err := m.snaps.Fetch(ctx, sn.ID); err != nil {
		return err
	}
	m.observe("fetch", t0)
	m.logger.InfoContext(ctx, "snapshot fetched from the object store", "snapshot_id", sn.ID, "took", time.Since(t0))
	m.background(func() { m.evictCache(m.root) }) // a fetch grows the cache too
	return nil
}

// evictCache removes local copies of durable snapshots while the local
// copies take more than Config.CacheMaxBytes.
func (m *Manager) evictCache(ctx context.Context) {
	if m.cfg.CacheMaxBytes <= 0 {
		return
	}
	// One at a time: two from the same total would evict twice as much.
	m.uploads.evictMu.Lock()
	defer m.uploads.evictMu.Unlock()
	rows, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotReady}})
	if err != nil {
		m.logger.ErrorContext(ctx, "evict cached snapshots", "err", err)
		return
	}
	var total int64
	var durable []*store.Snapshot
	for _, sn := range rows {
		if !m.snaps.Local(sn.ID) {
			continue
		}
		total += sn.SizeBytes
		if sn.Durable {
			durable = append(durable, sn)
		}
	}
	if total <= m.cfg.CacheMaxBytes {
		return
	}
	waitedOn := map[string]bool{}
	if paused, err := m.store.ListMachines(ctx, store.MachineFilter{States: []string{api.StatePaused}}); err == nil {
		for _, rec := range paused {
			waitedOn[rec.SnapshotID] = true
		}
	}
	// ListSnapshots is oldest first; a stable sort puts the snapshots a
	// paused machine resumes from last.
	slices.SortStableFunc(durable, func(a, b *store.Snapshot) int {
		switch {
		case waitedOn[a.ID] == waitedOn[b.ID]:
			return 0
		case waitedOn[a.ID]:
			return 1
		default:
			return -1
		}
	})
	for _, sn := range durable {
		if total <= m.cfg.CacheMaxBytes {
			return
		}
		evicted, err := m.snaps.Evict(sn.ID)
		if err != nil {
			m.logger.ErrorContext(ctx, "evict a cached snapshot", "snapshot_id", sn.ID, "err", err)
			continue
		}
		if evicted {
			total -= sn.SizeBytes
			m.logger.InfoContext(ctx, "evicted a snapshot's local copy (it is in the object store)", "snapshot_id", sn.ID)
		}
	}
}

// deleteSnapshotFiles removes a snapshot's local files and its copy in the
// object store. An object store that does not answer does not fail the
// caller: the manifest of a snapshot without a live row goes with the
// next sweep.
func (m *Manager) deleteSnapshotFiles(ctx context.Context, id string) error {
	if err := m.snaps.Delete(id); err != nil {
		return err
	}
	if err := m.snaps.DeleteRemote(ctx, id); err != nil {
		m.logger.WarnContext(ctx, "delete a snapshot's copy in the object store; the next sweep will", "snapshot_id", id, "err", err)
	}
	return nil
}
