package chunks_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/s3"
	"nullspace.dev/nullspace/internal/objstore/s3test"
)

// TestVersitygw runs the round trip, dedup, damage and sweep against a real
// S3 server (versitygw over a directory), under a prefix.
func TestVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	loc := srv.Loc
	loc.Prefix = "nodes/a/"
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	r, err := s3.Open(t.Context(), loc, srv.Creds, log)
	if err != nil {
		t.Fatal(err)
	}
	s := chunks.New(r, log)
	s.Chunker = chunks.Fixed(mib) // the chunk counts below are on a 1 MiB grid
	ctx := t.Context()

	files := map[string][]byte{"pages.img": random(30, 5*mib+123), "checkpoint.img": random(31, 300<<10), "pages_meta.img": make([]byte, 8192)}
	dir, names := writeDir(t, files)
	const key = "snapshots/s1/manifest.json"
	man, st, err := s.Upload(ctx, key, dir, names, []byte(`{"id":"s1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != 8 || st.ChunksUploaded != 8 {
		t.Errorf("first upload: got %+v, want 8 chunks uploaded", st)
	}
	if _, st, err = s.Upload(ctx, "snapshots/s2/manifest.json", dir, names, nil); err != nil || st.ChunksUploaded != 0 {
		t.Errorf("second upload: got %+v, %v; want no chunk uploaded", st, err)
	}

	got, err := s.ReadManifest(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "s1")
	if err := s.Download(ctx, got, out); err != nil {
		t.Fatal(err)
	}
	checkDir(t, out, files)

	// A bit flipped in a chunk's file behind the server's back.
	path := filepath.Join(srv.Root, loc.Bucket, loc.Prefix, chunks.ChunkKey(man.Files[0].Chunks[0].SHA256))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	checkCorrupt(t, s.Download(ctx, got, filepath.Join(t.TempDir(), "s1")))
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}

	// Sweep as if the grace period had passed: s2's manifest goes, every
	// chunk stays (s1 names them all); then with s1 gone too, all go.
	s.Now = func() time.Time { return time.Now().Add(2 * s.Grace) }
	sst, err := s.Sweep(ctx, []string{"snapshots/"}, func(k string) bool { return k == key })
	if err != nil {
		t.Fatal(err)
	}
	if sst.ManifestsDeleted != 1 || sst.ChunksDeleted != 0 || sst.Chunks != 8 {
		t.Errorf("sweep keeping s1: got %+v, want s2's manifest deleted and the 8 chunks kept", sst)
	}
	if err := s.Download(ctx, got, filepath.Join(t.TempDir(), "s1")); err != nil {
		t.Errorf("s1 after the sweep: %v", err)
	}
	sst, err = s.Sweep(ctx, []string{"snapshots/"}, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if sst.ManifestsDeleted != 1 || sst.ChunksDeleted != 8 {
		t.Errorf("sweep keeping nothing: got %+v, want everything deleted", sst)
	}
	var left []string
	r.List(ctx, "", func(i objstore.Info) error { left = append(left, i.Key); return nil })
	if len(left) != 0 {
		t.Errorf("left in the bucket: %v", left)
	}
}
