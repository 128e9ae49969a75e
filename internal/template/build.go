package template

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// StepRunner runs a build's steps inside a machine. The machine manager
// implements it.
type StepRunner interface {
	// RunSteps boots a machine whose root filesystem is rootfs, writable: its
	// changes must land in rootfs itself. It runs each step with /bin/sh -c,
	// in order, in workdir with env, and returns a *StepError for the first
	// step that exits non-zero. The machine is gone when it returns.
	RunSteps(ctx context.Context, rootfs, workdir string, env map[string]string, steps []string) error
}

// StepError reports a build step that failed.
type StepError struct {
	Index    int    // 0-based position in the request's steps
	Step     string // the shell command
	ExitCode int
	Output   string // its combined output, or the tail of it
}

func (e *StepError) Error() string {
	return fmt.Sprintf("step %d (%s) exited with code %d: %s", e.Index+1, e.Step, e.ExitCode,
		lastBytes(strings.TrimSpace(e.Output), stepOutputTail))
}

// stepOutputTail is how much of a failed step's output an error carries.
const stepOutputTail = 2 << 10

// Build makes a new template from one source (another template, a directory
// or a tarball on this host) and runs req.Steps in a machine booted from a
// copy of it with runner (nil if there are no steps).
//
// Errors found before the build starts are returned with an empty template:
// invalid_argument, template_exists (also for a build of the same name in
// progress), template_not_found, template_not_ready, file_not_found. A build
// that then fails because of its input (a step, the tarball, the directory)
// is kept as a template in state failed, without a rootfs, until deleted: Build
// returns it along with the error (the HTTP API answers 201 with it). Other
// failures, such as a cancelled ctx, leave nothing.
func (s *Store) Build(ctx context.Context, req api.BuildTemplateRequest, runner StepRunner) (api.Template, error) {
	src, err := s.checkBuild(ctx, req)
	if err != nil {
		return api.Template{}, fmt.Errorf("build template: %w", err)
	}
	if len(req.Steps) > 0 && runner == nil {
		return api.Template{}, errors.New("build template: steps given without a step runner")
	}
	if src.template != "" {
		// Registered before the final check so a concurrent Delete refuses.
		s.mu.Lock()
		s.sources[src.template]++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			if s.sources[src.template]--; s.sources[src.template] == 0 {
				delete(s.sources, src.template)
			}
			s.mu.Unlock()
		}()
		if _, err := s.RootfsDir(src.template); err != nil {
			return api.Template{}, fmt.Errorf("build template %s: %w", req.Name, err)
		}
	}
	m := meta{Template: api.Template{
		Name:      req.Name,
		Workdir:   src.workdir,
		Env:       src.env,
		CreatedAt: time.Now().UTC(),
		Source:    src.source,
	}}
	st, err := s.begin(m)
	if err != nil {
		return api.Template{}, fmt.Errorf("build template %s: %w", req.Name, err)
	}
	log := s.log.With("template", req.Name, "source", src.source)
	log.Info("building template", "steps", len(req.Steps))
	start := time.Now()
	m, err = s.buildStaged(ctx, st, m, src, req.Steps, runner)
	if err == nil {
		log.Info("template ready", "duration", time.Since(start).Round(time.Millisecond), "size_bytes", m.SizeBytes)
		return m.Template, nil
	}
	err = fmt.Errorf("build template %s: %w", req.Name, err)
	var input *inputError
	if !errors.As(err, &input) || ctx.Err() != nil {
		log.Warn("template build failed", "err", err)
		st.abort()
		return api.Template{}, err
	}
	log.Info("template build failed", "err", err)
	failed, ferr := st.fail(m, input.public)
	if ferr != nil {
		log.Error("recording failed template build", "err", ferr)
		return api.Template{}, err
	}
	return failed.Template, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		fmt.Sprintf("build template %s: %s", req.Name, input.public),
		"fix the request, delete the failed template and build it again")
}

// inputError is a build failure caused by the build's input; public is what
// the template's error field and the API say about it.
type inputError struct {
	public string
	err    error
}

func (e *inputError) Error() string { return e.err.Error() }
func (e *inputError) Unwrap() error { return e.err }

func inputErr(err error, format string, args ...any) error {
	return &inputError{public: fmt.Sprintf(format, args...), err: err}
}

// buildStaged fills the staging rootfs, runs the steps and commits.
func (s *Store) buildStaged(ctx context.Context, st *staging, m meta, src buildSource,
	steps []string, runner StepRunner) (meta, error) {
	rootfs := st.rootfs()
	switch {
	case src.tarball != "":
		s.opts.Progress(fmt.Sprintf("extracting %s for template %s", src.tarball, m.Name))
		if err := extractTar(ctx, src.tarball, rootfs); err != nil {
			if ctx.Err() != nil {
				return m, err
			}
			return m, inputErr(err, "extracting %s failed: %s", src.tarball, lastBytes(err.Error(), 1<<10))
		}
	default:
		s.opts.Progress(fmt.Sprintf("copying %s for template %s", src.dir, m.Name))
		if err := copyTree(ctx, src.dir, rootfs); err != nil {
			if ctx.Err() != nil || src.template != "" {
				return m, err
			}
			return m, inputErr(err, "copying %s failed: %s", src.dir, lastBytes(err.Error(), 1<<10))
		}
	}
	if err := Prepare(rootfs); err != nil {
		return m, inputErr(err, "the root filesystem cannot be used: %s", err)
	}
	if err := ensureWorkdir(rootfs, m.Workdir); err != nil {
		return m, inputErr(err, "workdir %s cannot be made: %s", m.Workdir, err)
	}
	if len(steps) > 0 {
		if _, err := os.Lstat(filepath.Join(rootfs, "bin", "sh")); err != nil {
			return m, inputErr(err, "the root filesystem has no /bin/sh to run steps with%s", topDirHint(rootfs))
		}
		s.opts.Progress(fmt.Sprintf("running %d build steps for template %s", len(steps), m.Name))
		if err := runner.RunSteps(ctx, rootfs, m.Workdir, maps.Clone(m.Env), steps); err != nil {
			var se *StepError
			if errors.As(err, &se) {
				return m, inputErr(err, "%s", se.Error())
			}
			return m, fmt.Errorf("run steps: %w", err)
		}
		// Steps may have replaced what the runtime needs.
		if err := Prepare(rootfs); err != nil {
			return m, inputErr(err, "the steps left a root filesystem that cannot be used: %s", err)
		}
	}
	var err error
	if m.SizeBytes, err = treeSize(rootfs); err != nil {
		return m, fmt.Errorf("size: %w", err)
	}
	m.CreatedAt = time.Now().UTC()
	if err := st.commit(m); err != nil {
		return m, err
	}
	m.State = api.TemplateReady
	return m, nil
}

// buildSource is a checked build request.
type buildSource struct {
	source   string // for the template's Source field
	template string // the source template, if any
	dir      string // a directory to copy (also a template's rootfs)
	tarball  string
	workdir  string
	env      map[string]string
}

var tarballSuffixes = []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".txz"}

// checkBuild validates req and resolves its source.
func (s *Store) checkBuild(ctx context.Context, req api.BuildTemplateRequest) (buildSource, error) {
	if err := ValidateName(req.Name); err != nil {
		return buildSource{}, err
	}
	if IsBuiltin(req.Name) {
		return buildSource{}, invalidArg(fmt.Sprintf("template name %s is reserved for the built-in template", req.Name),
			"choose another name")
	}
	n := 0
	for _, v := range []string{req.FromTemplate, req.FromDir, req.FromTarball} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return buildSource{}, invalidArg("give exactly one of from_template, from_dir and from_tarball",
			"name the source of the template once")
	}
	for i, step := range req.Steps {
		if strings.TrimSpace(step) == "" || strings.ContainsRune(step, 0) {
			return buildSource{}, invalidArg(fmt.Sprintf("step %d is empty or holds a NUL byte", i+1), "remove it")
		}
	}
	if req.Workdir != "" && (!filepath.IsAbs(req.Workdir) || strings.ContainsRune(req.Workdir, 0)) {
		return buildSource{}, invalidArg(fmt.Sprintf("workdir %q is not an absolute path", req.Workdir),
			"use an absolute path such as /workspace")
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return buildSource{}, invalidArg(fmt.Sprintf("invalid environment variable %q", k),
				"use names without '=' and values without NUL bytes")
		}
	}
	if s.exists(req.Name) {
		return buildSource{}, errExists(req.Name)
	}

	src := buildSource{workdir: "/"}
	switch {
	case req.FromTemplate != "":
		t, err := s.Get(ctx, req.FromTemplate)
		if err != nil {
			return buildSource{}, err
		}
		if t.State != api.TemplateReady {
			return buildSource{}, errNotReady(t.Name, t.State)
		}
		src.template, src.source = t.Name, "template:"+t.Name
		src.dir = filepath.Join(s.dir, t.Name, rootfsName)
		src.workdir, src.env = t.Workdir, t.Env
	case req.FromDir != "":
		fi, err := statSource(req.FromDir)
		if err != nil {
			return buildSource{}, err
		}
		if !fi.IsDir() {
			return buildSource{}, invalidArg(fmt.Sprintf("from_dir %s is not a directory", req.FromDir),
				"name a root filesystem directory, or use from_tarball for a tarball")
		}
		dir := filepath.Clean(req.FromDir)
		resolved, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return buildSource{}, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("from_dir %s cannot be resolved", dir), "check the path")
		}
		if rel, err := filepath.Rel(resolved, s.dir); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return buildSource{}, invalidArg(fmt.Sprintf("from_dir %s holds the template store", dir),
				"name a root filesystem directory")
		}
		src.dir, src.source = dir, "dir:"+dir
	case req.FromTarball != "":
		fi, err := statSource(req.FromTarball)
		if err != nil {
			return buildSource{}, err
		}
		if !fi.Mode().IsRegular() {
			return buildSource{}, invalidArg(fmt.Sprintf("from_tarball %s is not a regular file", req.FromTarball),
				"name a tarball of a root filesystem")
		}
		ok := false
		for _, suf := range tarballSuffixes {
			ok = ok || strings.HasSuffix(req.FromTarball, suf)
		}
		if !ok {
			return buildSource{}, invalidArg(fmt.Sprintf("from_tarball %s is not a tarball", req.FromTarball),
				"use one ending in "+strings.Join(tarballSuffixes, ", "))
		}
		if strings.HasSuffix(req.FromTarball, "zst") {
			if _, err := exec.LookPath("zstd"); err != nil {
				return buildSource{}, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
					"extracting a .tar.zst needs zstd, which this host lacks",
					"install zstd on the server host, or use a .tar.gz")
			}
		}
		src.tarball = filepath.Clean(req.FromTarball)
		src.source = "tarball:" + src.tarball
	}
	if req.Workdir != "" {
		src.workdir = filepath.Clean(req.Workdir)
	}
	if src.workdir == "" {
		src.workdir = "/"
	}
	env := maps.Clone(src.env)
	if env == nil && len(req.Env) > 0 {
		env = make(map[string]string, len(req.Env))
	}
	maps.Copy(env, req.Env)
	src.env = env
	return src, nil
}

// statSource checks a source path on this host: absolute and existing.
func statSource(p string) (fs.FileInfo, error) {
	if !filepath.IsAbs(p) {
		return nil, invalidArg(fmt.Sprintf("%s is not an absolute path", p),
			"give the absolute path of the source on the server host")
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.Wrap(err, errdefs.ErrNotFound, errdefs.CodeFileNotFound,
			fmt.Sprintf("%s does not exist on the server host", p), "give a path that exists on the server host")
	}
	if err != nil {
		return nil, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s cannot be read", p), "check the path and its permissions")
	}
	return fi, nil
}

func invalidArg(msg, action string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, msg, action)
}

// copyTree copies the contents of src into dst (which exists), keeping
// modes, owners, timestamps, symlinks, hard links and xattrs, and not
// descending into other filesystems mounted below src.
func copyTree(ctx context.Context, src, dst string) error {
	return command{name: "cp", args: []string{"-a", "--one-file-system", "--reflink=auto",
		"--", src + "/.", dst}}.run(ctx)
}

// ensureWorkdir makes workdir inside rootfs if it is missing.
func ensureWorkdir(rootfs, workdir string) error {
	rel := strings.TrimPrefix(filepath.Clean(workdir), "/")
	if rel == "" {
		return nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	return root.MkdirAll(rel, 0o755)
}

// topDirHint explains the usual cause of a rootfs without /bin/sh: a tarball
// or directory that wraps the root filesystem in one more directory.
func topDirHint(rootfs string) string {
	entries, err := os.ReadDir(rootfs)
	if err != nil {
		return ""
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && "/"+e.Name() != AgentDir && !isPrepared(e.Name()) {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) == 1 {
		return fmt.Sprintf(" (everything is under %s/: make the tarball or directory of that directory's contents)", dirs[0])
	}
	return ""
}

// isPrepared reports whether Prepare may have made the top-level entry.
func isPrepared(name string) bool {
	switch name {
	case "tmp", "proc", "sys", "dev", "etc":
		return true
	}
	return false
}
