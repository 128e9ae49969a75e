package template

import (
	"archive/tar"
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/memstore"
	"nullspace.dev/nullspace/internal/objstore/s3"
	"nullspace.dev/nullspace/internal/objstore/s3test"
)

// openRemote opens a store in a new directory on remote, closed at the
// test's end.
func openRemote(t *testing.T, remote objstore.Remote) *Store {
	t.Helper()
	cs := chunks.New(remote, testLogger(t))
	s := openStoreWith(t, Options{Remote: cs, UploadBackoff: 10 * time.Millisecond, SourceDirs: []string{os.TempDir()}})
	return s
}

func uploaded(t *testing.T, s *Store, name string) bool {
	t.Helper()
	m, err := s.readMeta(filepath.Join(s.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return m.Uploaded
}

func waitUploaded(t *testing.T, s *Store, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !uploaded(t, s, name) {
		if time.Now().After(deadline) {
			t.Fatalf("template %s not uploaded after 20 s", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRootfsByDigestLocal(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	src := sourceRootfs(t)
	a := buildFromDir(t, s, "a", src)
	tests := []struct {
		name, template, digest string
		wantDir, wantCode      string
	}{
		{"by name", "a", a.Digest, "a", ""},
		{"another template with that digest", "gone", a.Digest, "a", ""},
		{"unknown digest", "a", "sha256:" + strings.Repeat("0", 64), "", errdefs.CodeSnapshotIncompatible},
		{"unknown template", "gone", "sha256:" + strings.Repeat("1", 64), "", errdefs.CodeSnapshotIncompatible},
		{"malformed digest", "a", "sha256:abc", "", errdefs.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := s.RootfsByDigest(ctx, tt.template, tt.digest)
			if tt.wantCode != "" {
				if errCode(err) != tt.wantCode {
					t.Fatalf("got %q, %v; want %s", dir, err, tt.wantCode)
				}
				if tt.wantCode == errdefs.CodeSnapshotIncompatible {
					msg := errdefs.Classify(err).Message
					if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(msg, tt.digest) ||
						!strings.Contains(msg, tt.template) || !strings.Contains(msg, "no object store") {
						t.Errorf("message %q (class %v): want the template, the digest and the missing object store", msg, err)
					}
				}
				return
			}
			if err != nil || dir != filepath.Join(s.dir, tt.wantDir, rootfsName) {
				t.Errorf("got %q, %v; want the rootfs of %s", dir, err, tt.wantDir)
			}
		})
	}
}

// TestFetch: a template uploaded by one store is fetched by another in a
// new directory, once, with the same digest; concurrent fetches agree.
func TestFetch(t *testing.T) {
	remote := memstore.New()
	a := openRemote(t, remote)
	ctx := t.Context()
	tmpl := buildFromDir(t, a, "x", digestTree(t))
	waitUploaded(t, a, "x")
	if keys := remote.Keys(ManifestPrefix); len(keys) != 1 || keys[0] != ManifestKey(tmpl.Digest) {
		t.Fatalf("manifests %q, want %s", keys, ManifestKey(tmpl.Digest))
	}
	if leftovers, _ := filepath.Glob(filepath.Join(a.dir, trashPrefix+"*")); len(leftovers) != 0 {
		t.Errorf("upload left %q", leftovers)
	}

	b := openRemote(t, remote)
	dir, err := b.RootfsByDigest(ctx, "x", tmpl.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(b.dir, byDigestDir, digestHex(tmpl.Digest), rootfsName); dir != want {
		t.Errorf("fetched into %s, want %s", dir, want)
	}
	if got := mustDigest(t, dir); got != tmpl.Digest {
		t.Errorf("fetched digest %s, want %s", got, tmpl.Digest)
	}
	gets := remote.Count(memstore.OpGet)
	if again, err := b.RootfsByDigest(ctx, "x", tmpl.Digest); err != nil || again != dir {
		t.Errorf("second lookup: %q, %v; want %s", again, err, dir)
	}
	if n := remote.Count(memstore.OpGet); n != gets {
		t.Errorf("second lookup fetched again (%d gets)", n-gets)
	}
	if ds, err := b.Digests(ctx); err != nil || len(ds) != 1 || ds[0] != tmpl.Digest {
		t.Errorf("Digests = %q, %v; want [%s]", ds, err, tmpl.Digest)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(b.dir, trashPrefix+"*")); len(leftovers) != 0 {
		t.Errorf("fetch left %q", leftovers)
	}

	c := openRemote(t, remote)
	var wg sync.WaitGroup
	dirs := make([]string, 4)
	errs := make([]error, 4)
	for i := range dirs {
		wg.Go(func() { dirs[i], errs[i] = c.RootfsByDigest(ctx, "x", tmpl.Digest) })
	}
	wg.Wait()
	for i := range dirs {
		if errs[i] != nil || dirs[i] != dirs[0] {
			t.Errorf("concurrent fetch %d: %q, %v; want %s", i, dirs[i], errs[i], dirs[0])
		}
	}
}

func TestFetchFails(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(t *testing.T, remote *memstore.Store, digest string)
		wantCode string
	}{
		{"bit flip in a chunk", func(t *testing.T, remote *memstore.Store, digest string) {
			keys := remote.Keys(chunks.ChunkPrefix)
			// Every byte of the second half: one flipped bit may land where
			// zstd ignores it (the frame header), which is no damage.
			flip := func(b []byte) []byte {
				for i := len(b) / 2; i < len(b); i++ {
					b[i] ^= 0xff
				}
				return b
			}
			if err := remote.Mutate(keys[len(keys)/2], flip); err != nil {
				t.Fatal(err)
			}
		}, errdefs.CodeSnapshotCorrupt},
		{"chunk missing", func(t *testing.T, remote *memstore.Store, digest string) {
			for _, k := range remote.Keys(chunks.ChunkPrefix) {
				remote.Delete(t.Context(), k)
			}
		}, errdefs.CodeSnapshotCorrupt},
		{"other files under the digest", func(t *testing.T, remote *memstore.Store, digest string) {
			// A well-formed upload of another tree, under this digest's key.
			other := digestTree(t)
			write(t, filepath.Join(other, "extra"), "not in the template")
			tmp := t.TempDir()
			f, err := os.Create(filepath.Join(tmp, tarName))
			if err != nil {
				t.Fatal(err)
			}
			bw := bufio.NewWriter(f)
			if _, err := scanTree(t.Context(), other, tar.NewWriter(bw)); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			f.Close()
			if _, _, err := chunks.New(remote, nil).Upload(t.Context(), ManifestKey(digest), tmp, []string{tarName}, nil); err != nil {
				t.Fatal(err)
			}
		}, errdefs.CodeSnapshotCorrupt},
		{"manifest missing", func(t *testing.T, remote *memstore.Store, digest string) {
			remote.Delete(t.Context(), ManifestKey(digest))
		}, errdefs.CodeSnapshotIncompatible},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			remote := memstore.New()
			a := openRemote(t, remote)
			tmpl := buildFromDir(t, a, "x", digestTree(t))
			waitUploaded(t, a, "x")
			tt.damage(t, remote, tmpl.Digest)

			b := openRemote(t, remote)
			dir, err := b.RootfsByDigest(t.Context(), "x", tmpl.Digest)
			if errCode(err) != tt.wantCode {
				t.Fatalf("got %q, %v; want %s", dir, err, tt.wantCode)
			}
			if entries, _ := os.ReadDir(filepath.Join(b.dir, byDigestDir)); len(entries) != 0 {
				t.Errorf("a failed fetch left %d copies", len(entries))
			}
			if leftovers, _ := filepath.Glob(filepath.Join(b.dir, trashPrefix+"*")); len(leftovers) != 0 {
				t.Errorf("a failed fetch left %q", leftovers)
			}
		})
	}
}

// TestUploadRetried: uploads failing with 500s are retried until they
// succeed, and templates built without a remote are uploaded by the next
// Open that has one.
func TestUploadRetried(t *testing.T) {
	remote := memstore.New()
	remote.Inject(memstore.Fault{Op: memstore.OpPut, Times: 5})
	s := openRemote(t, remote)
	tmpl := buildFromDir(t, s, "x", digestTree(t))
	waitUploaded(t, s, "x")
	if puts := remote.Count(memstore.OpPut); puts <= 5 {
		t.Errorf("%d puts, want more than the 5 that failed", puts)
	}
	if _, err := remote.Stat(t.Context(), ManifestKey(tmpl.Digest)); err != nil {
		t.Errorf("manifest: %v", err)
	}

	local := openStore(t)
	buildFromDir(t, local, "y", sourceRootfs(t))
	if uploaded(t, local, "y") {
		t.Fatal("uploaded without a remote")
	}
	local.Close()
	reopened, err := Open(local.dir, testLogger(t), Options{CacheDir: t.TempDir(), Remote: chunks.New(remote, nil),
		UploadBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reopened.Close() })
	waitUploaded(t, reopened, "y")
	if n := len(remote.Keys(ManifestPrefix)); n != 2 {
		t.Errorf("%d manifests, want 2", n)
	}
}

// TestVersitygw: the round trip against a real S3 server.
func TestVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	r, err := s3.Open(t.Context(), srv.Loc, srv.Creds, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	a := openRemote(t, r)
	tmpl := buildFromDir(t, a, "x", digestTree(t))
	waitUploaded(t, a, "x")
	b := openRemote(t, r)
	dir, err := b.RootfsByDigest(t.Context(), "x", tmpl.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, dir); got != tmpl.Digest {
		t.Errorf("fetched digest %s, want %s", got, tmpl.Digest)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "data/b")); err != nil || string(b) != "hello" {
		t.Errorf("data/b = %q, %v", b, err)
	}
}

// TestUploadNow: Upload puts a template in the object store at once
// (a snapshot on it waits for it), is a no-op when it is there, and is
// refused for a digest the template no longer has.
func TestUploadNow(t *testing.T) {
	remote := memstore.New()
	// The background queue never succeeds: only Upload can put it.
	remote.Inject(memstore.Fault{Op: memstore.OpPut, Times: 3})
	s := openRemote(t, remote)
	ctx := t.Context()
	tmpl := buildFromDir(t, s, "x", digestTree(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Upload(ctx, "x", tmpl.Digest)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload: %v", err)
		}
	}
	if _, err := remote.Stat(ctx, ManifestKey(tmpl.Digest)); err != nil {
		t.Fatalf("manifest after Upload: %v", err)
	}
	if err := s.Upload(ctx, "x", tmpl.Digest); err != nil {
		t.Fatalf("a second Upload: %v", err)
	}
	if err := s.Upload(ctx, "x", "sha256:"+strings.Repeat("1", 64)); err == nil {
		t.Fatal("Upload of a digest the template does not have succeeded")
	}
}
