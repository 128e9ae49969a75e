package snapshot

import (
	"os"
	"path/filepath"
	"testing"

	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/memstore"
)

// TestUploadListedFiles: an upload takes the files the record lists, so a
// snapshot whose files are gone (a directory being removed) makes no
// manifest, never one of fewer files; a complete one round-trips.
func TestUploadListedFiles(t *testing.T) {
	ctx := t.Context()
	remote := memstore.New()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.SetRemote(chunks.New(remote, nil))
	p, err := s.Begin("snp_a")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.Dir(), "checkpoint.img"), []byte("state"), 0o600); err != nil {
		t.Fatal(err)
	}
	files, _, err := p.Commit(map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upload(ctx, "snp_a", files); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("snp_a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Fetch(ctx, "snp_a"); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if err := s.Verify(ctx, "snp_a", files); err != nil {
		t.Fatalf("the fetched copy: %v", err)
	}
	// Its files gone: the upload fails and writes no manifest.
	if err := os.Remove(filepath.Join(s.Path("snp_a"), "checkpoint.img")); err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(ctx, manifestKey("snp_a")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upload(ctx, "snp_a", files); err == nil {
		t.Fatal("upload of a snapshot missing a listed file succeeded")
	}
	if _, err := remote.Stat(ctx, manifestKey("snp_a")); err == nil {
		t.Fatal("a manifest was written for an incomplete snapshot")
	}
}
