package template

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// TestBase builds the base template for real: with debootstrap (about 90 s)
// when the cache is cold, from the cache (seconds) when warm, then once more
// from the cache into a second store. It runs only with NULLSPACE_TEST_BASE=1,
// as root, with the cache in NULLSPACE_CACHE_DIR or the default.
func TestBase(t *testing.T) {
	if os.Getenv("NULLSPACE_TEST_BASE") != "1" {
		t.Skip("set NULLSPACE_TEST_BASE=1 to build the base template (debootstrap when the cache is cold)")
	}
	if os.Geteuid() != 0 {
		t.Skip("building base needs root")
	}
	cache := os.Getenv("NULLSPACE_CACHE_DIR")
	if cache == "" {
		cache = DefaultCacheDir
	}
	open := func() *Store {
		s, err := Open(t.TempDir(), testLogger(t), Options{CacheDir: cache, Progress: func(l string) { t.Log("progress:", l) }})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	for i, s := range []*Store{open(), open()} {
		start := time.Now()
		if err := s.EnsureBuiltin(t.Context(), Base); err != nil {
			t.Fatalf("EnsureBuiltin(base): %v", err)
		}
		t.Logf("store %d: base ready in %v", i, time.Since(start).Round(time.Millisecond))
		checkBase(t, s)
	}
	if _, err := os.Stat(filepath.Join(cache, "templates", baseRecipe+cacheExt)); err != nil {
		t.Errorf("cache not written: %v", err)
	}

	// A template built from base copies its rootfs.
	s := open()
	if err := s.EnsureBuiltin(t.Context(), Base); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	child, err := s.Build(t.Context(), api.BuildTemplateRequest{Name: "child", FromTemplate: Base}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template built from base (a copy, no steps) in %v", time.Since(start).Round(time.Millisecond))
	if child.State != api.TemplateReady || child.Workdir != Workspace || child.Env["LANG"] != "C.UTF-8" {
		t.Errorf("child = %+v, want ready with base's workdir and env", child)
	}
	rootfs, _ := s.RootfsDir("child")
	if _, err := os.Stat(filepath.Join(rootfs, "usr/bin/python3")); err != nil {
		t.Errorf("child lacks python3: %v", err)
	}
}

func checkBase(t *testing.T, s *Store) {
	t.Helper()
	tmpl, err := s.Get(t.Context(), Base)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.State != api.TemplateReady || tmpl.Workdir != Workspace || tmpl.Source != "builtin:base" ||
		tmpl.Env["PATH"] == "" || tmpl.SizeBytes < 100<<20 {
		t.Errorf("got %+v, want a ready base template of 100 MB or more", tmpl)
	}
	rootfs, err := s.RootfsDir(Base)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/bin/python3", "usr/bin/git", "usr/bin/curl", "bin/bash", "usr/bin/ps",
		"etc/ssl/certs/ca-certificates.crt", "home/user/.bashrc"} {
		if _, err := os.Stat(filepath.Join(rootfs, p)); err != nil {
			t.Errorf("base lacks /%s: %v", p, err)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if !strings.Contains(string(passwd), "\nuser:x:1000:1000:user:/home/user:/bin/bash\n") {
		t.Errorf("base /etc/passwd lacks the user account:\n%s", passwd)
	}
	for _, p := range []string{"workspace", "home/user"} {
		fi, err := os.Stat(filepath.Join(rootfs, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != userID || st.Gid != userID {
			t.Errorf("/%s owned by %d:%d, want 1000:1000", p, st.Uid, st.Gid)
		}
	}
	if lists, _ := filepath.Glob(filepath.Join(rootfs, "var/lib/apt/lists/*_Packages")); len(lists) > 0 {
		t.Errorf("apt lists not cleaned: %v", lists)
	}
	checkPrepared(t, rootfs)
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/resolv.conf")); len(b) != 0 {
		t.Errorf("base resolv.conf holds %q, want it empty (the host's must not leak)", b)
	}
	out, err := exec.CommandContext(t.Context(), "chroot", "--userspec=1000:1000", rootfs,
		"/usr/bin/python3", "-c", "import ssl, json; print('ok')").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("python3 in base: %v: %s", err, out)
	}
}
