package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

const (
	// reservedDir is the agent's own read-only mount; the file API stays
	// out of it.
	reservedDir = "/.nullspace"
	// maxListEntries bounds one GET /files/list answer.
	maxListEntries = 100_000
	// tempPattern names uploads in progress, next to their destination.
	tempPattern = ".nullspace-upload-*"
)

// fileService serves the machine's files. Paths are absolute and cleaned;
// writes are atomic (temp file, fsync, rename).
type fileService struct {
	maxFileBytes int64
	// commits are the uploads being renamed into place, by temporary
	// path: file watches report them as writes of their destination.
	commits sync.Map // string → commit
}

type commit struct {
	created bool // the destination did not exist
	at      time.Time
}

// upload tells file watches whether path is an upload's temporary file,
// and whether its destination is new (fswatch.Options.Upload).
func (s *fileService) upload(path string) (upload, created bool) {
	if !strings.HasPrefix(filepath.Base(path), strings.TrimSuffix(tempPattern, "*")) {
		return false, false
	}
	v, ok := s.commits.Load(path)
	return true, ok && v.(commit).created
}

// committing records an upload about to be renamed into place; records
// older than a minute (every watch has read them) go.
func (s *fileService) committing(tmp string, created bool) {
	now := time.Now()
	s.commits.Range(func(k, v any) bool {
		if now.Sub(v.(commit).at) > time.Minute {
			s.commits.Delete(k)
		}
		return true
	})
	s.commits.Store(tmp, commit{created: created, at: now})
}

func (a *Agent) readFile(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	// O_NONBLOCK: opening a FIFO must not hang; it is refused below.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fileError(err, path)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileError(err, path)
	}
	if fi.IsDir() {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory,
			fmt.Sprintf("%s is a directory", path), "list it with GET /files/list")
	}
	if !fi.Mode().IsRegular() {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s is not a regular file", path), "read regular files only; use a command for devices and pipes")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	size := fi.Size()
	if size == 0 {
		// Files in /proc and /sys report size 0 and still have content.
		w.WriteHeader(http.StatusOK)
		_, err = io.Copy(w, f)
	} else {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		_, err = io.CopyN(w, f, size)
	}
	if err != nil {
		// Too late for an error response: the client sees a short body.
		a.log.Info("read file aborted", "path", path, "err", err)
	}
	return nil
}

func (a *Agent) writeFile(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	mode, explicitMode, err := parseMode(q.Get("mode"))
	if err != nil {
		return err
	}
	limit := a.files.maxFileBytes
	if r.ContentLength > limit {
		return tooLarge(path, limit)
	}
	res, err := a.files.write(path, mode, explicitMode, r.Body)
	if err != nil {
		if r.ContentLength < 0 && errors.Is(err, errdefs.ErrInvalidArgument) {
			drainBody(w, r)
		}
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// drainBody reads and drops what is left of a refused chunked upload, up
// to 8 MiB and for at most 2 s, before the refusal is answered. A server
// that answers and closes with unread data sends a reset, and the reset
// makes the client's kernel drop the answer it had not read yet: the
// client would see "connection reset" instead of file_too_large.
func drainBody(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.CopyN(io.Discard, r.Body, 8<<20)
	rc.SetReadDeadline(time.Time{})
}

// write streams body into a temp file next to path, then renames it over
// path. A failed, aborted or oversize upload leaves nothing behind and the
// old file untouched. A symlink at path is followed. The file keeps the
// owner and, unless mode is explicit, the mode of the file it replaces; a
// new file gets the owner of its directory and mode.
func (s *fileService) write(path string, mode fs.FileMode, explicitMode bool, body io.Reader) (api.WriteResult, error) {
	target := path
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		if err := checkReserved(real); err != nil {
			return api.WriteResult{}, err
		}
		target = real
	}
	owner := -1
	var gid int
	existed := false
	switch fi, err := os.Stat(target); {
	case err == nil && fi.IsDir():
		return api.WriteResult{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory,
			fmt.Sprintf("%s is a directory", path), "write to a file path inside it")
	case err == nil:
		existed = true
		if !explicitMode {
			mode = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			owner, gid = int(st.Uid), int(st.Gid)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return api.WriteResult{}, fileError(err, path)
	}
	dir := filepath.Dir(target)
	if err := mkdirAll(dir); err != nil {
		return api.WriteResult{}, fileError(err, dir)
	}

	tmp, err := os.CreateTemp(dir, tempPattern)
	if err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, io.LimitReader(body, s.maxFileBytes+1))
	if n > s.maxFileBytes {
		return api.WriteResult{}, tooLarge(path, s.maxFileBytes)
	}
	if err != nil {
		var fsErr *fs.PathError
		if errors.As(err, &fsErr) {
			return api.WriteResult{}, fileError(err, path)
		}
		return api.WriteResult{}, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("upload of %s was interrupted", path), "send the whole file again")
	}
	if err := tmp.Chmod(mode); err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	if owner >= 0 {
		tmp.Chown(owner, gid) // best effort: needs root
	} else {
		inheritOwner(tmp.Name(), dir)
	}
	if err := tmp.Sync(); err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	if err := tmp.Close(); err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	s.committing(tmp.Name(), !existed)
	if err := os.Rename(tmp.Name(), target); err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	committed = true
	syncDir(dir)
	return api.WriteResult{Path: path, Size: n}, nil
}

func tooLarge(path string, limit int64) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeFileTooLarge,
		fmt.Sprintf("%s is larger than the limit of %d bytes", path, limit),
		"split the file, or raise the machine agent's max file size")
}

// syncDir makes a rename in dir durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func (a *Agent) removeFile(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	recursive, err := queryBool(r, "recursive")
	if err != nil {
		return err
	}
	if path == "/" {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"refusing to remove /", "remove the files inside it one by one")
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fileError(err, path)
	}
	if fi.IsDir() && recursive {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty,
			fmt.Sprintf("directory %s is not empty", path), "pass recursive=true to remove it with its contents")
	}
	if err != nil {
		return fileError(err, path)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *Agent) listFiles(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	depth := 1
	if s := r.URL.Query().Get("depth"); s != "" {
		if depth, err = strconv.Atoi(s); err != nil || depth < 1 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("invalid depth %q", s), "pass depth=1 for the directory's entries, more to descend")
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileError(err, path)
	}
	if !fi.IsDir() {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory,
			fmt.Sprintf("%s is not a directory", path), "use GET /files/stat for a single file")
	}
	entries := []api.FileInfo{}
	if err := listDir(path, depth, &entries); errors.Is(err, errTooManyEntries) {
		return err
	} else if err != nil {
		return fileError(err, path)
	}
	slices.SortFunc(entries, func(a, b api.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	writeJSON(w, http.StatusOK, api.FileList{Entries: entries})
	return nil
}

// errTooManyEntries stops a listing that grows past maxListEntries.
var errTooManyEntries = errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
	fmt.Sprintf("more than %d entries", maxListEntries), "list with a smaller depth or a deeper path")

// listDir appends the entries of dir, descending depth-1 more levels. It
// does not follow symlinks below dir. Subdirectories that cannot be read
// (permission, removed meanwhile) are skipped.
func listDir(dir string, depth int, out *[]api.FileInfo) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		if len(*out) >= maxListEntries {
			return errTooManyEntries
		}
		p := filepath.Join(dir, de.Name())
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		*out = append(*out, fileInfo(p, fi))
		if depth > 1 && fi.IsDir() {
			if err := listDir(p, depth-1, out); errors.Is(err, errTooManyEntries) {
				return err
			}
		}
	}
	return nil
}

func (a *Agent) statFile(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fileError(err, path)
	}
	writeJSON(w, http.StatusOK, fileInfo(path, fi))
	return nil
}

func (a *Agent) mkdir(w http.ResponseWriter, r *http.Request) error {
	var req api.MkdirRequest
	if err := readJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	path, err := cleanPath(req.Path)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFileExists,
			fmt.Sprintf("a file already exists at %s", path), "remove it first or choose another path")
	}
	if err := mkdirAll(path); err != nil {
		return fileError(err, path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fileError(err, path)
	}
	writeJSON(w, http.StatusOK, fileInfo(path, fi))
	return nil
}

func (a *Agent) rename(w http.ResponseWriter, r *http.Request) error {
	var req api.RenameRequest
	if err := readJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	from, err := cleanPath(req.From)
	if err != nil {
		return err
	}
	to, err := cleanPath(req.To)
	if err != nil {
		return err
	}
	if from == "/" || to == "/" {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"cannot rename /", "rename a path below /")
	}
	if _, err := os.Lstat(from); err != nil {
		return fileError(err, from)
	}
	if err := mkdirAll(filepath.Dir(to)); err != nil {
		return fileError(err, filepath.Dir(to))
	}
	if err := os.Rename(from, to); err != nil {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty,
				fmt.Sprintf("directory %s is not empty", to), "remove it first or rename to another path")
		}
		return fileError(err, to)
	}
	fi, err := os.Lstat(to)
	if err != nil {
		return fileError(err, to)
	}
	writeJSON(w, http.StatusOK, fileInfo(to, fi))
	return nil
}

// mkdirAll is os.MkdirAll that gives each directory it creates the owner
// of its parent, so files written into a user's home stay the user's.
func mkdirAll(path string) error {
	fi, err := os.Stat(path)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		return &fs.PathError{Op: "mkdir", Path: path, Err: syscall.ENOTDIR}
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(path)
	if parent != path {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		if fi, serr := os.Stat(path); serr == nil && fi.IsDir() {
			return nil // made by someone else meanwhile
		}
		return err
	}
	inheritOwner(path, parent)
	return nil
}

// inheritOwner gives path the owner of dir when the agent may (as root).
func inheritOwner(path, dir string) {
	if os.Geteuid() != 0 {
		return
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != 0 || st.Gid != 0) {
		os.Lchown(path, int(st.Uid), int(st.Gid))
	}
}

func fileInfo(path string, fi fs.FileInfo) api.FileInfo {
	info := api.FileInfo{
		Name:    fi.Name(),
		Path:    path,
		Size:    fi.Size(),
		Mode:    fmt.Sprintf("%04o", unixMode(fi.Mode())),
		ModTime: fi.ModTime().UTC(),
	}
	switch m := fi.Mode(); {
	case m.IsDir():
		info.Type = "dir"
	case m.IsRegular():
		info.Type = "file"
	case m&fs.ModeSymlink != 0:
		info.Type = "symlink"
		info.Target, _ = os.Readlink(path)
	default:
		info.Type = "other"
	}
	return info
}

func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// parseMode parses an octal mode such as 0644 or 755. The empty string is
// 0644, not explicit.
func parseMode(s string) (mode fs.FileMode, explicit bool, err error) {
	if s == "" {
		return 0o644, false, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	if err != nil || n > 0o7777 {
		return 0, false, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid mode %q", s), "pass octal permission bits such as 0644 or 0755")
	}
	mode = fs.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if n&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if n&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode, true, nil
}

func queryPath(r *http.Request, name string) (string, error) {
	return cleanPath(r.URL.Query().Get(name))
}

func queryBool(r *http.Request, name string) (bool, error) {
	return queryBoolOr(r, name, false)
}

// queryBoolOr reads a boolean parameter, def when it is absent.
func queryBoolOr(r *http.Request, name string, def bool) (bool, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid %s %q", name, s), fmt.Sprintf("pass %s=true or %s=false", name, name))
	}
	return b, nil
}

// queryCount reads a parameter that is 0 or more (0 when absent); action
// says what to pass instead of a bad one.
func queryCount(r *http.Request, name, action string) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid %s %q", name, s), action)
	}
	return n, nil
}

// cleanPath accepts absolute paths without NUL bytes, outside reservedDir,
// and returns them cleaned.
func cleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"path is required", "pass an absolute path such as /workspace/file.txt")
	case strings.IndexByte(p, 0) >= 0:
		return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"path contains a NUL byte", "remove the NUL byte from the path")
	case !strings.HasPrefix(p, "/"):
		return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("path %q is not absolute", p), "pass an absolute path such as /workspace/file.txt")
	}
	p = filepath.Clean(p)
	return p, checkReserved(p)
}

func checkReserved(p string) error {
	if p == reservedDir || strings.HasPrefix(p, reservedDir+"/") {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied,
			fmt.Sprintf("%s is reserved for the machine agent", reservedDir),
			"use another directory, such as /workspace or /tmp")
	}
	return nil
}

// fileError turns a file system error into a public one.
func fileError(err error, path string) error {
	var class error
	var code, msg, action string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		class, code = errdefs.ErrNotFound, errdefs.CodeFileNotFound
		msg, action = fmt.Sprintf("%s does not exist", path), "check the path with GET /files/list"
	case errors.Is(err, syscall.ENOTDIR):
		class, code = errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory
		msg, action = fmt.Sprintf("a parent of %s is not a directory", path), "check the path with GET /files/stat"
	case errors.Is(err, syscall.EISDIR):
		class, code = errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory
		msg, action = fmt.Sprintf("%s is a directory", path), "pass the path of a file"
	case errors.Is(err, syscall.ENOTEMPTY):
		class, code = errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty
		msg, action = fmt.Sprintf("directory %s is not empty", path), "remove its contents first"
	case errors.Is(err, fs.ErrExist):
		class, code = errdefs.ErrFailedPrecondition, errdefs.CodeFileExists
		msg, action = fmt.Sprintf("%s already exists", path), "remove it first or choose another path"
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		class, code = errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied
		msg, action = fmt.Sprintf("permission denied on %s", path), "use a path the machine can write, such as /workspace or /tmp"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		class, code = errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted
		msg, action = "no space left on the machine's disk", "remove files or use a bigger disk"
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP),
		errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.EINVAL):
		class, code = errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument
		msg, action = fmt.Sprintf("cannot use %s: %s", path, errnoText(err)), "fix the path and try again"
	default:
		return fmt.Errorf("%s: %w", path, err)
	}
	return errdefs.Wrap(err, class, code, msg, action)
}

func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return "invalid"
}
