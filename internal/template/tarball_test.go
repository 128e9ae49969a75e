package template

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestSourceDirs checks that host paths are template sources only inside the
// directories the operator allows, also once symlinks are resolved.
func TestSourceDirs(t *testing.T) {
	ctx := t.Context()
	allowed, outside := t.TempDir(), t.TempDir()
	rootfs := sourceRootfs(t)
	tarball := filepath.Join(allowed, "rootfs.tar")
	if err := os.WriteFile(tarball, tarOf(t, false, regular("bin/sh", "#!fake\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret.tar")
	if err := os.WriteFile(secret, tarOf(t, false, regular("secret", "0600 root file\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rootfs, filepath.Join(allowed, "rootfs")); err != nil {
		t.Fatal(err)
	}
	symlink(t, secret, filepath.Join(allowed, "escape.tar"))
	symlink(t, outside, filepath.Join(allowed, "outside"))
	symlink(t, "rootfs", filepath.Join(allowed, "inside"))
	// The allowed directory named through a symlink of its own.
	viaLink := filepath.Join(t.TempDir(), "sources")
	symlink(t, allowed, viaLink)

	s, err := Open(t.TempDir(), testLogger(t), Options{CacheDir: t.TempDir(), SourceDirs: []string{viaLink}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  api.BuildTemplateRequest
		code string // "" for a ready template
	}{
		{"dir inside", api.BuildTemplateRequest{FromDir: filepath.Join(allowed, "rootfs")}, ""},
		{"dir inside by the allowed name", api.BuildTemplateRequest{FromDir: filepath.Join(viaLink, "rootfs")}, ""},
		{"dir through an inner symlink", api.BuildTemplateRequest{FromDir: filepath.Join(allowed, "inside")}, ""},
		{"tarball inside", api.BuildTemplateRequest{FromTarball: tarball}, ""},
		{"dir elsewhere", api.BuildTemplateRequest{FromDir: "/etc"}, errdefs.CodePermissionDenied},
		{"tarball elsewhere", api.BuildTemplateRequest{FromTarball: secret}, errdefs.CodePermissionDenied},
		{"dotdot out", api.BuildTemplateRequest{FromTarball: filepath.Join(allowed, "..", filepath.Base(outside), "secret.tar")}, errdefs.CodePermissionDenied},
		{"symlinked file out", api.BuildTemplateRequest{FromTarball: filepath.Join(allowed, "escape.tar")}, errdefs.CodePermissionDenied},
		{"symlinked dir out", api.BuildTemplateRequest{FromTarball: filepath.Join(allowed, "outside", "secret.tar")}, errdefs.CodePermissionDenied},
		{"missing inside", api.BuildTemplateRequest{FromDir: filepath.Join(allowed, "nope")}, errdefs.CodeFileNotFound},
		// Outside: refused without a look, so the answer says nothing of what exists.
		{"missing elsewhere", api.BuildTemplateRequest{FromDir: "/nonexistent/rootfs"}, errdefs.CodePermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Name = "t-" + strings.ReplaceAll(tc.name, " ", "-")
			got, err := s.Build(ctx, "team", tc.req, nil)
			if tc.code == "" {
				if err != nil || got.State != api.TemplateReady {
					t.Fatalf("Build = %+v, %v; want ready", got, err)
				}
				return
			}
			if errCode(err) != tc.code || got.Name != "" {
				t.Fatalf("Build = %+v, %v (code %q); want code %s and no template", got, err, errCode(err), tc.code)
			}
			p := errdefs.Classify(err)
			if tc.code == errdefs.CodePermissionDenied &&
				(p.Status != 403 || !strings.Contains(p.SuggestedAction, "--template-source-dir")) {
				t.Errorf("refusal = %+v, want 403 naming --template-source-dir", p)
			}
			if strings.Contains(p.Message, "0600") {
				t.Errorf("refusal %q shows the file", p.Message)
			}
		})
	}

	// None allowed (the default): every host path is refused.
	none := openStoreWith(t, Options{})
	_, err = none.Build(ctx, "team", api.BuildTemplateRequest{Name: "x", FromTarball: tarball}, nil)
	if p := errdefs.Classify(err); p.Status != 403 || !strings.Contains(p.Message, "takes templates from none") {
		t.Errorf("Build with no source dirs = %+v, want 403 saying none are allowed", p)
	}
	if _, err := Open(t.TempDir(), testLogger(t), Options{SourceDirs: []string{"relative"}}); err == nil {
		t.Error("Open with a relative source dir succeeded")
	}
	if _, err := Open(t.TempDir(), testLogger(t), Options{SourceDirs: []string{tarball}}); err == nil {
		t.Error("Open with a file as source dir succeeded")
	}
}

// TestBuildUpload builds templates from streamed tarballs and refuses
// entries that would land outside the root filesystem, and device nodes.
func TestBuildUpload(t *testing.T) {
	ctx := t.Context()
	s := openStoreWith(t, Options{MaxUnpackedBytes: 1 << 20})
	outside := t.TempDir()
	good := []entry{dir("etc"), regular("etc/os-release", "ID=up\n"), symlinkEntry("etc/mtab", "/proc/self/mounts"),
		regular("bin/sh", "#!fake\n"), hardlink("bin/ash", "bin/sh"), symlinkEntry("lib", "usr/lib"),
		regular("abs-link-is-fine", ""), symlinkEntry("etc/alternatives", "/etc")}
	for _, gz := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "gzip"}[gz]
		got, err := s.BuildUpload(ctx, "team", api.BuildTemplateRequest{Name: name, Workdir: "/w"}, bytes.NewReader(tarOf(t, gz, good...)), nil)
		if err != nil || got.State != api.TemplateReady || got.Source != "upload" || got.Workdir != "/w" {
			t.Fatalf("BuildUpload(%s) = %+v, %v; want ready from upload", name, got, err)
		}
		rootfs, _ := s.RootfsDir(name)
		if b, err := os.ReadFile(filepath.Join(rootfs, "etc/os-release")); string(b) != "ID=up\n" {
			t.Errorf("etc/os-release = %q, %v", b, err)
		}
		a, _ := os.Stat(filepath.Join(rootfs, "bin/sh"))
		b, _ := os.Stat(filepath.Join(rootfs, "bin/ash"))
		if a == nil || b == nil || !os.SameFile(a, b) {
			t.Error("bin/ash is not a hard link of bin/sh")
		}
		if target, err := os.Readlink(filepath.Join(rootfs, "etc/alternatives")); target != "/etc" {
			t.Errorf("etc/alternatives -> %q, %v; want /etc (resolved in the machine)", target, err)
		}
		checkPrepared(t, rootfs)
	}

	for _, tc := range []struct {
		name    string
		entries []entry
		want    string // in the failed template's error
	}{
		{"absolute name", []entry{regular("/etc/cron.d/x", "pwned")}, "absolute"},
		{"dotdot name", []entry{regular("etc/../../x", "pwned")}, `".."`},
		{"through a symlink", []entry{symlinkEntry("out", outside), regular("out/pwned", "pwned")}, "symbolic link"},
		{"through a replaced symlink", []entry{symlinkEntry("out", outside), dir("out"), regular("out/pwned", "x")}, "symbolic link"},
		{"hard link out", []entry{hardlink("passwd", "../../../etc/passwd")}, `".."`},
		{"hard link absolute", []entry{hardlink("passwd", "/etc/passwd")}, "absolute"},
		{"hard link through a symlink", []entry{symlinkEntry("etc", "/etc"), hardlink("shadow", "etc/shadow")}, "symbolic link"},
		{"char device", []entry{{hdr: tar.Header{Name: "sda", Typeflag: tar.TypeChar, Devmajor: 8, Mode: 0o600}}}, "device node"},
		{"block device", []entry{{hdr: tar.Header{Name: "dev/mem", Typeflag: tar.TypeBlock, Devmajor: 1, Devminor: 1}}}, "device node"},
		{"empty", nil, "no entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			got, err := s.BuildUpload(ctx, "team", api.BuildTemplateRequest{Name: name}, bytes.NewReader(tarOf(t, true, tc.entries...)), nil)
			if errCode(err) != errdefs.CodeInvalidArgument || got.State != api.TemplateFailed || !strings.Contains(got.Error, tc.want) {
				t.Errorf("BuildUpload = %+v, %v; want a failed template saying %q", got, err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(outside, "pwned")); err == nil {
				t.Fatal("the tarball wrote outside the root filesystem")
			}
			if _, err := s.RootfsDir(name); err == nil {
				t.Error("a refused tarball left a ready template")
			}
		})
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("%s holds %d entries, want none", outside, len(entries))
	}

	// Over the unpacked bound: 413, nothing left.
	bomb := tarOf(t, true, regular("big", strings.Repeat("0", 2<<20)))
	got, err := s.BuildUpload(ctx, "team", api.BuildTemplateRequest{Name: "bomb"}, bytes.NewReader(bomb), nil)
	if p := errdefs.Classify(err); p.Status != 413 || p.Code != errdefs.CodeFileTooLarge || got.Name != "" {
		t.Errorf("BuildUpload of a bomb = %+v, %+v; want 413 file_too_large and no template", got, p)
	}
	// The upload breaks off: its error, nothing left.
	cut := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(tarOf(t, false, good...)[:1024]), errReader{cut})
	if got, err := s.BuildUpload(ctx, "team", api.BuildTemplateRequest{Name: "cut"}, r, nil); !errors.Is(err, cut) || got.Name != "" {
		t.Errorf("BuildUpload cut short = %+v, %v; want %v and no template", got, err, cut)
	}
	for _, name := range []string{"bomb", "cut"} {
		if _, err := s.Get(ctx, name); errCode(err) != errdefs.CodeTemplateNotFound {
			t.Errorf("Get(%s) = %v, want template_not_found", name, err)
		}
	}
	assertNoStaging(t, s)
	// An upload is the one source.
	if _, err := s.BuildUpload(ctx, "team", api.BuildTemplateRequest{Name: "two", FromTemplate: "plain"}, bytes.NewReader(nil), nil); errCode(err) != errdefs.CodeInvalidArgument {
		t.Errorf("BuildUpload with from_template = %v, want invalid_argument", err)
	}
}

func TestDeleteBuiltin(t *testing.T) {
	s := openStore(t)
	for _, name := range []string{Minimal, Base} {
		// A built-in that is not there (here) is still not deletable.
		err := s.Delete(t.Context(), name)
		if p := errdefs.Classify(err); p.Status != 403 || p.Code != errdefs.CodePermissionDenied || p.SuggestedAction == "" {
			t.Errorf("Delete(%s) = %+v, want 403 permission_denied", name, p)
		}
	}
	if err := s.EnsureBuiltin(t.Context(), Minimal); err != nil {
		t.Skipf("no minimal template here: %v", err)
	}
	if p := errdefs.Classify(s.CheckDelete(t.Context(), Minimal)); p.Status != 403 {
		t.Errorf("CheckDelete(minimal) = %+v, want 403", p)
	}
	if err := s.CheckDelete(t.Context(), "nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("CheckDelete(nope) = %v, want template_not_found", err)
	}
}

func openStoreWith(t *testing.T, opts Options) *Store {
	t.Helper()
	opts.CacheDir = t.TempDir()
	s, err := Open(t.TempDir(), testLogger(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

type entry struct {
	hdr  tar.Header
	body string
}

func regular(name, body string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))}, body}
}
func dir(name string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func symlinkEntry(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}
func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o644}}
}

// tarOf writes entries as a tarball, gzip-compressed if gz.
func tarOf(t *testing.T, gz bool, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}
