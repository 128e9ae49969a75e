package template

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// copy of it with runner (nil if there are no steps). Directories and
// tarballs of this host must lie in Options.SourceDirs, also once their
// symlinks are resolved; a tarball is extracted like an upload (BuildUpload).
//
// Errors found before the build starts are returned with an empty template:
// invalid_argument, template_exists (also for a build of the same name in
// progress), template_not_found, template_not_ready, file_not_found,
// permission_denied (a host path outside Options.SourceDirs). A build
// that then fails because of its input (a step, the tarball, the directory)
// is kept as a template in state failed, without a rootfs, until deleted: Build
// returns it along with the error (the HTTP API answers 201 with it). Other
// failures, such as a cancelled ctx, leave nothing.
func (s *Store) Build(ctx context.Context, team string, req api.BuildTemplateRequest, runner StepRunner) (api.Template, error) {
	return s.build(ctx, team, req, nil, runner)
}

// BuildUpload is Build from a root filesystem tarball streamed in (plain,
// gzip, zstd or xz, recognised by its first bytes) rather than a source named
// in req, which must name none. The tarball is untrusted: an entry that would
// be written outside the root filesystem (an absolute name, "..", a path
// under one of its symbolic links, such a hard link) or a device node fails
// the build, as does unpacking to more than Options.MaxUnpackedBytes. If
// reading tarball fails (the upload was cut short or is over its size limit)
// nothing is left and that error is returned, wrapped.
func (s *Store) BuildUpload(ctx context.Context, team string, req api.BuildTemplateRequest, tarball io.Reader, runner StepRunner) (api.Template, error) {
	if tarball == nil {
		return api.Template{}, errors.New("build template: no tarball")
	}
	return s.build(ctx, team, req, &uploadReader{r: tarball}, runner)
}

// uploadReader keeps the first error reading an upload.
type uploadReader struct {
	r   io.Reader
	err error
}

func (u *uploadReader) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	if err != nil && err != io.EOF && u.err == nil {
		u.err = err
	}
	return n, err
}

func (s *Store) build(ctx context.Context, team string, req api.BuildTemplateRequest, upload *uploadReader, runner StepRunner) (api.Template, error) {
	src, err := s.checkBuild(ctx, team, req, upload)
	if err != nil {
		return api.Template{}, fmt.Errorf("build template: %w", err)
	}
	if src.file != nil {
		defer src.file.Close()
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
		TeamID:    team,
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
	input.public = scrubPaths(input.public, st.rootfs(), s.dir)
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

// scrubPaths takes the server host's paths out of a build failure's public
// text: a path in the staged root filesystem becomes the path inside the
// template (what the caller knows it by), and anything else under the
// template store its name.
func scrubPaths(public, rootfs, storeDir string) string {
	public = strings.ReplaceAll(public, rootfs+"/", "/")
	public = strings.ReplaceAll(public, rootfs, "/")
	return strings.ReplaceAll(public, storeDir, "<template store>")
}

// reason is what a build failure says of err: its public message if it
// has one, else its text (which scrubPaths cleans).
func reason(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

func inputErr(err error, format string, args ...any) error {
	return &inputError{public: fmt.Sprintf(format, args...), err: err}
}

// buildStaged fills the staging rootfs, runs the steps and commits.
func (s *Store) buildStaged(ctx context.Context, st *staging, m meta, src buildSource,
	steps []string, runner StepRunner) (meta, error) {
	rootfs := st.rootfs()
	switch {
	case src.upload != nil:
		s.opts.Progress(fmt.Sprintf("extracting the uploaded tarball for template %s", m.Name))
		if err := extractUntrusted(ctx, src.upload, rootfs, s.opts.MaxUnpackedBytes); err != nil {
			if src.upload.err != nil {
				return m, fmt.Errorf("read the uploaded tarball: %w", src.upload.err)
			}
			return m, extractErr(ctx, err, "the uploaded tarball")
		}
	case src.tarball != "":
		s.opts.Progress(fmt.Sprintf("extracting %s for template %s", src.tarball, m.Name))
		if err := extractUntrusted(ctx, src.file, rootfs, 0); err != nil {
			return m, extractErr(ctx, err, src.tarball)
		}
	default:
		s.opts.Progress(fmt.Sprintf("copying %s for template %s", src.dir, m.Name))
		if err := copyTree(ctx, src.dir, src.file, rootfs); err != nil {
			if ctx.Err() != nil || src.template != "" {
				return m, err
			}
			return m, inputErr(err, "copying %s failed: %s", src.dir, lastBytes(err.Error(), 1<<10))
		}
	}
	if err := Prepare(rootfs); err != nil {
		return m, inputErr(err, "the root filesystem cannot be used: %s", reason(err))
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
			return m, inputErr(err, "the steps left a root filesystem that cannot be used: %s", reason(err))
		}
	}
	sc, err := scanTree(ctx, rootfs, nil)
	if err != nil {
		return m, fmt.Errorf("digest: %w", err)
	}
	m.SizeBytes, m.Digest = sc.size, sc.digest
	m.CreatedAt = time.Now().UTC()
	if err := st.commit(m); err != nil {
		return m, err
	}
	m.State = api.TemplateReady
	s.uploads.add(m.Name)
	return m, nil
}

// extractErr classifies a failed extraction of what: a cancelled ctx and
// errors that carry their own public code (too large, a missing
// decompressor) end the build; others are the tarball's fault.
func extractErr(ctx context.Context, err error, what string) error {
	var public *errdefs.Error
	if ctx.Err() != nil || errors.As(err, &public) {
		return err
	}
	return inputErr(err, "extracting %s failed: %s", what, lastBytes(err.Error(), 1<<10))
}

// buildSource is a checked build request.
type buildSource struct {
	source   string // for the template's Source field
	template string // the source template, if any
	dir      string // a directory to copy (also a template's rootfs)
	tarball  string
	// file is the open from_dir or from_tarball: what is copied or
	// extracted, whatever happens to its path meanwhile.
	file    *os.File
	upload  *uploadReader
	workdir string
	env     map[string]string
}

var tarballSuffixes = []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".txz"}

// checkBuild validates req and resolves its source: upload if not nil, else
// the one req names. The caller closes the returned source's file.
func (s *Store) checkBuild(ctx context.Context, team string, req api.BuildTemplateRequest, upload *uploadReader) (buildSource, error) {
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
	if upload != nil && n != 0 {
		return buildSource{}, invalidArg("an uploaded tarball is the source of the template",
			"leave out from_template, from_dir and from_tarball when uploading a tarball")
	}
	if upload == nil && n != 1 {
		return buildSource{}, invalidArg("give exactly one of from_template, from_dir and from_tarball",
			"name the source of the template once, or upload a tarball")
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
	case upload != nil:
		src.upload, src.source = upload, "upload"
	case req.FromTemplate != "":
		t, err := s.VisibleTo(ctx, team, req.FromTemplate)
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
		f, resolved, err := s.openSource("from_dir", req.FromDir)
		if err != nil {
			return buildSource{}, err
		}
		dir := filepath.Clean(req.FromDir)
		if err := checkSourceDir(f, dir, resolved, s.dir); err != nil {
			f.Close()
			return buildSource{}, err
		}
		src.file, src.dir, src.source = f, dir, "dir:"+dir
	case req.FromTarball != "":
		f, _, err := s.openSource("from_tarball", req.FromTarball)
		if err != nil {
			return buildSource{}, err
		}
		if err := checkSourceTarball(f, req.FromTarball); err != nil {
			f.Close()
			return buildSource{}, err
		}
		src.file, src.tarball = f, filepath.Clean(req.FromTarball)
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

// checkSourceDir checks the opened from_dir f: a directory, not holding the
// template store.
func checkSourceDir(f *os.File, dir, resolved, store string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return invalidArg(fmt.Sprintf("from_dir %s is not a directory", dir),
			"name a root filesystem directory, or use from_tarball for a tarball")
	}
	if within(resolved, store) {
		return invalidArg(fmt.Sprintf("from_dir %s holds the template store", dir),
			"name a root filesystem directory")
	}
	return nil
}

// checkSourceTarball checks the opened from_tarball f: a regular file whose
// name says it is a tarball this host can extract.
func checkSourceTarball(f *os.File, name string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return invalidArg(fmt.Sprintf("from_tarball %s is not a regular file", name),
			"name a tarball of a root filesystem")
	}
	ok := false
	for _, suf := range tarballSuffixes {
		ok = ok || strings.HasSuffix(name, suf)
	}
	if !ok {
		return invalidArg(fmt.Sprintf("from_tarball %s is not a tarball", name),
			"use one ending in "+strings.Join(tarballSuffixes, ", "))
	}
	if strings.HasSuffix(name, "zst") {
		if _, err := exec.LookPath("zstd"); err != nil {
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
				"extracting a .tar.zst needs zstd, which this host lacks",
				"install zstd on the server host, or use a .tar.gz")
		}
	}
	return nil
}

// sourceDir is one of Options.SourceDirs, as given and with its symlinks
// resolved.
type sourceDir struct{ given, resolved string }

func resolveSourceDir(d string) (sourceDir, error) {
	if !filepath.IsAbs(d) {
		return sourceDir{}, fmt.Errorf("template source directory %q is not an absolute path", d)
	}
	r, err := filepath.EvalSymlinks(d)
	if err != nil {
		return sourceDir{}, fmt.Errorf("template source directory: %w", err)
	}
	fi, err := os.Stat(r)
	if err != nil {
		return sourceDir{}, fmt.Errorf("template source directory: %w", err)
	}
	if !fi.IsDir() {
		return sourceDir{}, fmt.Errorf("template source directory %s is not a directory", d)
	}
	return sourceDir{given: filepath.Clean(d), resolved: r}, nil
}

// within reports whether the clean absolute path p is dir or lies below it.
func within(dir, p string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// openSource opens p, the from_dir or from_tarball (field) of a request, if
// it lies in one of the source directories the operator allows, both as
// written and once its symlinks are resolved; it returns the open file and
// the resolved path. A path outside them is refused before anything of it is
// looked at, so that the answer tells nothing about the host's files. The
// file is opened through an os.Root of its source directory: a path swapped
// for a symlink after the check still cannot lead out of it.
func (s *Store) openSource(field, p string) (*os.File, string, error) {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return nil, "", invalidArg(fmt.Sprintf("%s %s is not an absolute path", field, p),
			"give the absolute path of the source on the server host")
	}
	clean := filepath.Clean(p)
	if !slices.ContainsFunc(s.sourceDirs, func(d sourceDir) bool { return within(d.given, clean) || within(d.resolved, clean) }) {
		return nil, "", s.errSourceNotAllowed(field, clean, "")
	}
	resolved, err := filepath.EvalSymlinks(clean)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", errSourceMissing(err, clean)
	}
	if err != nil {
		return nil, "", errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s %s cannot be resolved", field, clean), "check the path and its permissions")
	}
	for _, d := range s.sourceDirs {
		if !within(d.resolved, resolved) {
			continue
		}
		rel, err := filepath.Rel(d.resolved, resolved)
		if err != nil {
			return nil, "", err
		}
		root, err := os.OpenRoot(d.resolved)
		if err != nil {
			return nil, "", fmt.Errorf("open template source directory: %w", err)
		}
		f, err := root.Open(rel)
		root.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", errSourceMissing(err, clean)
		}
		if err != nil {
			return nil, "", errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("%s %s cannot be opened within its source directory", field, clean),
				"check the path and its permissions; a symbolic link must not lead out of the directory")
		}
		return f, resolved, nil
	}
	return nil, "", s.errSourceNotAllowed(field, clean, " once its symbolic links are resolved")
}

func (s *Store) errSourceNotAllowed(field, p, how string) error {
	msg := fmt.Sprintf("%s %s lies outside the directories this server takes templates from%s", field, p, how)
	if len(s.sourceDirs) == 0 {
		msg = fmt.Sprintf("%s %s is a path on the server host, and this server takes templates from none", field, p)
	}
	return &errdefs.Error{Class: errdefs.ErrFailedPrecondition, Code: errdefs.CodePermissionDenied, Status: 403,
		Message: msg,
		SuggestedAction: "upload the root filesystem as a tarball instead (POST /v1/templates as multipart/form-data; " +
			"`nullspace template build NAME --from-tarball FILE` or `--from-dir DIR` does it), or have the operator " +
			"allow the directory with `nullspace serve --template-source-dir DIR`"}
}

func errSourceMissing(err error, p string) error {
	return errdefs.Wrap(err, errdefs.ErrNotFound, errdefs.CodeFileNotFound,
		fmt.Sprintf("%s does not exist on the server host", p), "give a path that exists on the server host")
}

func invalidArg(msg, action string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, msg, action)
}

// copyTree copies the contents of src into dst (which exists), keeping
// modes, owners, timestamps, symlinks, hard links and xattrs, and not
// descending into other filesystems mounted below src.
// If srcFile is not nil, it is src opened, and what is copied: cp reaches
// it as its file descriptor 3, whatever src's path leads to by then.
func copyTree(ctx context.Context, src string, srcFile *os.File, dst string) error {
	c := command{name: "cp"}
	if srcFile != nil {
		src, c.extraFiles = "/proc/self/fd/3", []*os.File{srcFile}
	}
	c.args = []string{"-a", "--one-file-system", "--reflink=auto", "--", src + "/.", dst}
	return c.run(ctx)
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
