package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), testLogger(t), Options{CacheDir: t.TempDir(), SourceDirs: []string{os.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func errCode(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func needBusybox(t *testing.T) {
	t.Helper()
	if err := checkStatic(DefaultBusyboxPath); err != nil {
		t.Skipf("no static busybox: %v", err)
	}
}

// checkPrepared checks what Prepare guarantees.
func checkPrepared(t *testing.T, rootfs string) {
	t.Helper()
	for _, d := range []string{".nullspace", "tmp", "proc", "sys", "dev", "etc"} {
		if fi, err := os.Lstat(filepath.Join(rootfs, d)); err != nil || !fi.IsDir() {
			t.Errorf("/%s is not a directory: %v", d, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(rootfs, "tmp")); err == nil && fi.Mode()&fs.ModeSticky == 0 {
		t.Errorf("/tmp mode %v, want sticky", fi.Mode())
	}
	for _, f := range machineFiles {
		if fi, err := os.Lstat(filepath.Join(rootfs, f)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("/%s is not a regular file: %v", f, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"base", true},
		{"a", true},
		{"0", true},
		{"my-template_1.2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Base", false},
		{"-x", false},
		{".x", false},
		{"_x", false},
		{"a/b", false},
		{"..", false},
		{"a b", false},
		{"é", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateName(%q) = %v, want invalid argument", tc.name, err)
		}
	}
}

func TestMinimal(t *testing.T) {
	needBusybox(t)
	var progress []string
	s, err := Open(t.TempDir(), testLogger(t), Options{CacheDir: t.TempDir(),
		Progress: func(l string) { progress = append(progress, l) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.EnsureBuiltin(ctx, Minimal); err != nil {
		t.Fatalf("EnsureBuiltin(minimal): %v", err)
	}
	if len(progress) == 0 {
		t.Error("no progress line")
	}
	tmpl, err := s.Get(ctx, Minimal)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.State != api.TemplateReady || tmpl.Workdir != "/workspace" || tmpl.Source != "builtin:minimal" ||
		tmpl.SizeBytes < 1<<20 || tmpl.Env["PATH"] == "" || tmpl.CreatedAt.IsZero() {
		t.Errorf("got %+v, want a ready minimal template", tmpl)
	}
	rootfs, err := s.RootfsDir(Minimal)
	if err != nil {
		t.Fatal(err)
	}
	checkPrepared(t, rootfs)
	for _, p := range []string{"workspace", "root", "home/user", "var/tmp", "etc/passwd", "etc/group", "bin/busybox"} {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); err != nil {
			t.Errorf("minimal lacks /%s: %v", p, err)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	for _, want := range []string{"root:x:0:0:", "user:x:1000:1000:user:/home/user:", "nobody:x:65534:"} {
		if !strings.Contains(string(passwd), want) {
			t.Errorf("/etc/passwd lacks %q:\n%s", want, passwd)
		}
	}
	for _, link := range []string{"bin/sh", "bin/ls", "usr/bin/env", "sbin/ip"} {
		target, err := os.Readlink(filepath.Join(rootfs, link))
		if err != nil {
			t.Errorf("/%s: %v", link, err)
			continue
		}
		if got, _ := filepath.Abs(filepath.Join(rootfs, filepath.Dir(link), target)); got != filepath.Join(rootfs, "bin/busybox") {
			t.Errorf("/%s -> %s, want a link to /bin/busybox", link, target)
		}
	}
	out, err := exec.CommandContext(ctx, filepath.Join(rootfs, "bin/busybox"), "echo", "ok").Output()
	if err != nil || string(out) != "ok\n" {
		t.Errorf("busybox echo ok: %q, %v", out, err)
	}
	out, err = exec.CommandContext(ctx, filepath.Join(rootfs, "bin/sh"), "-c", "echo $((6*7))").Output()
	if err != nil || string(out) != "42\n" {
		t.Errorf("sh -c: %q, %v", out, err)
	}
	if os.Geteuid() == 0 {
		fi, _ := os.Stat(filepath.Join(rootfs, "workspace"))
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != userID {
			t.Errorf("/workspace owned by %d, want %d", st.Uid, userID)
		}
	}

	// Idempotent: a ready template is left alone.
	if err := s.EnsureBuiltin(ctx, Minimal); err != nil {
		t.Fatal(err)
	}
	again, _ := s.Get(ctx, Minimal)
	if !again.CreatedAt.Equal(tmpl.CreatedAt) {
		t.Errorf("second EnsureBuiltin rebuilt minimal: created %v, then %v", tmpl.CreatedAt, again.CreatedAt)
	}
	if err := s.EnsureBuiltin(ctx, "nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("EnsureBuiltin(nope) = %v, want template_not_found", err)
	}
}

func TestMinimalFails(t *testing.T) {
	for _, tc := range []struct{ name, busybox, want string }{
		{"missing busybox", "/nonexistent/busybox", "no usable busybox"},
		{"dynamic busybox", "/bin/ls", "dynamically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir(), testLogger(t), Options{BusyboxPath: tc.busybox})
			if err != nil {
				t.Fatal(err)
			}
			err = s.EnsureBuiltin(t.Context(), Minimal)
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("EnsureBuiltin = %v, want failed precondition saying %q", err, tc.want)
			}
			assertEmpty(t, s) // a failed built-in leaves nothing
		})
	}
}

// TestStaleBuiltin: a built-in template made by an older recipe is kept by
// EnsureBuiltin, reported by StaleBuiltin, and deleted by DeleteStale, after
// which EnsureBuiltin makes it with this binary's recipe; a current one is
// not deleted.
func TestStaleBuiltin(t *testing.T) {
	needBusybox(t)
	s := openStore(t)
	ctx := t.Context()
	if err := s.EnsureBuiltin(ctx, Minimal); err != nil {
		t.Fatal(err)
	}
	current, _ := builtinSpec(Minimal)
	if recipe, stale, err := s.StaleBuiltin(Minimal); err != nil || stale || recipe != current.recipe {
		t.Fatalf("StaleBuiltin(fresh minimal) = %q, %v, %v; want %q, false", recipe, stale, err, current.recipe)
	}
	if err := s.DeleteStale(ctx, Minimal); errCode(err) != errdefs.CodePermissionDenied {
		t.Errorf("DeleteStale(current minimal) = %v, want permission_denied", err)
	}

	// Make it look built by an older recipe.
	file := filepath.Join(s.dir, Minimal, metaFile)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["recipe"] != current.recipe {
		t.Fatalf("%s holds recipe %v, want %q", file, m["recipe"], current.recipe)
	}
	m["recipe"] = "minimal-r0"
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureBuiltin(ctx, Minimal); err != nil {
		t.Fatal(err)
	}
	if recipe, stale, err := s.StaleBuiltin(Minimal); err != nil || !stale || recipe != "minimal-r0" {
		t.Fatalf("StaleBuiltin(old minimal) = %q, %v, %v; want minimal-r0, true", recipe, stale, err)
	}
	if err := s.DeleteStale(ctx, Minimal); err != nil {
		t.Fatalf("DeleteStale(old minimal): %v", err)
	}
	if _, err := s.Get(ctx, Minimal); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get after DeleteStale = %v, want not found", err)
	}
	if err := s.EnsureBuiltin(ctx, Minimal); err != nil {
		t.Fatal(err)
	}
	if recipe, stale, err := s.StaleBuiltin(Minimal); err != nil || stale || recipe != current.recipe {
		t.Errorf("StaleBuiltin(rebuilt minimal) = %q, %v, %v; want %q, false", recipe, stale, err, current.recipe)
	}
	if _, _, err := s.StaleBuiltin("nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("StaleBuiltin(nope) = %v, want template_not_found", err)
	}
}

// TestPrepareBuiltin: preparing base is nothing when this recipe's tarball
// is cached, and when it is not and cannot be built (no mirror here; or not
// root) an error that leaves nothing behind in the store or the cache.
func TestPrepareBuiltin(t *testing.T) {
	cache := t.TempDir()
	s, err := Open(t.TempDir(), testLogger(t), Options{CacheDir: cache, DebianMirror: "http://127.0.0.1:9/debian"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.PrepareBuiltin(ctx, Minimal); err != nil {
		t.Errorf("PrepareBuiltin(minimal) = %v, want nil", err)
	}
	if err := s.PrepareBuiltin(ctx, "nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("PrepareBuiltin(nope) = %v, want template_not_found", err)
	}
	cached := filepath.Join(cache, "templates", baseRecipe+cacheExt)
	err = s.PrepareBuiltin(ctx, Base)
	if err == nil {
		t.Fatal("PrepareBuiltin(base) with an unreachable mirror = nil, want an error")
	}
	t.Logf("PrepareBuiltin(base) without a mirror: %v", err)
	assertEmpty(t, s)
	if _, err := os.Stat(cached); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cache after a failed prepare: %v, want no %s", err, cached)
	}
	if err := os.WriteFile(cached, []byte("stands for a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.PrepareBuiltin(ctx, Base); err != nil {
		t.Errorf("PrepareBuiltin(base) with this recipe cached = %v, want nil", err)
	}
	if b, _ := os.ReadFile(cached); string(b) != "stands for a tarball" {
		t.Errorf("cached tarball rewritten: %q", b)
	}
	assertEmpty(t, s)
}

// TestBaseRecipe: the base recipe's name, which keys its cache, changes with
// its package set (whatever the order) and with its revision.
func TestBaseRecipe(t *testing.T) {
	if want := recipeName("base-bookworm", baseRevision, basePackages); baseRecipe != want {
		t.Errorf("baseRecipe = %q, want %q", baseRecipe, want)
	}
	reversed := slices.Clone(basePackages)
	slices.Reverse(reversed)
	if got := recipeName("base-bookworm", baseRevision, reversed); got != baseRecipe {
		t.Errorf("reordered packages give %q, want %q", got, baseRecipe)
	}
	for _, other := range []string{
		recipeName("base-bookworm", baseRevision, append(slices.Clone(basePackages), "vim")),
		recipeName("base-bookworm", baseRevision, basePackages[1:]),
		recipeName("base-bookworm", baseRevision+1, basePackages),
	} {
		if other == baseRecipe || !strings.HasPrefix(other, "base-bookworm-r") {
			t.Errorf("changed recipe named %q, want a base-bookworm-r... name other than %q", other, baseRecipe)
		}
	}
}

func TestEnsureBuiltinConcurrent(t *testing.T) {
	needBusybox(t)
	s := openStore(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = s.EnsureBuiltin(t.Context(), Minimal) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("EnsureBuiltin #%d: %v", i, err)
		}
	}
	list, err := s.List(t.Context())
	if err != nil || len(list) != 1 || list[0].State != api.TemplateReady {
		t.Errorf("List = %+v, %v; want one ready template", list, err)
	}
}

func TestPrepare(t *testing.T) {
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, rootfs string)
		wantErr bool
	}{
		{"empty rootfs", func(t *testing.T, rootfs string) {}, false},
		{"absolute resolv.conf symlink", func(t *testing.T, rootfs string) {
			mkdir(t, rootfs, "etc")
			symlink(t, "/etc/resolv.conf", filepath.Join(rootfs, "etc/resolv.conf"))
		}, false},
		{"relative dangling symlinks", func(t *testing.T, rootfs string) {
			mkdir(t, rootfs, "etc")
			symlink(t, "../run/systemd/resolve/stub-resolv.conf", filepath.Join(rootfs, "etc/resolv.conf"))
			symlink(t, "../nowhere", filepath.Join(rootfs, "etc/hosts"))
		}, false},
		{"existing files kept", func(t *testing.T, rootfs string) {
			mkdir(t, rootfs, "etc")
			write(t, filepath.Join(rootfs, "etc/hosts"), "127.0.0.1 x\n")
		}, false},
		{"files where directories go", func(t *testing.T, rootfs string) {
			write(t, filepath.Join(rootfs, ".nullspace"), "x")
			symlink(t, "/tmp", filepath.Join(rootfs, "tmp"))
		}, false},
		{"etc escapes the rootfs", func(t *testing.T, rootfs string) {
			symlink(t, "/etc", filepath.Join(rootfs, "etc"))
		}, true},
		{"hosts is a directory", func(t *testing.T, rootfs string) {
			mkdir(t, rootfs, "etc/hosts")
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rootfs := t.TempDir()
			tc.setup(t, rootfs)
			err := Prepare(rootfs)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Prepare = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr {
				checkPrepared(t, rootfs)
				if err := Prepare(rootfs); err != nil {
					t.Errorf("second Prepare: %v", err)
				}
			}
		})
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); string(b) != string(hostResolv) {
		t.Fatal("Prepare changed the host's /etc/resolv.conf")
	}
	rootfs := t.TempDir()
	mkdir(t, rootfs, "etc")
	write(t, filepath.Join(rootfs, "etc/hosts"), "127.0.0.1 x\n")
	if err := Prepare(rootfs); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/hosts")); string(b) != "127.0.0.1 x\n" {
		t.Errorf("Prepare changed a regular /etc/hosts to %q", b)
	}
}

func mkdir(t *testing.T, root, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// sourceRootfs makes a small root filesystem with a symlink and a hard link.
func sourceRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "bin/sh"), "#!fake\n")
	if err := os.Chmod(filepath.Join(dir, "bin/sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "etc/os-release"), "ID=test\n")
	symlink(t, "../run/resolv.conf", filepath.Join(dir, "etc/resolv.conf"))
	write(t, filepath.Join(dir, "data/a"), "hello")
	if err := os.Link(filepath.Join(dir, "data/a"), filepath.Join(dir, "data/b")); err != nil {
		t.Fatal(err)
	}
	symlink(t, "a", filepath.Join(dir, "data/link"))
	return dir
}

// fakeRunner records RunSteps calls and changes the rootfs like a step would.
type fakeRunner struct {
	mu    sync.Mutex
	calls []runCall
	fail  error         // returned after recording, if set
	block chan struct{} // waited on, if set
}

type runCall struct {
	rootfs, workdir string
	env             map[string]string
	steps           []string
}

func (f *fakeRunner) RunSteps(ctx context.Context, rootfs, workdir string, env map[string]string, steps []string) error {
	f.mu.Lock()
	f.calls = append(f.calls, runCall{rootfs, workdir, env, steps})
	f.mu.Unlock()
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "step-output"), []byte(strings.Join(steps, ";")), 0o644); err != nil {
		return err
	}
	return f.fail
}

var _ StepRunner = (*fakeRunner)(nil)

func TestBuild(t *testing.T) {
	src := sourceRootfs(t)
	tarDir := t.TempDir()
	tarballs := map[string][]string{
		"x.tar":    {"-cf"},
		"x.tar.gz": {"-czf"},
		"x.tgz":    {"-czf"},
	}
	if _, err := exec.LookPath("zstd"); err == nil {
		tarballs["x.tar.zst"] = []string{"--zstd", "-cf"}
	}
	for name, flags := range tarballs {
		args := append(append([]string{}, flags...), filepath.Join(tarDir, name), "-C", src, ".")
		if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
			t.Fatalf("tar %v: %v: %s", args, err, out)
		}
	}

	type tc struct {
		req        api.BuildTemplateRequest
		wantSource string
	}
	cases := []tc{
		{api.BuildTemplateRequest{Name: "from-dir", FromDir: src, Steps: []string{"echo one", "echo two"},
			Workdir: "/work", Env: map[string]string{"A": "1"}}, "dir:" + src},
		{api.BuildTemplateRequest{Name: "from-dir-nosteps", FromDir: src + "/"}, "dir:" + src},
	}
	for name := range tarballs {
		p := filepath.Join(tarDir, name)
		cases = append(cases, tc{api.BuildTemplateRequest{Name: "tar-" + strings.ReplaceAll(name, ".", "-"),
			FromTarball: p, Steps: []string{"true"}}, "tarball:" + p})
	}
	s := openStore(t)
	ctx := t.Context()
	for _, c := range cases {
		t.Run(c.req.Name, func(t *testing.T) {
			runner := &fakeRunner{}
			got, err := s.Build(ctx, "team", c.req, runner)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			wantWorkdir := c.req.Workdir
			if wantWorkdir == "" {
				wantWorkdir = "/"
			}
			if got.Name != c.req.Name || got.State != api.TemplateReady || got.Source != c.wantSource ||
				got.Workdir != wantWorkdir || got.SizeBytes <= 0 || got.Env["A"] != c.req.Env["A"] {
				t.Errorf("got %+v, want ready, source %s, workdir %s", got, c.wantSource, wantWorkdir)
			}
			if fromGet, _ := s.Get(ctx, c.req.Name); fromGet.State != api.TemplateReady || fromGet.SizeBytes != got.SizeBytes {
				t.Errorf("Get = %+v, want %+v", fromGet, got)
			}
			rootfs, err := s.RootfsDir(c.req.Name)
			if err != nil {
				t.Fatal(err)
			}
			checkPrepared(t, rootfs)
			checkCopied(t, rootfs)
			if len(c.req.Steps) == 0 {
				if len(runner.calls) != 0 {
					t.Errorf("runner called %d times, want 0", len(runner.calls))
				}
				return
			}
			if len(runner.calls) != 1 {
				t.Fatalf("runner called %d times, want 1", len(runner.calls))
			}
			call := runner.calls[0]
			if !strings.HasPrefix(call.rootfs, s.dir+"/"+buildPrefix) || call.workdir != wantWorkdir ||
				strings.Join(call.steps, ";") != strings.Join(c.req.Steps, ";") || call.env["A"] != c.req.Env["A"] {
				t.Errorf("RunSteps got %+v, want the staging rootfs, workdir %s, steps %q", call, wantWorkdir, c.req.Steps)
			}
			if b, err := os.ReadFile(filepath.Join(rootfs, "step-output")); err != nil || string(b) != strings.Join(c.req.Steps, ";") {
				t.Errorf("the steps' change is not in the template: %q, %v", b, err)
			}
			if fi, err := os.Stat(filepath.Join(rootfs, wantWorkdir)); err != nil || !fi.IsDir() {
				t.Errorf("workdir %s missing: %v", wantWorkdir, err)
			}
		})
	}

	// From a template: inherits workdir and env, the source stays unchanged.
	runner := &fakeRunner{}
	got, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "child", FromTemplate: "from-dir",
		Env: map[string]string{"B": "2"}, Steps: []string{"echo child"}}, runner)
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != "template:from-dir" || got.Workdir != "/work" || got.Env["A"] != "1" || got.Env["B"] != "2" {
		t.Errorf("child = %+v, want workdir /work and env A=1 B=2 from its source", got)
	}
	parent, _ := s.RootfsDir("from-dir")
	if b, _ := os.ReadFile(filepath.Join(parent, "step-output")); string(b) != "echo one;echo two" {
		t.Errorf("building a child changed its source template: step-output %q", b)
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(cases)+1 {
		t.Errorf("List has %d templates, want %d", len(list), len(cases)+1)
	}
	for i := 1; i < len(list); i++ {
		if list[i-1].Name >= list[i].Name {
			t.Errorf("List not sorted: %s before %s", list[i-1].Name, list[i].Name)
		}
	}
	assertNoStaging(t, s)
}

func checkCopied(t *testing.T, rootfs string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc/os-release")); err != nil || string(b) != "ID=test\n" {
		t.Errorf("etc/os-release = %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "data/link")); err != nil || target != "a" {
		t.Errorf("data/link -> %q, %v; want a", target, err)
	}
	a, errA := os.Stat(filepath.Join(rootfs, "data/a"))
	b, errB := os.Stat(filepath.Join(rootfs, "data/b"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("data/a and data/b are not one hard-linked file: %v %v", errA, errB)
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "bin/sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/sh mode not kept: %v", err)
	}
}

func assertNoStaging(t *testing.T, s *Store) {
	t.Helper()
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), buildPrefix) || strings.HasPrefix(e.Name(), trashPrefix) {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestBuildStepFails(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	runner := &fakeRunner{fail: &StepError{Index: 1, Step: "make", ExitCode: 2,
		Output: strings.Repeat("noise\n", 2000) + "make: *** no rule to make target"}}
	got, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "bad", FromDir: sourceRootfs(t),
		Steps: []string{"true", "make"}}, runner)
	if err == nil {
		t.Fatal("Build succeeded, want the step's failure")
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) || errCode(err) != errdefs.CodeInvalidArgument {
		t.Errorf("error %v: want invalid_argument", err)
	}
	pub := errdefs.Classify(err)
	if !strings.Contains(pub.Message, "no rule to make target") || !strings.Contains(pub.Message, "step 2 (make)") ||
		len(pub.Message) > 4<<10 {
		t.Errorf("public message %q (%d bytes) should name the step and end with its output's tail", pub.Message, len(pub.Message))
	}
	if got.State != api.TemplateFailed || got.Error == "" || got.Name != "bad" {
		t.Errorf("got %+v, want the failed template", got)
	}
	if fromGet, err := s.Get(ctx, "bad"); err != nil || fromGet.State != api.TemplateFailed || fromGet.Error != got.Error {
		t.Errorf("Get = %+v, %v; want the failed template", fromGet, err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "bad", rootfsName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed build kept its rootfs: %v", err)
	}
	if _, err := s.RootfsDir("bad"); errCode(err) != errdefs.CodeTemplateNotReady {
		t.Errorf("RootfsDir(failed) = %v, want template_not_ready", err)
	}
	assertNoStaging(t, s)
	if err := s.Delete(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, s)

	// A failure that is not the input's (here, a cancelled build) leaves nothing.
	cctx, cancel := context.WithCancel(ctx)
	runner = &fakeRunner{block: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := s.Build(cctx, "team", api.BuildTemplateRequest{Name: "cancelled", FromDir: sourceRootfs(t), Steps: []string{"sleep 1000"}}, runner)
		done <- err
	}()
	waitBuilding(t, s, "cancelled")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Build = %v, want context.Canceled", err)
	}
	assertEmpty(t, s)

	// An error of the runner itself leaves nothing either.
	_, err = s.Build(ctx, "team", api.BuildTemplateRequest{Name: "infra", FromDir: sourceRootfs(t), Steps: []string{"true"}},
		&fakeRunner{fail: errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted, "no room", "")})
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("Build with a full host = %v, want resource exhausted", err)
	}
	assertEmpty(t, s)
}

func assertEmpty(t *testing.T, s *Store) {
	t.Helper()
	list, err := s.List(t.Context())
	if err != nil || len(list) != 0 {
		t.Errorf("List = %+v, %v; want nothing", list, err)
	}
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.Name() != locksDir {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func waitBuilding(t *testing.T, s *Store, name string) {
	t.Helper()
	for range 1000 {
		if got, err := s.Get(t.Context(), name); err == nil && got.State == api.TemplateBuilding {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := s.Get(t.Context(), name)
	t.Fatalf("Get(%s) = %+v, %v; want building", name, got, err)
}

func TestBuildInProgress(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	runner := &fakeRunner{block: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "slow", FromDir: sourceRootfs(t), Steps: []string{"true"}}, runner)
		done <- err
	}()
	waitBuilding(t, s, "slow")

	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "slow" || list[0].State != api.TemplateBuilding {
		t.Errorf("List = %+v, %v; want slow building", list, err)
	}
	_, err = s.Build(ctx, "team", api.BuildTemplateRequest{Name: "slow", FromDir: sourceRootfs(t)}, nil)
	if errCode(err) != errdefs.CodeTemplateExists || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("concurrent Build = %v, want template_exists", err)
	}
	// Another process's view: a second store on the same directory.
	other, err := Open(s.dir, testLogger(t), Options{SourceDirs: []string{os.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := other.Get(ctx, "slow"); err != nil || got.State != api.TemplateBuilding {
		t.Errorf("other store: Get = %+v, %v; want building (and Open must not remove the build)", got, err)
	}
	if err := s.Delete(ctx, "slow"); errCode(err) != errdefs.CodeTemplateNotReady {
		t.Errorf("Delete(building) = %v, want template_not_ready", err)
	}
	if _, err := s.RootfsDir("slow"); errCode(err) != errdefs.CodeTemplateNotReady {
		t.Errorf("RootfsDir(building) = %v, want template_not_ready", err)
	}
	_, err = s.Build(ctx, "team", api.BuildTemplateRequest{Name: "x", FromTemplate: "slow"}, nil)
	if errCode(err) != errdefs.CodeTemplateNotReady {
		t.Errorf("Build from a building template = %v, want template_not_ready", err)
	}
	close(runner.block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, err := other.Get(ctx, "slow"); err != nil || got.State != api.TemplateReady {
		t.Errorf("Get = %+v, %v; want ready", got, err)
	}
}

func TestErrors(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	src := sourceRootfs(t)
	if _, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "exists", FromDir: src}, nil); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(src, "etc/os-release")
	storeLink := filepath.Join(t.TempDir(), "link")
	symlink(t, s.dir, storeLink)
	for _, tc := range []struct {
		name string
		req  api.BuildTemplateRequest
		code string
	}{
		{"bad name", api.BuildTemplateRequest{Name: "Bad!", FromDir: src}, errdefs.CodeInvalidArgument},
		{"reserved name", api.BuildTemplateRequest{Name: Base, FromDir: src}, errdefs.CodeInvalidArgument},
		{"no source", api.BuildTemplateRequest{Name: "x"}, errdefs.CodeInvalidArgument},
		{"two sources", api.BuildTemplateRequest{Name: "x", FromDir: src, FromTemplate: "exists"}, errdefs.CodeInvalidArgument},
		{"relative dir", api.BuildTemplateRequest{Name: "x", FromDir: "rootfs"}, errdefs.CodeInvalidArgument},
		{"missing dir", api.BuildTemplateRequest{Name: "x", FromDir: filepath.Join(src, "nonexistent")}, errdefs.CodeFileNotFound},
		{"dir is a file", api.BuildTemplateRequest{Name: "x", FromDir: file}, errdefs.CodeInvalidArgument},
		{"dir holds the store", api.BuildTemplateRequest{Name: "x", FromDir: filepath.Dir(s.dir)}, errdefs.CodeInvalidArgument},
		{"dir is the host", api.BuildTemplateRequest{Name: "x", FromDir: "/"}, errdefs.CodePermissionDenied},
		{"dir links to the store", api.BuildTemplateRequest{Name: "x", FromDir: storeLink}, errdefs.CodeInvalidArgument},
		{"missing tarball", api.BuildTemplateRequest{Name: "x", FromTarball: filepath.Join(src, "nonexistent.tar")}, errdefs.CodeFileNotFound},
		{"not a tarball", api.BuildTemplateRequest{Name: "x", FromTarball: file}, errdefs.CodeInvalidArgument},
		{"tarball is a dir", api.BuildTemplateRequest{Name: "x", FromTarball: src}, errdefs.CodeInvalidArgument},
		{"missing template", api.BuildTemplateRequest{Name: "x", FromTemplate: "nope"}, errdefs.CodeTemplateNotFound},
		{"exists", api.BuildTemplateRequest{Name: "exists", FromDir: src}, errdefs.CodeTemplateExists},
		{"relative workdir", api.BuildTemplateRequest{Name: "x", FromDir: src, Workdir: "work"}, errdefs.CodeInvalidArgument},
		{"bad env", api.BuildTemplateRequest{Name: "x", FromDir: src, Env: map[string]string{"A=B": "1"}}, errdefs.CodeInvalidArgument},
		{"empty step", api.BuildTemplateRequest{Name: "x", FromDir: src, Steps: []string{" "}}, errdefs.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Build(ctx, "team", tc.req, &fakeRunner{})
			if errCode(err) != tc.code {
				t.Errorf("Build = %v (code %q), want code %s", err, errCode(err), tc.code)
			}
			if got.Name != "" {
				t.Errorf("Build returned template %+v with a request error", got)
			}
		})
	}
	if _, err := s.Get(ctx, "nope"); errCode(err) != errdefs.CodeTemplateNotFound || !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get(nope) = %v, want template_not_found", err)
	}
	if _, err := s.Get(ctx, "../etc"); errCode(err) != errdefs.CodeInvalidArgument {
		t.Errorf("Get(../etc) = %v, want invalid_argument", err)
	}
	if err := s.Delete(ctx, "nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("Delete(nope) = %v, want template_not_found", err)
	}
	if _, err := s.RootfsDir("nope"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("RootfsDir(nope) = %v, want template_not_found", err)
	}

	// A tarball that does not extract is the input's fault: a failed template.
	bad := filepath.Join(t.TempDir(), "bad.tar.gz")
	write(t, bad, "not gzip")
	got, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "badtar", FromTarball: bad}, nil)
	if errCode(err) != errdefs.CodeInvalidArgument || got.State != api.TemplateFailed {
		t.Errorf("Build from a corrupt tarball = %+v, %v; want a failed template and invalid_argument", got, err)
	}
	// Steps need a shell; the message points at a wrapping directory.
	wrapped := t.TempDir()
	write(t, filepath.Join(wrapped, "rootfs/bin/sh"), "")
	_, err = s.Build(ctx, "team", api.BuildTemplateRequest{Name: "nosh", FromDir: wrapped, Steps: []string{"true"}}, &fakeRunner{})
	if msg := errdefs.Classify(err).Message; !strings.Contains(msg, "no /bin/sh") || !strings.Contains(msg, "under rootfs/") {
		t.Errorf("Build without /bin/sh: %q, want it to say so and point at rootfs/", msg)
	}
}

func TestDelete(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	src := sourceRootfs(t)
	for _, name := range []string{"one", "two"} {
		if _, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: name, FromDir: src}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "one"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("Get after Delete = %v, want template_not_found", err)
	}
	if list, _ := s.List(ctx); len(list) != 1 || list[0].Name != "two" {
		t.Errorf("List after Delete = %+v, want only two", list)
	}
	assertNoStaging(t, s)
	if _, err := s.Build(ctx, "team", api.BuildTemplateRequest{Name: "one", FromDir: src}, nil); err != nil {
		t.Errorf("rebuilding a deleted name: %v", err)
	}
	if _, err := os.Stat(src); err != nil {
		t.Errorf("Delete touched the source: %v", err)
	}
}

func TestOpenCleansUp(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, testLogger(t), Options{SourceDirs: []string{os.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(t.Context(), "team", api.BuildTemplateRequest{Name: "keep", FromDir: sourceRootfs(t)}, nil); err != nil {
		t.Fatal(err)
	}
	// What a crash leaves: a build nobody holds, and trash.
	mkdir(t, dir, buildPrefix+"crashed/rootfs/etc")
	write(t, filepath.Join(dir, buildPrefix+"crashed", metaFile), `{"name":"crashed","state":"building"}`)
	mkdir(t, dir, trashPrefix+"old-1234/rootfs/usr")
	if got, err := s.Get(t.Context(), "crashed"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Errorf("Get(crashed) = %+v, %v; a build without its lock holder is not building", got, err)
	}
	s2, err := Open(dir, testLogger(t), Options{SourceDirs: []string{os.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	assertNoStaging(t, s2)
	if list, err := s2.List(t.Context()); err != nil || len(list) != 1 || list[0].Name != "keep" {
		t.Errorf("List = %+v, %v; want keep only", list, err)
	}
	// A directory without metadata shows up as failed, and can be deleted.
	mkdir(t, dir, "stray/rootfs")
	if got, err := s2.Get(t.Context(), "stray"); err != nil || got.State != api.TemplateFailed || got.Error == "" {
		t.Errorf("Get(stray) = %+v, %v; want failed", got, err)
	}
	if err := s2.Delete(t.Context(), "stray"); err != nil {
		t.Error(err)
	}
}

func TestOutputTail(t *testing.T) {
	var lines []string
	o := &outputTail{max: 16, onLine: func(l string) { lines = append(lines, l) }}
	fmt.Fprint(o, "first\nsec")
	fmt.Fprint(o, "ond\nthird line that is long\nlast")
	o.flush()
	if got := strings.Join(lines, "|"); got != "first|second|third line that is long|last" {
		t.Errorf("lines %q", got)
	}
	if got := o.tail(); len(got) > 20 || !strings.HasSuffix(got, "last") {
		t.Errorf("tail %q, want the last bytes", got)
	}
	if got := lastBytes("a\nbb\nccc", 5); got != "...ccc" {
		t.Errorf("lastBytes = %q, want ...ccc", got)
	}
}

// TestOwnership: a template belongs to the team that built it; another
// team neither sees it nor builds from it (not found, not forbidden), and
// a template written before templates had owners is the first team's.
func TestOwnership(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	got, err := s.Build(ctx, "team_a", api.BuildTemplateRequest{Name: "mine", FromDir: sourceRootfs(t)}, nil)
	if err != nil || got.TeamID != "team_a" {
		t.Fatalf("build: %+v, %v; want team_a's", got, err)
	}
	if _, err := s.VisibleTo(ctx, "team_a", "mine"); err != nil {
		t.Fatalf("the owner's view: %v", err)
	}
	if _, err := s.VisibleTo(ctx, "team_b", "mine"); errCode(err) != errdefs.CodeTemplateNotFound {
		t.Fatalf("another team's view: %v, want template_not_found", err)
	}
	_, err = s.Build(ctx, "team_b", api.BuildTemplateRequest{Name: "theirs", FromTemplate: "mine"}, nil)
	if errCode(err) != errdefs.CodeTemplateNotFound {
		t.Fatalf("another team builds from it: %v, want template_not_found", err)
	}
	_, err = s.Build(ctx, "team_b", api.BuildTemplateRequest{Name: "mine", FromDir: sourceRootfs(t)}, nil)
	if errCode(err) != errdefs.CodeTemplateExists {
		t.Fatalf("another team takes the name: %v, want template_exists", err)
	}
	if !Visible(api.Template{Name: "base"}, "team_b") {
		t.Fatal("a built-in template is not visible to every team")
	}

	// An owner-less template.json (written by an older server).
	meta := filepath.Join(s.dir, "mine", metaFile)
	b, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	delete(fields, "team_id")
	if b, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(meta, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "mine"); err != nil || got.TeamID != LegacyTeam {
		t.Fatalf("an owner-less template: %+v, %v; want %s's", got, err, LegacyTeam)
	}
}

// TestScrubPaths: a failed build's public text names paths inside the
// template, never the server host's.
func TestScrubPaths(t *testing.T) {
	const store, rootfs = "/var/lib/nullspace/templates", "/var/lib/nullspace/templates/.build-x/rootfs"
	for _, tc := range []struct{ in, want string }{
		{"mkdir " + rootfs + "/work/a: not a directory", "mkdir /work/a: not a directory"},
		{"open " + rootfs + ": permission denied", "open /: permission denied"},
		{"lock " + store + "/.build-x.lock: busy", "lock <template store>/.build-x.lock: busy"},
		{"step 1 (ls /etc) exited with code 2", "step 1 (ls /etc) exited with code 2"},
	} {
		if got := scrubPaths(tc.in, rootfs, store); got != tc.want {
			t.Errorf("scrubPaths(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
