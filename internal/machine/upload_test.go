package machine

import (
	"context"
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
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/memstore"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
	"nullspace.dev/nullspace/internal/template"
)

// newRemoteManager is a manager whose snapshots are copied to an
// in-memory object store, with its uploader running.
func newRemoteManager(t *testing.T, port int, remote *memstore.Store) (*Manager, *fakeDriver, *sqlstore.DB) {
	t.Helper()
	m, d, _, db := newManagerWith(t, func(cfg *Config, db *sqlstore.DB) {
		cfg.AgentPort = port
		cfg.Events = events.New(db, slog.New(slog.NewTextHandler(io.Discard, nil)))
		// As the server wraps its S3 client: transient failures are
		// retried, then object_store_unavailable.
		cfg.Remote = chunks.New(objstore.WithRetry(remote, objstore.Backoff{Attempts: 2, Base: time.Millisecond, Max: time.Millisecond}, nil), nil)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	shorten(t, &uploadBackoff, 10*time.Millisecond)
	withTemplate(t, remote)
	go func() { m.RunUploads(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; m.Shutdown(context.Background()) })
	return m, d, db
}

// withTemplate puts the test template's tree in the object store (its
// own upload, done): snapshots wait for it before they are durable.
func withTemplate(t *testing.T, remote *memstore.Store) {
	t.Helper()
	digest, _ := fakeTemplates{}.Digest(t.Context(), "minimal")
	if err := remote.Put(t.Context(), template.ManifestKey(digest), strings.NewReader(`{"version":1,"files":[]}`), 24); err != nil {
		t.Fatal(err)
	}
}

// durableWithin waits for a snapshot to become durable.
func durableWithin(t *testing.T, db store.Store, id string, limit time.Duration) bool {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if sn, err := db.GetSnapshot(t.Context(), id); err == nil && sn.Durable {
			return true
		}
	}
	return false
}

// TestUploadRetries: a pause while the object store fails commits at
// once (the machine is paused, the snapshot not durable), and the upload
// is retried until the store answers; then the snapshot is durable and
// its copy restores into a server without the local files.
func TestUploadRetries(t *testing.T) {
	remote := memstore.New()
	remote.Inject(memstore.Fault{Op: memstore.OpPut, KeyPrefix: "chunks/", Times: 6}) // 500s
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	sn, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatalf("pause with the object store failing: %v", err)
	}
	if rec, _ := db.GetMachine(t.Context(), "a"); rec.State != api.StatePaused {
		t.Fatalf("state after the pause: %s", rec.State)
	}
	if got, _ := db.GetSnapshot(t.Context(), sn.ID); got.Durable {
		t.Fatal("durable while the object store refuses every put")
	}
	if !durableWithin(t, db, sn.ID, 30*time.Second) {
		t.Fatal("not durable once the object store answers again")
	}
	if remote.Count(memstore.OpPut) <= 6 {
		t.Fatalf("%d puts: the failed ones were not retried", remote.Count(memstore.OpPut))
	}
	// The local copy gone (another server, or evicted): a resume fetches it.
	if err := m.snaps.Delete(sn.ID); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Connect(t.Context(), "team", "a")
	if err != nil || rec.State != api.StateRunning {
		t.Fatalf("resume from the object store: %+v %v", rec, err)
	}
	if !m.snaps.Local(sn.ID) {
		t.Fatal("the snapshot was not fetched")
	}
}

// TestNotDurableElsewhere: a snapshot this server does not have and the
// object store does not have yet is refused with the retryable
// snapshot_not_durable, and the machine stays paused.
func TestNotDurableElsewhere(t *testing.T) {
	remote := memstore.New()
	remote.Inject(memstore.Fault{Op: memstore.OpPut, KeyPrefix: "chunks/"}) // never succeeds
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	sn, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.snaps.Delete(sn.ID); err != nil { // as on another server
		t.Fatal(err)
	}
	_, err = m.Connect(t.Context(), "team", "a")
	pub := errdefs.Classify(err)
	if pub.Code != errdefs.CodeSnapshotNotDurable || !pub.Retryable {
		t.Fatalf("resume of a snapshot neither here nor in the object store: %v (%s, retryable %v)", err, pub.Code, pub.Retryable)
	}
	if rec, _ := db.GetMachine(t.Context(), "a"); rec.State != api.StatePaused || rec.Slot != -1 {
		t.Fatalf("after the refused resume: state %s slot %d, want paused and no slot", rec.State, rec.Slot)
	}
}

// pausedElsewhere is a manager whose machine "a" is paused, durable, and
// without its local copy, as a server that did not take it sees it.
func pausedElsewhere(t *testing.T, remote *memstore.Store) (*Manager, *sqlstore.DB) {
	t.Helper()
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	sn, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	if !durableWithin(t, db, sn.ID, 10*time.Second) {
		t.Fatal("not durable")
	}
	if err := m.snaps.Delete(sn.ID); err != nil {
		t.Fatal(err)
	}
	return m, db
}

// TestCorruptCopy: a copy damaged in the object store is snapshot_corrupt,
// never a silent cold boot, and the machine stays paused.
func TestCorruptCopy(t *testing.T) {
	remote := memstore.New()
	m, db := pausedElsewhere(t, remote)
	flipped := 0
	for _, k := range remote.Keys("chunks/") {
		{
			remote.Mutate(k, func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b })
			flipped++
		}
	}
	if flipped == 0 {
		t.Fatal("no chunk to damage")
	}
	_, err := m.Connect(t.Context(), "team", "a")
	if code := errdefs.Classify(err).Code; code != errdefs.CodeSnapshotCorrupt {
		t.Fatalf("resume from a damaged copy: %v (code %s), want snapshot_corrupt", err, code)
	}
	if rec, _ := db.GetMachine(t.Context(), "a"); rec.State != api.StatePaused {
		t.Fatalf("state after the refused resume: %s", rec.State)
	}
}

// TestPruneRemovesCopy: a checkpoint pruned by retention, and a deleted
// snapshot, take their manifests out of the object store.
func TestPruneRemovesCopy(t *testing.T) {
	remote := memstore.New()
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	rec := &store.Machine{ID: "a", TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-a", AgentToken: "x", CreatedAt: time.Now(), CheckpointRetention: 1}
	if err := db.CreateMachine(t.Context(), rec, 16); err != nil {
		t.Fatal(err)
	}
	d.containers[rec.ContainerID] = runtime.StatusRunning
	var ids []string
	for range 3 {
		sn, err := m.Checkpoint(t.Context(), "team", "a")
		if err != nil {
			t.Fatal(err)
		}
		if !durableWithin(t, db, sn.ID, 10*time.Second) {
			t.Fatal("not durable")
		}
		ids = append(ids, sn.ID)
	}
	// The machine keeps one: the two older went with the later ones.
	has := func(id string) bool {
		_, err := remote.Stat(t.Context(), "snapshots/"+id+"/manifest.json")
		return err == nil
	}
	if has(ids[0]) || has(ids[1]) || !has(ids[2]) {
		t.Fatalf("manifests after the prune: %v %v %v, want only the newest", has(ids[0]), has(ids[1]), has(ids[2]))
	}
}

// TestUploadAfterRestart: a server that stopped before an upload (kill -9
// between the local write and the upload) or between the upload and its
// record (durable not yet set) uploads at its next start; the second
// upload of objects already there puts no chunk again.
func TestUploadAfterRestart(t *testing.T) {
	remote := memstore.New()
	remote.Inject(memstore.Fault{Op: memstore.OpPut, KeyPrefix: "chunks/"}) // the first server never uploads
	port := healthyAgent(t)
	m, d, db := newRemoteManager(t, port, remote)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	addLeased(t, m, d, "b", time.Now().Add(time.Hour), true)
	snA, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	snB, err := m.Pause(t.Context(), "team", "b")
	if err != nil {
		t.Fatal(err)
	}
	m.Shutdown(context.Background())

	// b's objects got there before the server stopped; its row does not say so.
	good := memstore.New()
	withTemplate(t, good)
	if _, err := m.snaps.Upload(t.Context(), snB.ID, snapshotFiles(snB)); err == nil {
		t.Fatal("upload succeeded against the failing store")
	}
	direct, err := snapshot.Open(m.cfg.SnapshotDir)
	if err != nil {
		t.Fatal(err)
	}
	direct.SetRemote(chunks.New(good, nil))
	if _, err := direct.Upload(t.Context(), snB.ID, snapshotFiles(snB)); err != nil {
		t.Fatal(err)
	}
	putsBefore := good.Count(memstore.OpPut)

	// The next start, on the same data dir and database.
	cfg := m.cfg
	cfg.Remote = chunks.New(good, nil)
	m2, err := New(cfg, db, d, &fakeNetwork{slots: map[int]bool{}}, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m2.RunUploads(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; m2.Shutdown(context.Background()) })
	for _, id := range []string{snA.ID, snB.ID} {
		if !durableWithin(t, db, id, 10*time.Second) {
			t.Fatalf("%s not durable after the restart", id)
		}
	}
	// a was uploaded whole after the restart.
	if _, err := good.Stat(t.Context(), "snapshots/"+snA.ID+"/manifest.json"); err != nil {
		t.Fatalf("a's manifest: %v", err)
	}
	if got := good.Count(memstore.OpPut) - putsBefore; got == 0 {
		t.Fatal("nothing uploaded after the restart")
	}
}

// TestObjectStoreDownAtResume: a resume that must fetch while the object
// store does not answer fails with the retryable object_store_unavailable,
// and the machine stays paused.
func TestObjectStoreDownAtResume(t *testing.T) {
	remote := memstore.New()
	m, db := pausedElsewhere(t, remote)
	remote.Inject(memstore.Fault{Op: memstore.OpGet}) // 500s from now on
	_, err := m.Connect(t.Context(), "team", "a")
	pub := errdefs.Classify(err)
	if pub.Code != errdefs.CodeObjectStoreUnavailable || !pub.Retryable {
		t.Fatalf("resume with the object store down: %v (code %s, retryable %v)", err, pub.Code, pub.Retryable)
	}
	if rec, _ := db.GetMachine(t.Context(), "a"); rec.State != api.StatePaused {
		t.Fatalf("state after the refused resume: %s", rec.State)
	}
}

// TestSweepRemote: a snapshot deleted while the object store did not
// answer leaves its copy; the next sweep removes its manifest, and its
// chunks once they are past the grace period, and keeps what live
// snapshots name.
func TestSweepRemote(t *testing.T) {
	remote := memstore.New()
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	for _, id := range []string{"a", "b"} {
		addLeased(t, m, d, id, time.Now().Add(time.Hour), true)
	}
	gone, err := m.Checkpoint(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	kept, err := m.Checkpoint(t.Context(), "team", "b")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{gone.ID, kept.ID} {
		if !durableWithin(t, db, id, 10*time.Second) {
			t.Fatal("not durable")
		}
	}
	remote.Inject(memstore.Fault{Op: memstore.OpDelete})
	if err := m.DeleteSnapshot(t.Context(), "team", gone.ID, true); err != nil {
		t.Fatal(err)
	}
	remote.ClearFaults()
	manifest := func(id string) bool {
		_, err := remote.Stat(t.Context(), "snapshots/"+id+"/manifest.json")
		return err == nil
	}
	if !manifest(gone.ID) {
		t.Fatal("the failed delete removed the manifest")
	}
	// Every object past the grace period.
	for _, k := range remote.Keys("") {
		remote.SetModTime(k, time.Now().Add(-2*time.Hour))
	}
	chunksBefore := len(remote.Keys("chunks/"))
	m.sweepRemote(t.Context())
	if after := len(remote.Keys("chunks/")); after >= chunksBefore {
		t.Fatalf("chunks: %d before the sweep, %d after; want the deleted snapshot's own gone", chunksBefore, after)
	}
	if manifest(gone.ID) || !manifest(kept.ID) {
		t.Fatalf("after the sweep: deleted snapshot's manifest %v, live one's %v", manifest(gone.ID), manifest(kept.ID))
	}
	// What is left is exactly what the live snapshot names.
	if err := m.snaps.Delete(kept.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.snaps.Fetch(t.Context(), kept.ID); err != nil {
		t.Fatalf("the live snapshot after the sweep: %v", err)
	}
}

// TestDurableWaitsForTemplate: a snapshot is not durable while its
// template's tree is not in the object store (another server could not
// restore it), and is once it is.
func TestDurableWaitsForTemplate(t *testing.T) {
	remote := memstore.New()
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	digest, _ := fakeTemplates{}.Digest(t.Context(), "minimal")
	if err := remote.Delete(t.Context(), template.ManifestKey(digest)); err != nil {
		t.Fatal(err)
	}
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	sn, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	if durableWithin(t, db, sn.ID, 300*time.Millisecond) {
		t.Fatal("durable without its template in the object store")
	}
	withTemplate(t, remote)
	if !durableWithin(t, db, sn.ID, 10*time.Second) {
		t.Fatal("not durable once its template is in the object store")
	}
}

// TestStuckUploadHoldsNoOther: a snapshot whose upload cannot succeed
// (its files are gone here) is retried behind the others, which become
// durable.
func TestStuckUploadHoldsNoOther(t *testing.T) {
	remote := memstore.New()
	remote.Inject(memstore.Fault{Op: memstore.OpPut, KeyPrefix: "chunks/"}) // a's tries fail...
	m, d, db := newRemoteManager(t, healthyAgent(t), remote)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	addLeased(t, m, d, "b", time.Now().Add(time.Hour), true)
	snA, err := m.Pause(t.Context(), "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.snaps.Delete(snA.ID); err != nil { // ...and now can never succeed
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // no try of a that read its files is still in flight
	remote.ClearFaults()
	snB, err := m.Pause(t.Context(), "team", "b")
	if err != nil {
		t.Fatal(err)
	}
	if !durableWithin(t, db, snB.ID, 5*time.Second) {
		t.Fatal("b's upload waited behind a's, which cannot succeed")
	}
}
