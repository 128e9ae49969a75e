package chunks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"nullspace.dev/nullspace/internal/objstore"
)

// SweepStats counts what a Sweep saw and deleted.
type SweepStats struct {
	Manifests, ManifestsDeleted int
	Chunks, ChunksDeleted       int
	BytesDeleted                int64 // compressed bytes of the deleted chunks
}

// Sweep deletes what no live manifest needs. Every object under
// manifestPrefixes (e.g. "snapshots/", "templates/") is a manifest: those
// keep(key) refuses are deleted once older than Grace (a manifest written
// after the caller built its keep set is not yet in it); the others are
// read, and the chunks they name are live. Then every chunk that is not
// live and is older than Grace is deleted: a chunk put by an upload still
// in flight is younger, and Upload renews an old chunk it reuses (see
// Upload), so neither is collected.
//
// A kept manifest that cannot be read leaves its chunks unknown, so Sweep
// then deletes no chunk and returns the error.
func (s *Store) Sweep(ctx context.Context, manifestPrefixes []string, keep func(key string) bool) (SweepStats, error) {
	var st SweepStats
	cutoff := s.Now().Add(-s.Grace)
	live := map[string]bool{}
	var unreadable error
	for _, prefix := range manifestPrefixes {
		if strings.HasPrefix(prefix, ChunkPrefix) || strings.HasPrefix(ChunkPrefix, prefix) {
			return st, fmt.Errorf("sweep: manifest prefix %q overlaps the chunks", prefix)
		}
		var dead []string
		err := s.Remote.List(ctx, prefix, func(info objstore.Info) error {
			st.Manifests++
			if !keep(info.Key) {
				if info.LastModified.Before(cutoff) {
					dead = append(dead, info.Key)
				}
				return nil
			}
			m, err := s.ReadManifest(ctx, info.Key)
			if err != nil {
				var ce *CorruptError
				if !errors.As(err, &ce) {
					return err
				}
				s.Log.ErrorContext(ctx, "sweep: a kept manifest cannot be read; no chunk will be deleted", "key", info.Key, "err", err)
				unreadable = errors.Join(unreadable, err)
				return nil
			}
			for _, f := range m.Files {
				for _, c := range f.Chunks {
					live[c.SHA256] = true
				}
			}
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("sweep %s: %w", prefix, err)
		}
		for _, key := range dead {
			if err := s.Remote.Delete(ctx, key); err != nil {
				return st, fmt.Errorf("sweep: %w", err)
			}
			st.ManifestsDeleted++
		}
	}
	if unreadable != nil {
		return st, fmt.Errorf("sweep: chunks kept: %w", unreadable)
	}

	var dead []objstore.Info
	err := s.Remote.List(ctx, ChunkPrefix, func(info objstore.Info) error {
		st.Chunks++
		sha := info.Key[strings.LastIndexByte(info.Key, '/')+1:]
		if !live[sha] && info.LastModified.Before(cutoff) {
			dead = append(dead, info)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("sweep chunks: %w", err)
	}
	for _, info := range dead {
		if err := s.Remote.Delete(ctx, info.Key); err != nil {
			return st, fmt.Errorf("sweep: %w", err)
		}
		st.ChunksDeleted++
		st.BytesDeleted += info.Size
	}
	if st.ManifestsDeleted+st.ChunksDeleted > 0 {
		s.Log.InfoContext(ctx, "swept the object store", "manifests_deleted", st.ManifestsDeleted,
			"chunks_deleted", st.ChunksDeleted, "bytes_deleted", st.BytesDeleted, "manifests", st.Manifests, "chunks", st.Chunks)
	}
	return st, nil
}
