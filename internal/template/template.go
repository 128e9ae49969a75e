// Package template keeps the root filesystems that machines boot from, and
// builds them: the built-in templates (minimal, from busybox; base, Debian
// bookworm by debootstrap, cached outside the data dir so it is built once per
// host) and user templates made from a template, a directory or a tarball plus
// shell steps run inside a machine.
//
// A template's source is untrusted unless it is a template: directories and
// tarballs of the server host are taken only from the directories the
// operator names (Options.SourceDirs), and tarballs, uploaded or not, are
// extracted through a filter that keeps every entry inside the root
// filesystem (tarball.go).
//
// On disk, under the store's directory:
//
//	<name>/template.json      metadata: api.Template plus internal fields
//	<name>/rootfs/            the root filesystem, used read-only by many machines
//	.build-<name>/            a build in progress, same layout, state building
//	.trash-<name>-<random>/   a deleted template being removed
//	.locks/<name>.lock        flock(2)ed while <name> is being built
//	.by-digest/<hex>/rootfs/  a root filesystem fetched by its digest (RootfsByDigest)
//	.locks/digest-<hex>.lock  flock(2)ed while that digest is being fetched
//	.trash-upload-*, .trash-fetch-*   an upload's tar, a fetch in progress
//
// A template appears under its name only once complete: every build happens
// in .build-<name> and is renamed into place, so a crash never leaves a half
// template, and Open removes builds whose lock nobody holds any more. A failed
// Build keeps <name>/template.json in state failed, without a rootfs, until it
// is deleted; a failed built-in leaves nothing.
//
// Slow artefacts live in Options.CacheDir, shared by every data dir on the
// host: <CacheDir>/templates/<recipe>.tar (base-bookworm-r<revision>-<hash of
// the package list>.tar, an uncompressed tar of the finished base rootfs)
// beside its .lock. Changing the base recipe means a new recipe name, hence a
// new cache; a data dir's copy made by an older recipe is replaced once no
// machine uses it (StaleBuiltin).
//
// Every ready template has a content digest (digest.go), which names its
// root filesystem on any host. With Options.Remote, each is uploaded to the
// object store in the background once built, and a root filesystem this
// host lacks is fetched by its digest (remote.go).
//
// Whether a template is used by machines is the caller's business: check it
// before Delete.
package template

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore/chunks"
)

// Options configures a Store. The zero value is usable.
type Options struct {
	// CacheDir keeps slow artefacts (the base template's tarball) outside any
	// data dir so that fresh clones and data dirs reuse them. Default
	// /var/cache/nullspace.
	CacheDir string
	// BusyboxPath is the static busybox copied into the minimal template.
	// Default /bin/busybox (Debian's busybox-static).
	BusyboxPath string
	// DebianMirror is the mirror debootstrap installs base from. Default
	// http://deb.debian.org/debian.
	DebianMirror string
	// Progress, if set, receives one human-readable line per slow step, from
	// the goroutine doing the step.
	Progress func(string)
	// SourceDirs are the directories of this host whose contents builds may
	// name as from_dir or from_tarball (after symlinks are resolved); a path
	// anywhere else is refused. Each must be an existing directory, given
	// by its absolute path. Default none: templates come from templates or
	// from uploaded tarballs (BuildUpload) only.
	SourceDirs []string
	// MaxUnpackedBytes bounds what an uploaded tarball unpacks to (its tar
	// stream, decompressed). 0: no bound.
	MaxUnpackedBytes int64
	// Remote is the object store templates are uploaded to once built and
	// fetched from by digest (RootfsByDigest), under
	// templates/<hex digest>/manifest.json. nil: none; templates stay on
	// this host.
	Remote *chunks.Store
	// UploadBackoff is the first wait after a failed upload; it doubles up
	// to maxUploadBackoff. Default 5 s.
	UploadBackoff time.Duration
}

// Defaults of Options.
const (
	DefaultCacheDir     = "/var/cache/nullspace"
	DefaultBusyboxPath  = "/bin/busybox"
	DefaultDebianMirror = "http://deb.debian.org/debian"
)

// Store is a directory of templates. It is safe for concurrent use, and
// several processes may share one directory.
type Store struct {
	dir  string
	log  *slog.Logger
	opts Options

	// sourceDirs are Options.SourceDirs as given and with symlinks resolved.
	sourceDirs []sourceDir

	mu sync.Mutex
	// building maps names this process is building to their held lock file.
	building map[string]*os.File
	// sources counts this process's builds copying from a template; Delete
	// refuses such templates.
	sources map[string]int

	// metaMu serializes this process's changes to the template.json of
	// ready templates (updateMeta).
	metaMu sync.Mutex
	// flight joins concurrent digest computations and fetches.
	flight singleflight.Group

	// uploads is the background uploader's queue (remote.go).
	uploads uploadQueue
	// stop ends the background work that Open started; done is closed when
	// it has ended.
	stop func()
	done chan struct{}
}

const (
	metaFile     = "template.json"
	rootfsName   = "rootfs"
	buildPrefix  = ".build-"
	trashPrefix  = ".trash-"
	locksDir     = ".locks"
	formatV1     = 1
	dirPerm      = 0o711
	pollInterval = 250 * time.Millisecond
)

// meta is what template.json holds: the public view plus internal fields.
type meta struct {
	api.Template
	// Format is the version of this file's layout.
	Format int `json:"format"`
	// Recipe names the recipe of a built-in template, e.g. base-bookworm-r2-1a2b3c4d.
	Recipe string `json:"recipe,omitempty"`
	// Uploaded is true once the root filesystem is in the object store
	// (Options.Remote) under its digest.
	Uploaded bool `json:"uploaded,omitempty"`
}

// Open opens the template store in dir, creating it if needed, and removes
// what interrupted builds and deletes left behind.
func Open(dir string, logger *slog.Logger, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open template store: empty directory")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir
	}
	if opts.BusyboxPath == "" {
		opts.BusyboxPath = DefaultBusyboxPath
	}
	if opts.DebianMirror == "" {
		opts.DebianMirror = DefaultDebianMirror
	}
	if opts.Progress == nil {
		opts.Progress = func(string) {}
	}
	var err error
	if opts.CacheDir, err = filepath.Abs(opts.CacheDir); err != nil {
		return nil, fmt.Errorf("open template store: %w", err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("open template store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, locksDir), dirPerm); err != nil {
		return nil, fmt.Errorf("open template store: %w", err)
	}
	// Resolve symlinks so that paths compare equal to those in mountinfo.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("open template store: %w", err)
	}
	s := &Store{
		dir:      dir,
		log:      logger,
		opts:     opts,
		building: make(map[string]*os.File),
		sources:  make(map[string]int),
	}
	for _, d := range opts.SourceDirs {
		sd, err := resolveSourceDir(d)
		if err != nil {
			return nil, fmt.Errorf("open template store: %w", err)
		}
		s.sourceDirs = append(s.sourceDirs, sd)
	}
	if err := s.cleanup(); err != nil {
		return nil, fmt.Errorf("open template store %s: %w", dir, err)
	}
	if opts.UploadBackoff <= 0 {
		s.opts.UploadBackoff = defaultUploadBackoff
	}
	s.uploads.init(opts.Remote != nil)
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		s.background(ctx)
	}()
	return s, nil
}

// Close stops the background work Open started (digests of templates made
// by an older binary, uploads) and waits for it to end. Uploads not done
// are done by the next Open.
func (s *Store) Close() error {
	s.stop()
	<-s.done
	return nil
}

// cleanup removes stale builds (their lock is free) and trash.
func (s *Store) cleanup() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, trashPrefix):
			s.log.Info("removing deleted template left behind", "dir", n)
			if err := removeTree(filepath.Join(s.dir, n)); err != nil {
				return err
			}
		case strings.HasPrefix(n, buildPrefix):
			name := strings.TrimPrefix(n, buildPrefix)
			if ValidateName(name) != nil {
				continue
			}
			lock, ok, err := tryLock(s.lockPath(name), syscall.LOCK_EX)
			if err != nil {
				return err
			}
			if !ok {
				continue // another process is building it
			}
			s.log.Warn("removing interrupted template build", "template", name)
			err = removeTree(filepath.Join(s.dir, n))
			lock.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName reports whether name is a valid template name: 1 to 63
// characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid template name %q", name),
			"use 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
	}
	return nil
}

// List returns all templates, in every state, sorted by name.
func (s *Store) List(ctx context.Context) ([]api.Template, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []api.Template
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list templates: %w", err)
		}
		name := strings.TrimPrefix(e.Name(), buildPrefix)
		if !e.IsDir() || ValidateName(name) != nil {
			continue
		}
		if name != e.Name() && s.exists(name) {
			continue // finished between ReadDir and now; listed under its name
		}
		m, err := s.get(name)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list templates: %w", err)
		}
		out = append(out, m.Template)
	}
	slices.SortFunc(out, func(a, b api.Template) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Get returns the template called name.
func (s *Store) Get(ctx context.Context, name string) (api.Template, error) {
	if err := ValidateName(name); err != nil {
		return api.Template{}, fmt.Errorf("get template: %w", err)
	}
	m, err := s.get(name)
	if err != nil {
		return api.Template{}, fmt.Errorf("get template %s: %w", name, err)
	}
	return m.Template, nil
}

// RootfsDir returns the root filesystem directory of a ready template. It is
// shared by every machine made from the template and must be used read-only.
func (s *Store) RootfsDir(name string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("template rootfs: %w", err)
	}
	m, err := s.get(name)
	if err != nil {
		return "", fmt.Errorf("template rootfs %s: %w", name, err)
	}
	if m.State != api.TemplateReady {
		return "", errNotReady(name, m.State)
	}
	return filepath.Join(s.dir, name, rootfsName), nil
}

// Delete removes a template. The caller must make sure no machine uses it.
// A template being built cannot be deleted (template_not_ready), nor can a
// built-in one (permission_denied): the server makes those ready at start
// and rebuilds a failed one itself.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("delete template: %w", err)
	}
	if IsBuiltin(name) {
		return fmt.Errorf("delete template %s: %w", name, errBuiltin(name))
	}
	return s.delete(ctx, name)
}

// CheckDelete says why Delete would refuse name before anything else is
// checked: not found, or built in (permission_denied).
func (s *Store) CheckDelete(ctx context.Context, name string) error {
	if _, err := s.Get(ctx, name); err != nil {
		return err
	}
	if IsBuiltin(name) {
		return fmt.Errorf("delete template %s: %w", name, errBuiltin(name))
	}
	return nil
}

func errBuiltin(name string) error {
	return &errdefs.Error{Class: errdefs.ErrFailedPrecondition, Code: errdefs.CodePermissionDenied, Status: 403,
		Message:         fmt.Sprintf("template %s is built in and cannot be deleted", name),
		SuggestedAction: "build a template of your own under another name; the server keeps the built-in ones"}
}

// delete is Delete for any template, built-in ones included.
func (s *Store) delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete template %s: %w", name, err)
	}
	trash, err := s.moveToTrash(name)
	if err != nil {
		return fmt.Errorf("delete template %s: %w", name, err)
	}
	// The rename made the deletion. Removing the files is housekeeping that
	// Open finishes if it is interrupted, so it does not obey ctx.
	if err := removeTree(trash); err != nil {
		s.log.Warn("removing deleted template", "template", name, "err", err)
	}
	s.log.Info("template deleted", "template", name)
	return nil
}

func (s *Store) moveToTrash(name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources[name] > 0 {
		return "", errdefs.New(errdefs.ErrConflict, errdefs.CodeTemplateInUse,
			fmt.Sprintf("template %s is the source of a build in progress", name),
			"wait for the build to finish and delete it again")
	}
	if _, ok := s.building[name]; ok || (!s.exists(name) && s.buildingElsewhere(name)) {
		return "", errNotReady(name, api.TemplateBuilding)
	}
	if !s.exists(name) {
		return "", errNotFound(name)
	}
	trash := filepath.Join(s.dir, trashPrefix+name+"-"+randomHex(4))
	if err := os.Rename(filepath.Join(s.dir, name), trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errNotFound(name)
		}
		return "", err
	}
	return trash, syncDir(s.dir)
}

// get reads the metadata of name: its own directory if it exists, else a
// build in progress.
func (s *Store) get(name string) (meta, error) {
	m, err := s.readMeta(filepath.Join(s.dir, name))
	if !errors.Is(err, fs.ErrNotExist) {
		return m, err
	}
	if s.isBuilding(name) {
		m, err := s.readMeta(filepath.Join(s.dir, buildPrefix+name))
		if err == nil {
			m.State = api.TemplateBuilding
			return m, nil
		}
	}
	// The build may have been renamed into place meanwhile.
	m, err = s.readMeta(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return meta{}, errNotFound(name)
	}
	return m, err
}

// readMeta reads dir/template.json. A directory without readable metadata is
// reported as a failed template so that it shows up and can be deleted.
func (s *Store) readMeta(dir string) (meta, error) {
	name := filepath.Base(dir)
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat(dir); serr == nil {
				return brokenMeta(name, dir, "template.json is missing"), nil
			}
		}
		return meta{}, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return brokenMeta(name, dir, "template.json is unreadable: "+err.Error()), nil
	}
	m.Env = maps.Clone(m.Env)
	if m.TeamID == "" && !IsBuiltin(name) {
		m.TeamID = LegacyTeam
	}
	return m, nil
}

// LegacyTeam owns the templates built before templates had owners: the
// one team a server had then, which its first start made.
const LegacyTeam = "team_default"

// Visible reports whether team may see and use t: its own templates and
// the built-in ones. Another team's template is not found, never
// forbidden, so that names of other teams' templates are not disclosed
// (except that a name taken by anyone cannot be taken again).
func Visible(t api.Template, team string) bool { return t.TeamID == "" || t.TeamID == team }

// VisibleTo returns the template called name if team may see it, and
// template_not_found otherwise.
func (s *Store) VisibleTo(ctx context.Context, team, name string) (api.Template, error) {
	t, err := s.Get(ctx, name)
	if err != nil {
		return api.Template{}, err
	}
	if !Visible(t, team) {
		return api.Template{}, fmt.Errorf("get template %s: %w", name, errNotFound(name))
	}
	return t, nil
}

func brokenMeta(name, dir, why string) meta {
	var created time.Time
	if fi, err := os.Stat(dir); err == nil {
		created = fi.ModTime().UTC()
	}
	return meta{Template: api.Template{Name: name, State: api.TemplateFailed, CreatedAt: created, Error: why}}
}

func (s *Store) exists(name string) bool {
	_, err := os.Lstat(filepath.Join(s.dir, name))
	return err == nil
}

func (s *Store) lockPath(name string) string {
	return filepath.Join(s.dir, locksDir, name+".lock")
}

// isBuilding reports whether name is being built by this or another process.
func (s *Store) isBuilding(name string) bool {
	s.mu.Lock()
	_, ok := s.building[name]
	s.mu.Unlock()
	return ok || s.buildingElsewhere(name)
}

// buildingElsewhere reports whether some process holds name's build lock.
func (s *Store) buildingElsewhere(name string) bool {
	f, err := os.Open(s.lockPath(name))
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// staging is a build in progress in .build-<name>, holding name's lock.
type staging struct {
	s    *Store
	name string
	dir  string
	lock *os.File
}

func (st *staging) rootfs() string { return filepath.Join(st.dir, rootfsName) }

// begin starts building name: it takes the name's lock, makes the staging
// directory with an empty rootfs and records m (state building) in it.
func (s *Store) begin(m meta) (*staging, error) {
	name := m.Name
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.building[name]; ok {
		return nil, errBuilding(name)
	}
	if s.exists(name) {
		return nil, errExists(name)
	}
	lock, ok, err := tryLock(s.lockPath(name), syscall.LOCK_EX)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errBuilding(name)
	}
	st := &staging{s: s, name: name, dir: filepath.Join(s.dir, buildPrefix+name), lock: lock}
	// Checked again under the lock: another process may have just finished.
	if s.exists(name) {
		lock.Close()
		return nil, errExists(name)
	}
	if err := removeTree(st.dir); err != nil { // an interrupted build
		lock.Close()
		return nil, err
	}
	m.State = api.TemplateBuilding
	m.Format = formatV1
	err = os.Mkdir(st.dir, dirPerm)
	if err == nil {
		err = os.Mkdir(st.rootfs(), 0o755)
	}
	if err == nil {
		err = writeJSON(filepath.Join(st.dir, metaFile), m)
	}
	if err != nil {
		_ = removeTree(st.dir)
		lock.Close()
		return nil, err
	}
	s.building[name] = lock
	return st, nil
}

// commit records m as ready and renames the build into place.
func (st *staging) commit(m meta) error {
	m.State = api.TemplateReady
	m.Error = ""
	return st.finish(m)
}

// fail removes the rootfs and keeps m, in state failed with why, as the
// template's record.
func (st *staging) fail(m meta, why string) (meta, error) {
	m.State = api.TemplateFailed
	m.Error = why
	m.SizeBytes, m.Digest = 0, ""
	if err := removeTree(st.rootfs()); err != nil {
		st.abort()
		return m, err
	}
	return m, st.finish(m)
}

func (st *staging) finish(m meta) error {
	defer st.release()
	m.Format = formatV1
	if err := writeJSON(filepath.Join(st.dir, metaFile), m); err != nil {
		_ = removeTree(st.dir)
		return err
	}
	if err := os.Rename(st.dir, filepath.Join(st.s.dir, st.name)); err != nil {
		_ = removeTree(st.dir)
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return errExists(st.name)
		}
		return err
	}
	return syncDir(st.s.dir)
}

// abort removes the build and leaves nothing.
func (st *staging) abort() {
	defer st.release()
	if err := removeTree(st.dir); err != nil {
		st.s.log.Warn("removing failed template build", "template", st.name, "err", err)
	}
}

func (st *staging) release() {
	st.s.mu.Lock()
	if st.s.building[st.name] == st.lock {
		delete(st.s.building, st.name)
	}
	st.s.mu.Unlock()
	st.lock.Close()
}

// tryLock opens (creating) path and flock(2)s it without waiting. ok is false
// if someone else holds the lock.
func tryLock(path string, how int) (f *os.File, ok bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, true, nil
}

// lockWait takes an exclusive lock on path, waiting for it until ctx is done;
// waiting is called once if it has to wait.
func lockWait(ctx context.Context, path string, waiting func()) (*os.File, error) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for first := true; ; first = false {
		f, ok, err := tryLock(path, syscall.LOCK_EX)
		if err != nil || ok {
			return f, err
		}
		if first && waiting != nil {
			waiting()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// writeJSON writes v to path atomically and durably.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp-" + randomHex(4)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func errNotFound(name string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound,
		fmt.Sprintf("template %s not found", name), "list the templates with GET /v1/templates")
}

func errExists(name string) error {
	return errdefs.New(errdefs.ErrConflict, errdefs.CodeTemplateExists,
		fmt.Sprintf("template %s already exists", name), "choose another name, or delete the template first")
}

// errInProgress is the cause of errBuilding, for EnsureBuiltin to wait on.
var errInProgress = errors.New("build in progress")

func errBuilding(name string) error {
	return errdefs.Wrap(errInProgress, errdefs.ErrConflict, errdefs.CodeTemplateExists,
		fmt.Sprintf("template %s is being built", name), "wait for the build to finish, or choose another name")
}

func errNotReady(name, state string) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeTemplateNotReady,
		fmt.Sprintf("template %s is %s, not ready", name, state),
		"wait for a building template; delete a failed one and build it again")
}
