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

// TestBase builds the base template for real: with debootstrap (about 2 min)
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
	child, err := s.Build(t.Context(), "team", api.BuildTemplateRequest{Name: "child", FromTemplate: Base}, nil)
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
	for _, p := range []string{"usr/bin/python3", "usr/bin/python", "usr/bin/pip", "usr/bin/node",
		"usr/bin/sudo", "usr/bin/git", "usr/bin/curl", "usr/bin/wget", "usr/bin/jq", "usr/bin/unzip", "usr/bin/zip",
		"usr/bin/xz", "bin/bzip2", "usr/bin/less", "usr/bin/ssh", "bin/bash", "usr/bin/ps",
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
	// sudo reads only sudoers files of mode 0440 owned by root.
	fi, err := os.Stat(filepath.Join(rootfs, "etc/sudoers.d/user"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o440 || st.Uid != 0 {
		t.Errorf("/etc/sudoers.d/user has mode %v, owner %d; want 0440, root", fi.Mode().Perm(), st.Uid)
	}
	fi, err = os.Stat(filepath.Join(rootfs, "usr/bin/sudo"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode()&os.ModeSetuid == 0 || st.Uid != 0 {
		t.Errorf("/usr/bin/sudo has mode %v, owner %d; want setuid root", fi.Mode(), st.Uid)
	}

	// What code written for E2B's base runs, as the user. A package that
	// pip installs from a local directory (no index here) stands for
	// `pip install`, which Debian's marker of an apt-managed Python would
	// refuse (externally-managed-environment).
	pkg := filepath.Join(rootfs, "tmp", "nullspace-hello")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	setup := "from setuptools import setup\nsetup(name='nullspace-hello', version='1.0', py_modules=['nullspace_hello'])\n"
	if err := os.WriteFile(filepath.Join(pkg, "setup.py"), []byte(setup), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "nullspace_hello.py"), []byte("GREETING = 'hello'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(pkg)
	for _, p := range []string{pkg, filepath.Join(pkg, "setup.py"), filepath.Join(pkg, "nullspace_hello.py")} {
		if err := os.Chown(p, userID, userID); err != nil { // pip builds in it
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ cmd, want string }{
		{"python3 -c 'import ssl, json; print(\"ok\")'", "ok"},
		{"python --version", "Python 3.11"},
		{"sudo -n true && sudo -n whoami", "root"},
		{"sudo -n apt-get --version | head -1", "apt 2.6"},
		{"node -e 'console.log(6*7)'", "42"},
		{"cd /tmp/nullspace-hello && pip install --no-index --no-build-isolation -q . && cd / && " +
			"python -c 'import nullspace_hello; print(nullspace_hello.GREETING)'", "hello"},
		{"echo '{\"a\": [1, 2]}' | jq -c .a", "[1,2]"},
	} {
		cmd := exec.CommandContext(t.Context(), "chroot", "--userspec=1000:1000", rootfs, "/bin/bash", "-c", tc.cmd)
		cmd.Env = []string{"PATH=" + defaultPath, "HOME=" + userHome, "USER=" + userName, "LANG=C.UTF-8"}
		// Not stderr: in a chroot, sudo warns that it cannot resolve the
		// host's name, which a machine's /etc/hosts holds.
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), tc.want) {
			t.Errorf("in base as user, %s: %v: %q (stderr %q), want %q...", tc.cmd, err, out, stderr.String(), tc.want)
		}
	}
}
