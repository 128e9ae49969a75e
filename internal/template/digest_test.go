package template

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// digestTree makes a small tree with every kind of entry the digest
// describes.
func digestTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "etc/os-release"), "ID=test\n")
	write(t, filepath.Join(dir, "bin/tool"), "#!/bin/sh\necho hi\n")
	if err := syscall.Chmod(filepath.Join(dir, "bin/tool"), 0o4755); err != nil { // os.Chmod wants os.ModeSetuid
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "data/a"), "hello")
	if err := os.Link(filepath.Join(dir, "data/a"), filepath.Join(dir, "data/b")); err != nil {
		t.Fatal(err)
	}
	symlink(t, "a", filepath.Join(dir, "data/link"))
	mkdir(t, dir, "empty")
	if err := syscall.Mkfifo(filepath.Join(dir, "data/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mustDigest(t *testing.T, dir string) string {
	t.Helper()
	sc, err := scanTree(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ValidateDigest(sc.digest) != nil {
		t.Fatalf("digest %q is malformed", sc.digest)
	}
	return sc.digest
}

func TestDigest(t *testing.T) {
	base := mustDigest(t, digestTree(t))
	tests := []struct {
		name   string
		change func(t *testing.T, dir string)
		same   bool
	}{
		{"identical tree built again", func(t *testing.T, dir string) {}, true},
		{"mtimes and atimes", func(t *testing.T, dir string) {
			old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
			for _, p := range []string{"etc/os-release", "data/a", "etc", "."} {
				if err := os.Chtimes(filepath.Join(dir, p), old, old); err != nil {
					t.Fatal(err)
				}
			}
		}, true},
		{"content", func(t *testing.T, dir string) { write(t, filepath.Join(dir, "etc/os-release"), "ID=tesT\n") }, false},
		{"content of a hard link", func(t *testing.T, dir string) { write(t, filepath.Join(dir, "data/b"), "hellO") }, false},
		{"mode", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "bin/tool"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"mode of the root", func(t *testing.T, dir string) {
			if err := os.Chmod(dir, 0o711); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"owner", func(t *testing.T, dir string) {
			if err := os.Lchown(filepath.Join(dir, "etc/os-release"), 1000, 0); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"group of a symlink", func(t *testing.T, dir string) {
			if err := os.Lchown(filepath.Join(dir, "data/link"), 0, 1000); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"symlink target", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "data/link"))
			symlink(t, "b", filepath.Join(dir, "data/link"))
		}, false},
		{"hard link made a copy", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "data/b"))
			write(t, filepath.Join(dir, "data/b"), "hello")
		}, false},
		{"empty file added", func(t *testing.T, dir string) { write(t, filepath.Join(dir, "empty/x"), "") }, false},
		{"file renamed", func(t *testing.T, dir string) {
			if err := os.Rename(filepath.Join(dir, "etc/os-release"), filepath.Join(dir, "etc/os-releasf")); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"socket added (left out)", func(t *testing.T, dir string) {
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: filepath.Join(dir, "data/sock")}); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to make trees owned by root")
			}
			dir := digestTree(t)
			tt.change(t, dir)
			got := mustDigest(t, dir)
			if (got == base) != tt.same {
				t.Errorf("digest %s, base %s: want equal %v", got, base, tt.same)
			}
		})
	}
}

// TestDigestDevices checks device numbers are in the digest.
func TestDigestDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	mk := func(minor int) string {
		dir := t.TempDir()
		if err := syscall.Mknod(filepath.Join(dir, "null"), syscall.S_IFCHR|0o666, int(mkdev(1, uint32(minor)))); err != nil {
			t.Fatal(err)
		}
		return mustDigest(t, dir)
	}
	if a, b := mk(3), mk(5); a == b {
		t.Errorf("devices 1:3 and 1:5 have the same digest %s", a)
	}
}

func mkdev(major, minor uint32) uint64 {
	return uint64(minor&0xff) | uint64(major&0xfff)<<8 | uint64(minor&^0xff)<<12 | uint64(major&^0xfff)<<32
}

func buildFromDir(t *testing.T, s *Store, name, dir string) api.Template {
	t.Helper()
	got, err := s.Build(t.Context(), "team", api.BuildTemplateRequest{Name: name, FromDir: dir}, nil)
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	return got
}

// TestTemplateDigest: a build records the digest of what it committed,
// equal for identical trees built separately, kept across Open, new after
// a rebuild under the same name.
func TestTemplateDigest(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	src := sourceRootfs(t)
	a := buildFromDir(t, s, "a", src)
	b := buildFromDir(t, s, "b", src)
	rootfs, _ := s.RootfsDir("a")
	if a.Digest == "" || a.Digest != b.Digest || a.Digest != mustDigest(t, rootfs) {
		t.Errorf("digests %q and %q, want equal and that of a's rootfs, %s", a.Digest, b.Digest, mustDigest(t, rootfs))
	}
	if got, _ := s.Get(ctx, "a"); got.Digest != a.Digest {
		t.Errorf("Get digest %q, want %q", got.Digest, a.Digest)
	}

	s2, err := Open(s.dir, testLogger(t), s.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	if got, err := s2.Digest(ctx, "a"); err != nil || got != a.Digest {
		t.Errorf("after Open: Digest = %q, %v; want %q", got, err, a.Digest)
	}

	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(src, "etc/os-release"), "ID=other\n")
	if rebuilt := buildFromDir(t, s, "a", src); rebuilt.Digest == a.Digest || rebuilt.Digest == "" {
		t.Errorf("rebuilt digest %q, want new (old %s)", rebuilt.Digest, a.Digest)
	}
}

// stripDigest makes name look made by an older binary.
func stripDigest(t *testing.T, s *Store, name string) {
	t.Helper()
	p := filepath.Join(s.dir, name, metaFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "digest")
	if err := writeJSON(p, m); err != nil {
		t.Fatal(err)
	}
}

// TestDigestBackfill: a template without a digest gets it from Open's
// background pass, or from Digest on first use; never one computed on a
// template that was replaced meanwhile.
func TestDigestBackfill(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	src := sourceRootfs(t)
	want := buildFromDir(t, s, "old", src).Digest
	stripDigest(t, s, "old")
	buildFromDir(t, s, "lazy", src)
	stripDigest(t, s, "lazy")
	if got, _ := s.Get(ctx, "lazy"); got.Digest != "" {
		t.Fatalf("digest %q after strip", got.Digest)
	}
	if got, err := s.Digest(ctx, "lazy"); err != nil || got != want {
		t.Errorf("Digest(lazy) = %q, %v; want %q", got, err, want)
	}
	if got, _ := s.Get(ctx, "lazy"); got.Digest != want {
		t.Errorf("Digest(lazy) did not record it: %q", got.Digest)
	}

	// Open computes it in the background.
	s2, err := Open(s.dir, testLogger(t), s.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := s.Get(ctx, "old")
		if got.Digest == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open did not compute the digest: %q, want %q", got.Digest, want)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A digest worked out for a template that was then deleted and rebuilt
	// under its name is not recorded on the new one.
	m, err := s.get("old")
	if err != nil {
		t.Fatal(err)
	}
	oldID, err := s.identity("old", m)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(src, "new-file"), "x")
	buildFromDir(t, s, "old", src)
	stripDigest(t, s, "old")
	if _, err := s.backfillDigest(ctx, "old", oldID); !errors.Is(err, errReplaced) {
		t.Errorf("backfill of a replaced template: %v, want errReplaced", err)
	}
	if got, _ := s.Get(ctx, "old"); got.Digest != "" {
		t.Errorf("the replaced template's digest %q was recorded on the new one", got.Digest)
	}
	rootfs, _ := s.RootfsDir("old")
	if got, err := s.Digest(ctx, "old"); err != nil || got != mustDigest(t, rootfs) || got == want {
		t.Errorf("Digest(old) = %q, %v; want that of the new tree, %s", got, err, mustDigest(t, rootfs))
	}
}
