package template

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Built-in template names.
const (
	Minimal = "minimal" // busybox only; builds in about a second
	Base    = "base"    // Debian bookworm with python3, curl, git; cached in CacheDir
)

// The unprivileged account of built-in templates.
const (
	userName = "user"
	userID   = 1000
	userHome = "/home/user"
)

// Workspace is the default working directory of the built-in templates,
// owned by the user account.
const Workspace = "/workspace"

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// The base recipe. Its name keys the cached tarball (and is recorded in each
// data dir's copy, see StaleBuiltin), so a changed recipe never reuses an old
// build: the suite and the package list are in the name (the list hashed),
// and baseRevision counts every other change, such as what customizeBase
// writes. Bump it when you make one.
const (
	baseRevision = 2
	baseSuite    = "bookworm"
)

// basePackages are what code written for E2B's base image (Debian with
// Python, Node.js and build tools) commonly calls, as far as Debian ships
// them: python and pip, node, sudo for the user account, and the usual
// fetch, archive and JSON tools. Left out, to keep the build short and the
// rootfs small: build-essential (gcc, make: +250 MB), and npm, which in
// Debian is 360 packages that bring node-gyp and so g++ (+450 MB, and beyond
// debootstrap's resolver); `sudo apt-get install npm` adds it in a machine
// allowed out. README.md ("Using E2B's SDKs") lists the differences.
var basePackages = []string{
	"python3", "python-is-python3", "python3-pip", "python3-venv", "nodejs",
	"sudo", "procps", "ca-certificates", "curl", "wget", "git", "bash", "less", "openssh-client",
	"unzip", "zip", "xz-utils", "bzip2", "jq",
}

var baseRecipe = recipeName("base-"+baseSuite, baseRevision, basePackages)

// recipeName is prefix-r<revision>-<digest of the package set>: a different
// set of packages, in any order, gives a different name.
func recipeName(prefix string, revision int, packages []string) string {
	sorted := slices.Sorted(slices.Values(packages))
	sum := sha256.Sum256([]byte(strings.Join(sorted, "\n")))
	return fmt.Sprintf("%s-r%d-%x", prefix, revision, sum[:4])
}

// Cache layout: <CacheDir>/templates/<recipe>.tar, an uncompressed tar of the
// rootfs with numeric owners and file capabilities, written to a temporary
// name and renamed; <recipe>.tar.lock serializes builders across processes.
// An uncompressed tar extracts faster than a compressed one here: extraction
// is bound by file creation, not by reading.
const cacheExt = ".tar"

var tarFlags = []string{"--numeric-owner", "--xattrs", "--xattrs-include=security.capability"}

type builtin struct {
	recipe  string
	workdir string
	env     map[string]string
	build   func(s *Store, ctx context.Context, rootfs string) error
}

func builtinSpec(name string) (builtin, bool) {
	switch name {
	case Minimal:
		return builtin{
			recipe:  "minimal-r1",
			workdir: Workspace,
			env:     map[string]string{"PATH": defaultPath},
			build:   (*Store).buildMinimal,
		}, true
	case Base:
		return builtin{
			recipe:  baseRecipe,
			workdir: Workspace,
			env: map[string]string{
				"PATH":             defaultPath,
				"LANG":             "C.UTF-8",
				"DEBIAN_FRONTEND":  "noninteractive",
				"PYTHONUNBUFFERED": "1",
			},
			build: (*Store).buildBase,
		}, true
	}
	return builtin{}, false
}

// IsBuiltin reports whether name is the name of a built-in template. Build
// refuses these names.
func IsBuiltin(name string) bool {
	_, ok := builtinSpec(name)
	return ok
}

// EnsureBuiltin makes the built-in template name (Minimal or Base) ready if
// it is not: a ready template is left alone, a build in progress (here or in
// another process) is waited for. Base comes from the cache in CacheDir when
// there, else it is built with debootstrap and cached.
func (s *Store) EnsureBuiltin(ctx context.Context, name string) error {
	b, ok := builtinSpec(name)
	if !ok {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound,
			fmt.Sprintf("no built-in template named %q", name), "use minimal or base")
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		m, err := s.get(name)
		switch {
		case err == nil && m.State == api.TemplateReady:
			return nil
		case err == nil && m.State == api.TemplateFailed:
			s.log.Warn("replacing failed built-in template", "template", name, "error", m.Error)
			if err := s.delete(ctx, name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				return fmt.Errorf("ensure built-in template %s: %w", name, err)
			}
			continue
		case err == nil: // building: wait below
		case errors.Is(err, errdefs.ErrNotFound):
			err := s.buildBuiltin(ctx, name, b)
			if err == nil {
				return nil
			}
			if !errors.Is(err, errInProgress) && !errors.Is(err, errdefs.ErrConflict) {
				return fmt.Errorf("ensure built-in template %s: %w", name, err)
			}
		default:
			return fmt.Errorf("ensure built-in template %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ensure built-in template %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// StaleBuiltin reports whether the built-in template name is ready but was
// made by an older recipe than this binary's (base before it had sudo, say),
// and names that recipe. EnsureBuiltin keeps such a template: machines and
// snapshots made from it need its root filesystem as it is. The server
// replaces it (PrepareBuiltin, DeleteStale, EnsureBuiltin) once nothing uses
// it.
func (s *Store) StaleBuiltin(name string) (recipe string, stale bool, err error) {
	b, ok := builtinSpec(name)
	if !ok {
		return "", false, errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound,
			fmt.Sprintf("no built-in template named %q", name), "use minimal or base")
	}
	m, err := s.get(name)
	if err != nil {
		return "", false, fmt.Errorf("built-in template %s: %w", name, err)
	}
	return m.Recipe, m.State == api.TemplateReady && m.Recipe != b.recipe, nil
}

// PrepareBuiltin readies what making the built-in template name needs, and
// leaves the store's copy alone: for base, the cached tarball of this
// binary's recipe, built with debootstrap when missing (in a directory of
// the store that Open removes if the build is interrupted). After it,
// DeleteStale and EnsureBuiltin replace a stale copy in seconds and without
// the network, so a host that cannot build the new recipe keeps the old one.
func (s *Store) PrepareBuiltin(ctx context.Context, name string) error {
	if _, ok := builtinSpec(name); !ok {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound,
			fmt.Sprintf("no built-in template named %q", name), "use minimal or base")
	}
	if name != Base { // minimal needs nothing but busybox
		return nil
	}
	if _, err := os.Stat(filepath.Join(s.opts.CacheDir, "templates", baseRecipe+cacheExt)); err == nil {
		return nil
	}
	dir, err := os.MkdirTemp(s.dir, trashPrefix+"prepare-"+name+"-")
	if err != nil {
		return fmt.Errorf("prepare built-in template %s: %w", name, err)
	}
	defer removeTree(dir)
	if err := s.buildBase(ctx, dir); err != nil {
		return fmt.Errorf("prepare built-in template %s: %w", name, err)
	}
	return nil
}

// DeleteStale deletes the built-in template name if StaleBuiltin says it is
// stale, and refuses otherwise. The caller makes sure no machine uses it.
func (s *Store) DeleteStale(ctx context.Context, name string) error {
	recipe, stale, err := s.StaleBuiltin(name)
	if err != nil {
		return err
	}
	if !stale {
		return fmt.Errorf("delete template %s: %w", name, errBuiltin(name))
	}
	s.log.Info("deleting built-in template made by an older recipe", "template", name, "recipe", recipe)
	return s.delete(ctx, name)
}

func (s *Store) buildBuiltin(ctx context.Context, name string, b builtin) error {
	m := meta{
		Template: api.Template{
			Name:      name,
			Workdir:   b.workdir,
			Env:       maps.Clone(b.env),
			CreatedAt: time.Now().UTC(),
			Source:    "builtin:" + name,
		},
		Recipe: b.recipe,
	}
	st, err := s.begin(m)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			st.abort()
		}
	}()
	start := time.Now()
	if err := b.build(s, ctx, st.rootfs()); err != nil {
		return err
	}
	if err := Prepare(st.rootfs()); err != nil {
		return err
	}
	sc, err := scanTree(ctx, st.rootfs(), nil)
	if err != nil {
		return fmt.Errorf("digest of template %s: %w", name, err)
	}
	m.SizeBytes, m.Digest = sc.size, sc.digest
	m.CreatedAt = time.Now().UTC()
	committed = true
	if err := st.commit(m); err != nil {
		return err
	}
	s.uploads.add(name)
	s.log.Info("built-in template ready", "template", name, "duration", time.Since(start).Round(time.Millisecond),
		"size_bytes", m.SizeBytes, "digest", m.Digest)
	return nil
}

// buildMinimal makes a busybox root filesystem, as `busybox --install` would,
// with relative applet links.
func (s *Store) buildMinimal(ctx context.Context, rootfs string) error {
	if err := checkStatic(s.opts.BusyboxPath); err != nil {
		return err
	}
	s.opts.Progress("building template minimal from busybox")
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, d := range []struct {
		name string
		mode fs.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"usr/local", 0o755}, {"usr/local/bin", 0o755}, {"etc", 0o755}, {"root", 0o700},
		{"home", 0o755}, {"home/user", 0o755}, {"workspace", 0o755}, {"tmp", fs.ModeSticky | 0o777},
		{"var", 0o755}, {"var/tmp", fs.ModeSticky | 0o777}, {"run", 0o755},
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {".nullspace", 0o755},
	} {
		if err := root.Mkdir(d.name, d.mode.Perm()); err != nil {
			return fmt.Errorf("build minimal: %w", err)
		}
		if err := root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("build minimal: %w", err)
		}
	}
	if err := copyIntoRoot(root, s.opts.BusyboxPath, "bin/busybox", 0o755); err != nil {
		return fmt.Errorf("build minimal: %w", err)
	}
	list, err := exec.CommandContext(ctx, filepath.Join(rootfs, "bin/busybox"), "--list-full").Output()
	if err != nil {
		return fmt.Errorf("build minimal: busybox --list-full: %w", err)
	}
	for _, l := range strings.Split(string(list), "\n") {
		l = path.Clean(strings.TrimSpace(l))
		if l == "." || l == "bin/busybox" || !strings.Contains(l, "/") || path.IsAbs(l) || strings.HasPrefix(l, "..") {
			continue // linuxrc, busybox itself, junk
		}
		rel, err := filepath.Rel(path.Dir(l), "bin/busybox")
		if err != nil {
			return err
		}
		if err := root.MkdirAll(path.Dir(l), 0o755); err != nil {
			return fmt.Errorf("build minimal: %w", err)
		}
		if err := root.Symlink(rel, l); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("build minimal: %w", err)
		}
	}
	files := []struct {
		name, data string
		mode       fs.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n" +
			"user:x:1000:1000:user:/home/user:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644},
		{"etc/group", "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n", 0o644},
		{"etc/shadow", "root:*:20000:0:99999:7:::\nuser:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n", 0o600},
		{"etc/hosts", defaultHosts, 0o644},
		{"etc/hostname", "nullspace\n", 0o644},
		{"etc/resolv.conf", "", 0o644},
		{"etc/shells", "/bin/sh\n/bin/ash\n", 0o644},
		{"etc/profile", "export PATH=" + defaultPath + "\n", 0o644},
	}
	for _, f := range files {
		if err := writeRootFile(root, f.name, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("build minimal: %w", err)
		}
	}
	for _, d := range []string{"home/user", "workspace"} {
		if err := lchown(root, d, userID, userID); err != nil {
			return fmt.Errorf("build minimal: %w", err)
		}
	}
	return nil
}

const defaultHosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// checkStatic fails unless path is a statically linked ELF executable, so the
// minimal template never gets a busybox that needs the host's libraries.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			fmt.Sprintf("no usable busybox at %s", p), "install busybox-static (apt-get install busybox-static)")
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
				fmt.Sprintf("busybox at %s is dynamically linked", p),
				"install busybox-static (apt-get install busybox-static)")
		}
	}
	return nil
}

// buildBase fills rootfs with the base template: from the cache when there,
// else by debootstrap, after which the cache is written for next time. The
// cache lock makes concurrent processes wait for one build.
func (s *Store) buildBase(ctx context.Context, rootfs string) error {
	cacheDir := filepath.Join(s.opts.CacheDir, "templates")
	cacheFile := filepath.Join(cacheDir, baseRecipe+cacheExt)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		s.log.Warn("template cache unavailable; building base without it", "dir", cacheDir, "err", err)
		return s.debootstrapBase(ctx, rootfs)
	}
	lock, err := lockWait(ctx, cacheFile+".lock", func() {
		s.opts.Progress("waiting for another process that builds template base")
	})
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("lock base template cache: %w", ctx.Err())
	case err != nil: // a read-only cache, say: still usable
		s.log.Warn("cannot lock the template cache; using it without the lock", "err", err)
	default:
		defer lock.Close()
	}

	if _, err := os.Stat(cacheFile); err == nil {
		s.opts.Progress("extracting cached base template (a few seconds)")
		start := time.Now()
		err := extractTar(ctx, cacheFile, rootfs)
		if err == nil {
			s.log.Info("base template extracted from cache", "file", cacheFile,
				"duration", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		s.log.Warn("cached base template unusable; building it again", "file", cacheFile, "err", err)
		if err := os.Remove(cacheFile); err != nil {
			return err
		}
		if err := emptyDir(rootfs); err != nil {
			return err
		}
	}

	if err := s.debootstrapBase(ctx, rootfs); err != nil {
		return err
	}
	s.opts.Progress("saving template base to " + cacheFile + " for next time")
	start := time.Now()
	if err := writeCache(ctx, rootfs, cacheFile); err != nil {
		if ctx.Err() != nil {
			return err
		}
		s.log.Warn("caching base template failed; next build will run debootstrap again", "err", err)
		return nil
	}
	s.log.Info("base template cached", "file", cacheFile, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// debootstrapBase installs Debian into rootfs and makes it the base template.
func (s *Store) debootstrapBase(ctx context.Context, rootfs string) error {
	bin, err := exec.LookPath("debootstrap")
	if err != nil {
		bin = "/usr/sbin/debootstrap"
		if _, serr := os.Stat(bin); serr != nil {
			return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
				"debootstrap is not installed; it builds template base",
				"install it (apt-get install debootstrap), or put a cached base in "+
					filepath.Join(s.opts.CacheDir, "templates", baseRecipe+cacheExt))
		}
	}
	if os.Geteuid() != 0 {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			"building template base with debootstrap needs root", "run the server as root")
	}
	s.opts.Progress("building template base with debootstrap (about 2 minutes, once)")
	start := time.Now()
	env := []string{"PATH=" + defaultPath, "LC_ALL=C", "HOME=/root", "DEBIAN_FRONTEND=noninteractive"}
	for _, k := range []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	c := command{
		name: bin,
		args: []string{"--variant=minbase", "--include=" + strings.Join(basePackages, ","),
			baseSuite, rootfs, s.opts.DebianMirror},
		env: env,
		// debootstrap mounts /proc, /sys and bind-mounts host devices into the
		// target; in a private namespace they vanish with it, even if killed.
		newMountNS: true,
		onLine: func(line string) {
			if stage, ok := debootstrapStage(line); ok {
				s.opts.Progress("debootstrap: " + stage)
			}
		},
	}
	if err := c.run(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("build template base: %w", err)
		}
		if b, rerr := os.ReadFile(filepath.Join(rootfs, "debootstrap", "debootstrap.log")); rerr == nil {
			err = fmt.Errorf("%w\ndebootstrap.log: %s", err, lastBytes(strings.TrimSpace(string(b)), 2<<10))
		}
		return errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeUnavailable,
			"building template base with debootstrap failed",
			"check that this host reaches "+s.opts.DebianMirror+" and retry; the server log has debootstrap's output")
	}
	s.log.Info("debootstrap finished", "duration", time.Since(start).Round(time.Millisecond))
	if err := s.customizeBase(rootfs); err != nil {
		return fmt.Errorf("build template base: %w", err)
	}
	return Prepare(rootfs)
}

// debootstrapStage picks debootstrap's few stage lines out of its chatter.
func debootstrapStage(line string) (string, bool) {
	l, ok := strings.CutPrefix(line, "I: ")
	if !ok {
		return "", false
	}
	if strings.HasSuffix(l, "packages...") || strings.HasSuffix(l, "system...") ||
		strings.HasPrefix(l, "Base system installed") {
		return l, true
	}
	return "", false
}

// customizeBase adds the user account (a sudoer) and /workspace, lets pip
// install, makes the per-machine files neutral, points apt at updates and
// security, and drops apt's caches.
func (s *Store) customizeBase(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	// debootstrap copies the host's hosts, hostname and resolv.conf; machines
	// get their own, bind-mounted.
	for _, f := range []struct{ name, data string }{
		{"etc/hosts", defaultHosts}, {"etc/hostname", "nullspace\n"}, {"etc/resolv.conf", ""},
	} {
		if err := writeRootFile(root, f.name, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	days := time.Now().Unix() / 86400
	for _, l := range []struct{ file, line string }{
		{"etc/passwd", fmt.Sprintf("%s:x:%d:%d:%s:%s:/bin/bash", userName, userID, userID, userName, userHome)},
		{"etc/group", fmt.Sprintf("%s:x:%d:", userName, userID)},
		{"etc/shadow", fmt.Sprintf("%s:*:%d:0:99999:7:::", userName, days)},
		{"etc/gshadow", userName + ":!::"},
	} {
		if err := appendEntry(root, l.file, l.line); err != nil {
			return err
		}
	}
	home := strings.TrimPrefix(userHome, "/")
	if err := root.MkdirAll(home, 0o755); err != nil {
		return err
	}
	if err := copySkel(root, home); err != nil {
		return err
	}
	ws := strings.TrimPrefix(Workspace, "/")
	if err := root.MkdirAll(ws, 0o755); err != nil {
		return err
	}
	for _, d := range []string{home, ws} {
		if err := lchown(root, d, userID, userID); err != nil {
			return err
		}
	}
	// As in E2B's base, the user may do anything as root with sudo, without a
	// password: code written for it installs packages with `sudo apt-get`.
	// sudo skips a sudoers.d file that root does not own or that others may
	// write; 0440 is what visudo makes.
	sudoers := userName + " ALL=(ALL:ALL) NOPASSWD: ALL\n"
	if err := writeRootFile(root, "etc/sudoers.d/"+userName, []byte(sudoers), 0o440); err != nil {
		return err
	}
	if err := root.Chmod("etc/sudoers.d/"+userName, 0o440); err != nil {
		return err
	}
	// Debian marks its Python as managed by apt (PEP 668), so a plain
	// `pip install` fails with externally-managed-environment, which code
	// written for E2B's base (Python from python.org) never meets. Debian's
	// pip installs into /usr/local or ~/.local, never over apt's files.
	pipConf := "[global]\nbreak-system-packages = true\n"
	if err := writeRootFile(root, "etc/pip.conf", []byte(pipConf), 0o644); err != nil {
		return err
	}
	sources := fmt.Sprintf("deb %[1]s %[2]s main\ndeb %[1]s %[2]s-updates main\n"+
		"deb http://deb.debian.org/debian-security %[2]s-security main\n", s.opts.DebianMirror, baseSuite)
	if err := writeRootFile(root, "etc/apt/sources.list", []byte(sources), 0o644); err != nil {
		return err
	}
	// Like Debian's container images: package lists and .debs are fetched again
	// by apt-get update when needed.
	for _, c := range []struct {
		dir  string
		keep func(name string, dir bool) bool
	}{
		{"var/cache/apt/archives", func(n string, dir bool) bool { return dir || !strings.HasSuffix(n, ".deb") }},
		{"var/cache/apt", func(n string, dir bool) bool { return dir || !strings.HasSuffix(n, ".bin") }},
		{"var/lib/apt/lists", func(n string, dir bool) bool { return dir }},
		{"var/cache/debconf", func(n string, dir bool) bool { return dir || !strings.HasSuffix(n, "-old") }},
		{"var/lib/dpkg", func(n string, dir bool) bool { return dir || !strings.HasSuffix(n, "-old") }},
	} {
		if err := removeEntries(root, c.dir, c.keep); err != nil {
			return err
		}
	}
	return nil
}

// appendEntry appends line to a passwd-style file unless an entry with the
// same name is there.
func appendEntry(root *os.Root, file, line string) error {
	b, err := root.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && (file == "etc/shadow" || file == "etc/gshadow") {
		return nil
	}
	if err != nil {
		return err
	}
	key := line[:strings.IndexByte(line, ':')+1]
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			return nil
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	fi, err := root.Lstat(file)
	if err != nil {
		return err
	}
	return root.WriteFile(file, append(b, line+"\n"...), fi.Mode().Perm())
}

// copySkel copies /etc/skel's regular files into home, owned by the user.
func copySkel(root *os.Root, home string) error {
	d, err := root.Open("etc/skel")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		dst := path.Join(home, e.Name())
		b, err := root.ReadFile(path.Join("etc/skel", e.Name()))
		if err != nil {
			return err
		}
		if err := root.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
		if err := lchown(root, dst, userID, userID); err != nil {
			return err
		}
	}
	return nil
}

// removeEntries removes the entries of dir that keep rejects (not recursive
// into kept directories).
func removeEntries(root *os.Root, dir string, keep func(name string, dir bool) bool) error {
	d, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if keep(e.Name(), e.IsDir()) {
			continue
		}
		if err := root.RemoveAll(path.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// lchown changes an owner, ignoring the refusal an unprivileged process gets
// (tests of the minimal template run without root).
func lchown(root *os.Root, name string, uid, gid int) error {
	err := root.Lchown(name, uid, gid)
	if err != nil && errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
		return nil
	}
	return err
}

func copyIntoRoot(root *os.Root, src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := root.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// extractTar extracts the tarball file into dir, which exists. GNU tar
// detects the compression and refuses members that would land outside dir.
func extractTar(ctx context.Context, file, dir string) error {
	args := append([]string{"-x", "-p", "-f", file, "-C", dir}, tarFlags...)
	return command{name: "tar", args: args}.run(ctx)
}

// writeCache writes rootfs as a tarball to file, atomically and durably.
func writeCache(ctx context.Context, rootfs, file string) error {
	tmp := fmt.Sprintf("%s.tmp-%s", file, randomHex(4))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after a successful rename, a no-op
	cmd := exec.CommandContext(ctx, "tar", append(append([]string{"-c", "-f", "-", "-C", rootfs}, tarFlags...), ".")...)
	cmd.Stdout = f // an *os.File: tar writes it directly
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("tar: %w: %s", err, lastBytes(strings.TrimSpace(stderr.String()), 2<<10))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err == nil {
		err = syncDir(filepath.Dir(file))
	}
	if err != nil {
		return fmt.Errorf("write template cache %s: %w", file, err)
	}
	return nil
}

// emptyDir removes everything inside dir.
func emptyDir(dir string) error {
	if err := removeTree(dir); err != nil {
		return err
	}
	return os.Mkdir(dir, 0o755)
}
