package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nullspace.dev/nullspace/internal/errdefs"
)

func writeImage(t *testing.T, dir string) {
	t.Helper()
	for name, content := range map[string]string{"checkpoint.img": "state", "pages.img": strings.Repeat("p", 10000), "pages_meta.img": "meta"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCommitVerify(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Begin("snp_1")
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, p.Dir())
	// Invisible until committed.
	if _, err := os.Stat(s.Path("snp_1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pending snapshot visible before commit: %v", err)
	}
	files, size, err := p.Commit(map[string]string{"kind": "test"})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 || size < 10000 {
		t.Fatalf("files %+v size %d", files, size)
	}
	var meta struct {
		Files []File          `json:"files"`
		Meta  json.RawMessage `json:"meta"`
	}
	b, _ := os.ReadFile(filepath.Join(s.Path("snp_1"), metaFile))
	if err := json.Unmarshal(b, &meta); err != nil || len(meta.Files) != 3 {
		t.Fatalf("meta.json = %s (%v)", b, err)
	}
	if err := s.Verify(context.Background(), "snp_1", files); err != nil {
		t.Fatalf("verify intact snapshot: %v", err)
	}

	for name, damage := range map[string]func(path string){
		"flipped byte": func(path string) {
			b, _ := os.ReadFile(path)
			b[5000] ^= 1
			os.WriteFile(path, b, 0o600)
		},
		"truncated": func(path string) { os.Truncate(path, 100) },
		"missing":   func(path string) { os.Remove(path) },
	} {
		t.Run(name, func(t *testing.T) {
			p, _ := s.Begin("snp_d")
			writeImage(t, p.Dir())
			files, _, err := p.Commit(nil)
			if err != nil {
				t.Fatal(err)
			}
			damage(filepath.Join(s.Path("snp_d"), "pages.img"))
			err = s.Verify(context.Background(), "snp_d", files)
			var e *errdefs.Error
			if !errors.As(err, &e) || e.Code != errdefs.CodeSnapshotCorrupt {
				t.Fatalf("verify damaged snapshot = %v, want snapshot_corrupt", err)
			}
			s.Delete("snp_d")
		})
	}
}

func TestAbortAndSweep(t *testing.T) {
	s, _ := Open(t.TempDir())
	p, _ := s.Begin("snp_a")
	writeImage(t, p.Dir())
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	p2, _ := s.Begin("snp_b")
	writeImage(t, p2.Dir()) // left behind, as after a crash
	p3, _ := s.Begin("snp_c")
	writeImage(t, p3.Dir())
	if _, _, err := p3.Commit(nil); err != nil {
		t.Fatal(err)
	}
	p4, _ := s.Begin("snp_orphan")
	p4.Commit(nil)
	removed, err := s.Sweep(map[string]bool{"snp_c": true})
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(s.dir)
	if len(entries) != 1 || entries[0].Name() != "snp_c" || len(removed) != 2 {
		t.Fatalf("after sweep: %v (removed %v), want only snp_c", entries, removed)
	}
}

func TestCheckHost(t *testing.T) {
	here := Host{RuntimeVersion: "v1", Platform: "systrap", Kernel: "6.1", CPUFeatures: []string{"avx", "avx2", "sse4_2"}}
	for _, tc := range []struct {
		name  string
		saved Host
		want  string // substring of the error, "" for compatible
	}{
		{"same", here, ""},
		{"fewer features", Host{RuntimeVersion: "v1", Platform: "systrap", Kernel: "5.10", CPUFeatures: []string{"avx"}}, ""},
		{"runsc", Host{RuntimeVersion: "v0", Platform: "systrap", CPUFeatures: here.CPUFeatures}, "runsc version"},
		{"platform", Host{RuntimeVersion: "v1", Platform: "kvm", CPUFeatures: here.CPUFeatures}, "platform"},
		{"cpu", Host{RuntimeVersion: "v1", Platform: "systrap", CPUFeatures: []string{"avx512f", "avx"}}, "lacks avx512f"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckHost("snp_x", tc.saved, here)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckHost = %v, want compatible", err)
				}
				return
			}
			var e *errdefs.Error
			if !errors.As(err, &e) || e.Code != errdefs.CodeSnapshotIncompatible || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("CheckHost = %v, want snapshot_incompatible naming %q", err, tc.want)
			}
		})
	}
}

func TestDetectHost(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "runsc")
	os.WriteFile(bin, []byte("binary"), 0o755)
	h, err := DetectHost(bin, "systrap")
	if err != nil || !strings.HasPrefix(h.RuntimeVersion, "sha256:") {
		t.Fatalf("without a version file: %+v %v", h, err)
	}
	os.WriteFile(bin+".version", []byte("v0.0.0-test\n"), 0o644)
	if h, _ = DetectHost(bin, "systrap"); h.RuntimeVersion != "v0.0.0-test" || h.Kernel == "" {
		t.Fatalf("with a version file: %+v", h)
	}
}
