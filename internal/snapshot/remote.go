package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
)

// The object store (--object-store) keeps a copy of every committed
// snapshot, so that losing this host's disk loses nothing and any server
// sharing the store can restore it. runsc reads local files, so the local
// directory stays where checkpoints are written and read; the object store
// is behind it:
//
//	snapshots/<id>/manifest.json   the files, as chunks (objstore/chunks)
//
// A pause commits locally and returns; Upload runs after it, in the
// background (machine.uploader), and the snapshot is durable once it
// returns. Fetch brings a snapshot that is not on this disk back from the
// object store before a restore.

// ManifestPrefix is where snapshot manifests live in the object store.
const ManifestPrefix = "snapshots/"

// manifestKey is the manifest of snapshot id.
func manifestKey(id string) string { return ManifestPrefix + id + "/manifest.json" }

// ManifestID returns the snapshot id of a manifest key, or "".
func ManifestID(key string) string {
	rest, ok := strings.CutPrefix(key, ManifestPrefix)
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, "/manifest.json")
	if !ok {
		return ""
	}
	return id
}

// SetRemote makes the store keep copies in an object store.
func (s *Store) SetRemote(r *chunks.Store) { s.remote = r }

// Remote is the object store, or nil.
func (s *Store) Remote() *chunks.Store { return s.remote }

// Local reports whether snapshot id is on this disk.
func (s *Store) Local(id string) bool {
	_, err := os.Stat(filepath.Join(s.Path(id), metaFile))
	return err == nil
}

// Upload copies committed snapshot id, whose files are files (as its
// record lists them), and its meta.json, to the object store. Only those:
// never whatever the directory holds at the time, so that a directory
// being removed cannot make a manifest of fewer files. It is idempotent:
// chunks already there are not put again.
func (s *Store) Upload(ctx context.Context, id string, files []File) (chunks.Stats, error) {
	if s.remote == nil {
		return chunks.Stats{}, errors.New("upload snapshot: no object store")
	}
	if len(files) == 0 {
		return chunks.Stats{}, fmt.Errorf("upload snapshot %s: its record lists no files", id)
	}
	names := []string{metaFile}
	for _, f := range files {
		names = append(names, f.Name)
	}
	_, st, err := s.remote.Upload(ctx, manifestKey(id), s.Path(id), names, nil)
	if err != nil {
		return st, fmt.Errorf("upload snapshot %s: %w", id, err)
	}
	return st, nil
}

// Fetch makes sure snapshot id is on this disk, downloading it from the
// object store if it is not. Without an object store, or for a snapshot
// the object store lacks, a missing directory is snapshot_corrupt.
// Concurrent fetches of one snapshot download it once.
func (s *Store) Fetch(ctx context.Context, id string) error {
	if s.Local(id) {
		return nil
	}
	if s.remote == nil {
		return Corrupt(id, "its directory is missing", nil)
	}
	mu := s.fetchLock(id)
	mu.Lock()
	defer mu.Unlock()
	if s.Local(id) {
		return nil
	}
	m, err := s.remote.ReadManifest(ctx, manifestKey(id))
	if err != nil {
		return fetchError(id, err)
	}
	// A directory left without its meta.json (a crash) is replaced.
	if err := os.RemoveAll(s.Path(id)); err != nil {
		return fmt.Errorf("fetch snapshot %s: %w", id, err)
	}
	if err := s.remote.Download(ctx, m, s.Path(id)); err != nil {
		return fetchError(id, err)
	}
	return nil
}

// fetchError says what a failed fetch means for the caller: damaged or
// missing objects make the snapshot corrupt; a store that does not answer
// is retryable (object_store_unavailable passes through).
func fetchError(id string, err error) error {
	var ce *chunks.CorruptError
	if errors.As(err, &ce) || errors.Is(err, objstore.ErrNotFound) {
		return Corrupt(id, "its copy in the object store is damaged or missing", err)
	}
	return fmt.Errorf("fetch snapshot %s from the object store: %w", id, err)
}

func (s *Store) fetchLock(id string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetching == nil {
		s.fetching = map[string]*sync.Mutex{}
	}
	mu, ok := s.fetching[id]
	if !ok {
		mu = new(sync.Mutex)
		s.fetching[id] = mu
	}
	return mu
}

// DeleteRemote removes snapshot id's manifest from the object store (its
// chunks go with the next sweep, unless another snapshot shares them).
func (s *Store) DeleteRemote(ctx context.Context, id string) error {
	if s.remote == nil {
		return nil
	}
	err := s.remote.Remote.Delete(ctx, manifestKey(id))
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("delete snapshot %s from the object store: %w", id, err)
	}
	return nil
}

// SweepRemote deletes the manifests of snapshots not in keep, and the
// chunks no kept manifest (of snapshots or templates) names, past the
// object store's grace period.
func (s *Store) SweepRemote(ctx context.Context, keep func(id string) bool, otherPrefixes ...string) (chunks.SweepStats, error) {
	if s.remote == nil {
		return chunks.SweepStats{}, nil
	}
	return s.remote.Sweep(ctx, append([]string{ManifestPrefix}, otherPrefixes...), func(key string) bool {
		if id := ManifestID(key); id != "" {
			return keep(id)
		}
		return true // another kind's manifest: its owner sweeps it
	})
}

// NotDurable is the error of a restore, on a server that does not have
// the snapshot's files, of a snapshot not yet in the object store.
func NotDurable(id string) error {
	return errdefs.New(errdefs.ErrUnavailable, errdefs.CodeSnapshotNotDurable,
		fmt.Sprintf("snapshot %s is not on this server and not yet in the object store", id),
		"retry in a few seconds: the server that took it is uploading it; if that server is gone before the upload ended, the snapshot is lost")
}

// Hold keeps snapshot id's local files from Evict until release is
// called (a restore in progress reads them).
func (s *Store) Hold(id string) (release func()) {
	// After an Evict in progress, never between its check and its removal:
	// the caller's look for local files that follows sees them gone.
	fl := s.fetchLock(id)
	fl.Lock()
	defer fl.Unlock()
	s.mu.Lock()
	if s.holds == nil {
		s.holds = map[string]int{}
	}
	s.holds[id]++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.holds[id]--; s.holds[id] == 0 {
				delete(s.holds, id)
			}
			s.mu.Unlock()
		})
	}
}

// Evict removes the local copy of snapshot id, whose files the object
// store holds (the caller checked it is durable), unless a restore holds
// it; it reports whether it removed it.
func (s *Store) Evict(id string) (bool, error) {
	if s.remote == nil {
		return false, errors.New("evict snapshot: no object store")
	}
	mu := s.fetchLock(id)
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	held := s.holds[id] > 0
	s.mu.Unlock()
	if held || !s.Local(id) {
		return false, nil
	}
	return true, s.Delete(id)
}
