package agent

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"nullspace.dev/nullspace/internal/mountinfo"
	"os"
	"os/user"
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
	timeout      time.Duration // bounds one call's work (Config.FileTimeout)
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

// fileUser is the user a file call acts as: its user parameter, the
// agent's own user (root) by default, as for commands. Identities are
// cached while /etc/passwd and /etc/group stay as they were: a file call
// costs a stat of each instead of a read and a parse.
func fileUser(name string) (identity, error) {
	if name == "" {
		return identity{name: "agent"}, nil // the agent's own: nothing to switch
	}
	key := accountsKey()
	users.mu.Lock()
	if users.key == key {
		if id, ok := users.m[name]; ok {
			users.mu.Unlock()
			return id, nil
		}
	} else {
		users.key, users.m = key, map[string]identity{}
	}
	users.mu.Unlock()
	id, err := lookupIdentity(name)
	if err != nil {
		return id, err
	}
	users.mu.Lock()
	if users.key == key && len(users.m) < 256 {
		users.m[name] = id
	}
	users.mu.Unlock()
	return id, nil
}

// users caches fileUser's identities for one state of the account files.
var users struct {
	mu  sync.Mutex
	key string
	m   map[string]identity
}

// ownerNames turns the numeric owners and groups statInfo records into
// their names in the machine's /etc/passwd and /etc/group, as envd
// reports them; an id without an entry stays a number. Names are cached
// for one state of the account files, as fileUser's identities are: a
// listing costs one stat of each, not a parse per entry.
func ownerNames(infos []api.FileInfo) {
	key := accountsKey()
	names.mu.Lock()
	defer names.mu.Unlock()
	if names.key != key || len(names.users)+len(names.groups) > 4096 {
		names.key, names.users, names.groups = key, map[string]string{}, map[string]string{}
	}
	for i := range infos {
		infos[i].Owner = cachedName(names.users, infos[i].Owner, func(id string) (string, error) {
			u, err := user.LookupId(id)
			if err != nil {
				return "", err
			}
			return u.Username, nil
		})
		infos[i].Group = cachedName(names.groups, infos[i].Group, func(id string) (string, error) {
			g, err := user.LookupGroupId(id)
			if err != nil {
				return "", err
			}
			return g.Name, nil
		})
	}
}

// cachedName is the name of id in m, looked up and kept when missing; an
// id that has no name (or is empty) is its own.
func cachedName(m map[string]string, id string, lookup func(string) (string, error)) string {
	if id == "" {
		return ""
	}
	if n, ok := m[id]; ok {
		return n
	}
	n, err := lookup(id)
	if err != nil || n == "" {
		n = id
	}
	m[id] = n
	return n
}

// names caches ownerNames' user and group names, by id, for one state of
// the account files.
var names struct {
	mu     sync.Mutex
	key    string
	users  map[string]string
	groups map[string]string
}

// accountsKey names the state of /etc/passwd and /etc/group: their
// sizes, modification times and inodes ("" when one cannot be read,
// which caches nothing past a change).
func accountsKey() string {
	var b strings.Builder
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			fmt.Fprintf(&b, "%s:-;", f)
			continue
		}
		fmt.Fprintf(&b, "%d:%d:%d.%d;", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return b.String()
}

// as runs op acting as id. When a walk done as root meets a symlink
// another user owns, op runs again as that user (see walk).
func as(id identity, op func(o walkOpts) error) error {
	err := id.run(func() error { return op(walkOpts{privileged: id.privileged()}) })
	var fl *foreignLinkError
	if !errors.As(err, &fl) {
		return err
	}
	owner, err := userOfUID(fl.uid)
	if err != nil {
		return err
	}
	return owner.run(func() error { return op(walkOpts{privileged: false}) })
}

// fileCtx bounds a file call's work.
func (a *Agent) fileCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), a.files.timeout)
}

func (a *Agent) readFile(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	id, err := fileUser(r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	var f *os.File
	var size int64
	err = as(id, func(o walkOpts) error {
		o.followFinal = true
		p, err := walkTarget(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		if p.isRoot() {
			return isADirectory(path)
		}
		// Look before opening: opening a device or a FIFO can act.
		var st unix.Stat_t
		if p.st != nil {
			st = *p.st // walk just looked
		} else if st, err = lstatAt(p); err != nil {
			return err
		}
		if err := readable(path, st.Mode); err != nil {
			return err
		}
		fd, err := unix.Openat(p.dir, p.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return &fs.PathError{Op: "open", Path: p.real, Err: err}
		}
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return &fs.PathError{Op: "stat", Path: p.real, Err: err}
		}
		if err := readable(path, st.Mode); err != nil { // swapped meanwhile
			unix.Close(fd)
			return err
		}
		f, size = os.NewFile(uintptr(fd), p.real), st.Size
		return nil
	})
	if err != nil {
		return fileError(err, path)
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
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

// readable refuses what GET /files does not read: directories and special
// files.
func readable(path string, mode uint32) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return nil
	case unix.S_IFDIR:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory,
			fmt.Sprintf("%s is a directory", path), "list it with GET /files/list")
	}
	return specialFile(path, mode)
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
	md, err := queryMetadata(q)
	if err != nil {
		return err
	}
	id, err := fileUser(q.Get("user"))
	if err != nil {
		return err
	}
	limit := a.files.maxFileBytes
	if r.ContentLength > limit {
		return tooLarge(path, limit)
	}
	res, err := a.files.write(id, path, mode, explicitMode, q.Get("parents_as_root") == "true", md, r.Body)
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
// path, acting as id. The file gets metadata md and no other: a new inode
// replaces the old one, whose metadata goes with it. A failed, aborted or
// oversize upload leaves nothing behind and the old file untouched. A symlink at path is followed (see
// walk for whose). The temp file is created by the user, so a new file is
// the user's; as root, the file keeps the owner and, unless mode is
// explicit, the mode of the file it replaces, and a new one gets the owner
// of its directory.
// With parentsAsRoot, missing directories on the way that the user may
// not make are made by root and given to the user (walkOpts.giveDirs).
func (s *fileService) write(id identity, path string, mode fs.FileMode, explicitMode, parentsAsRoot bool, md map[string]string, body io.Reader) (api.WriteResult, error) {
	var n int64
	err := as(id, func(o walkOpts) error {
		o.followFinal, o.mkdirs = true, true
		if parentsAsRoot {
			o.giveDirs = &id
		}
		p, err := walkTarget(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		if p.isRoot() {
			return isADirectory(path)
		}
		if err := checkPseudo(p, "write"); err != nil {
			return err
		}
		owner, gid := -1, -1
		existed := false
		switch st, err := lstatAt(p); {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
			return isADirectory(path)
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
			// Swapped in since the walk: replaced, never followed.
		case err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG:
			return specialFile(path, st.Mode)
		case err == nil:
			existed = true
			if !explicitMode {
				mode = fileMode(st.Mode)
			}
			owner, gid = int(st.Uid), int(st.Gid)
		case !errors.Is(err, fs.ErrNotExist):
			return err
		}

		tmp, tmpName, err := createTemp(p.dir)
		if err != nil {
			return &fs.PathError{Op: "create", Path: p.real, Err: err}
		}
		committed := false
		defer func() {
			if !committed {
				tmp.Close()
				unix.Unlinkat(p.dir, tmpName, 0)
			}
		}()
		// Before the body, so that a file system without extended
		// attributes refuses at once, not after the whole upload; and
		// before the chmod, since setting a user attribute needs write
		// permission by the file's mode, which 0444 would take away.
		if err := setMetadata(tmp, path, md); err != nil {
			return err
		}
		n, err = io.Copy(tmp, io.LimitReader(body, s.maxFileBytes+1))
		if n > s.maxFileBytes {
			return tooLarge(path, s.maxFileBytes)
		}
		if err != nil {
			var fsErr *fs.PathError
			if errors.As(err, &fsErr) {
				return err
			}
			return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("upload of %s was interrupted", path), "send the whole file again")
		}
		if err := tmp.Chmod(mode); err != nil {
			return err
		}
		if o.privileged {
			if owner >= 0 {
				tmp.Chown(owner, gid) // keeps the replaced file's owner
			} else {
				var dst unix.Stat_t
				if unix.Fstat(p.dir, &dst) == nil && (dst.Uid != 0 || dst.Gid != 0) {
					tmp.Chown(int(dst.Uid), int(dst.Gid))
				}
			}
		}
		if err := tmp.Sync(); err != nil {
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		s.committing(filepath.Join(filepath.Dir(p.real), tmpName), !existed)
		if err := unix.Renameat(p.dir, tmpName, p.dir, p.name); err != nil {
			return &fs.PathError{Op: "rename", Path: p.real, Err: err}
		}
		committed = true
		syncDirAt(p.dir)
		return nil
	})
	if err != nil {
		return api.WriteResult{}, fileError(err, path)
	}
	return api.WriteResult{Path: path, Size: n, Metadata: md}, nil
}

// createTemp creates an upload's temp file in dir, readable by its owner
// only until it is complete.
func createTemp(dir int) (*os.File, string, error) {
	for range 100 {
		name := strings.TrimSuffix(tempPattern, "*") + strconv.FormatUint(uint64(rand.Uint32()), 10)
		fd, err := unix.Openat(dir, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return os.NewFile(uintptr(fd), name), name, nil
	}
	return nil, "", unix.EEXIST
}

func tooLarge(path string, limit int64) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeFileTooLarge,
		fmt.Sprintf("%s is larger than the limit of %d bytes", path, limit),
		"split the file, or raise the machine agent's max file size")
}

// syncDirAt makes a rename in dir (opened O_PATH) durable; best effort.
func syncDirAt(dir int) {
	if fd, err := unix.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		unix.Fsync(fd)
		unix.Close(fd)
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
	id, err := fileUser(r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	ctx, cancel := a.fileCtx(r)
	defer cancel()
	err = as(id, func(o walkOpts) error {
		p, err := walkTarget(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		if p.isRoot() {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"refusing to remove /", "remove the files inside it one by one")
		}
		if err := checkPseudo(p, "remove"); err != nil {
			return err
		}
		st, err := lstatAt(p)
		if err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return unlinkAt(p, 0)
		}
		if recursive {
			// Refuse before anything goes: a mount point cannot be removed.
			if mounts, err := mountinfo.Under(p.real); err == nil && len(mounts) > 0 {
				return mountPoint(path, mounts[len(mounts)-1])
			}
			if err := removeContents(ctx, p.dir, p.name, p.real); err != nil {
				return err
			}
		}
		return unlinkAt(p, unix.AT_REMOVEDIR)
	})
	if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty,
			fmt.Sprintf("directory %s is not empty", path), "pass recursive=true to remove it with its contents")
	}
	if err != nil {
		return fileError(err, path)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func unlinkAt(p *pathAt, flags int) error {
	if err := unix.Unlinkat(p.dir, p.name, flags); err != nil {
		return &fs.PathError{Op: "remove", Path: p.real, Err: err}
	}
	return nil
}

// removeContents removes what directory name in dir holds, without
// following symlinks, until ctx ends.
func removeContents(ctx context.Context, dir int, name, real string) error {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: real, Err: err}
	}
	d := os.NewFile(uintptr(fd), real)
	defer d.Close()
	for {
		if _, err := d.Seek(0, io.SeekStart); err != nil {
			return err
		}
		names, err := d.Readdirnames(1024)
		if len(names) == 0 {
			if err == nil || errors.Is(err, io.EOF) {
				return nil
			}
			return &fs.PathError{Op: "readdir", Path: real, Err: err}
		}
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				return removeTimeout(real, err)
			}
			child := real + "/" + n
			var st unix.Stat_t
			if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return &fs.PathError{Op: "stat", Path: child, Err: err}
			}
			flags := 0
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := removeContents(ctx, fd, n, child); err != nil {
					return err
				}
				flags = unix.AT_REMOVEDIR
			}
			if err := unix.Unlinkat(fd, n, flags); err != nil && !errors.Is(err, unix.ENOENT) {
				return &fs.PathError{Op: "remove", Path: child, Err: err}
			}
		}
	}
}

func removeTimeout(path string, err error) error {
	return errdefs.Wrap(err, errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
		fmt.Sprintf("removing %s took too long; part of it is removed", path),
		"remove it again, or smaller parts of it, or with a command (rm -rf)")
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
	// Reading an entry's metadata opens it: a large listing that does not
	// need it asks metadata=false (about 2x faster on gVisor).
	withMetadata := r.URL.Query().Get("metadata") != "false"
	id, err := fileUser(r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	ctx, cancel := a.fileCtx(r)
	defer cancel()
	entries := []api.FileInfo{}
	err = as(id, func(o walkOpts) error {
		entries = entries[:0]
		o.followFinal = true
		p, err := walkTarget(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		fd, err := openDir(p)
		if errors.Is(err, unix.ENOTDIR) {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory,
				fmt.Sprintf("%s is not a directory", path), "use GET /files/stat for a single file")
		}
		if err != nil {
			return &fs.PathError{Op: "open", Path: p.real, Err: err}
		}
		return listDir(ctx, fd, path, depth, withMetadata, &entries)
	})
	if err != nil {
		return fileError(err, path)
	}
	slices.SortFunc(entries, func(a, b api.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	ownerNames(entries)
	writeJSON(w, http.StatusOK, api.FileList{Entries: entries})
	return nil
}

// openDir opens the directory p names for reading its entries.
func openDir(p *pathAt) (int, error) {
	if p.isRoot() {
		return unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	fd, err := unix.Openat(p.dir, p.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		err = unix.ENOTDIR // a symlink swapped in since the walk
	}
	return fd, err
}

// errTooManyEntries stops a listing that grows past maxListEntries.
var errTooManyEntries = errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
	fmt.Sprintf("more than %d entries", maxListEntries), "list with a smaller depth or a deeper path")

// listDir appends the entries of the directory open as fd (which it
// closes), named dir, descending depth-1 more levels, with their metadata
// when withMetadata. It does not follow
// symlinks below dir. Subdirectories that cannot be read (permission,
// removed meanwhile) are skipped. It stops when ctx ends.
func listDir(ctx context.Context, fd int, dir string, depth int, withMetadata bool, out *[]api.FileInfo) error {
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	for {
		names, err := d.Readdirnames(1024)
		for _, n := range names {
			if len(*out) >= maxListEntries {
				return errTooManyEntries
			}
			if err := ctx.Err(); err != nil {
				return errdefs.Wrap(err, errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
					fmt.Sprintf("listing %s took too long", dir), "list with a smaller depth or a deeper path")
			}
			var st unix.Stat_t
			if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue // removed meanwhile
			}
			p := filepath.Join(dir, n)
			info := statInfo(p, &st, readlinkAt(fd, n, st.Mode))
			if withMetadata {
				info.Metadata = readMetadata(fd, n, st.Mode)
			}
			*out = append(*out, info)
			if depth > 1 && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					continue
				}
				if err := listDir(ctx, sub, p, depth-1, withMetadata, out); err != nil {
					return err
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(names) == 0 {
			return nil
		}
	}
}

func (a *Agent) statFile(w http.ResponseWriter, r *http.Request) error {
	path, err := queryPath(r, "path")
	if err != nil {
		return err
	}
	id, err := fileUser(r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	info, err := statAs(id, path)
	if err != nil {
		return fileError(err, path)
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

// statAs describes path, a final symlink itself, as id sees it, with its
// owner's and group's names.
func statAs(id identity, path string) (api.FileInfo, error) {
	var info api.FileInfo
	err := as(id, func(o walkOpts) error {
		p, err := walk(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		info, err = infoAt(p, path)
		return err
	})
	if err != nil {
		return info, err
	}
	named := []api.FileInfo{info}
	ownerNames(named)
	return named[0], nil
}

// infoAt describes what p names (not following a symlink), as path,
// with its metadata.
func infoAt(p *pathAt, path string) (api.FileInfo, error) {
	st, err := lstatAt(p)
	if err != nil {
		return api.FileInfo{}, err
	}
	target := ""
	if !p.isRoot() {
		target = readlinkAt(p.dir, p.name, st.Mode)
	}
	info := statInfo(path, &st, target)
	info.Metadata = readMetadata(p.dir, p.name, st.Mode)
	return info, nil
}

// lstatAt is lstat of what p names.
func lstatAt(p *pathAt) (unix.Stat_t, error) {
	var st unix.Stat_t
	var err error
	if p.isRoot() {
		err = unix.Stat("/", &st)
	} else {
		err = unix.Fstatat(p.dir, p.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return st, &fs.PathError{Op: "stat", Path: p.real, Err: err}
	}
	return st, nil
}

// readlinkAt is the target of name in dir when mode says it is a symlink.
func readlinkAt(dir int, name string, mode uint32) string {
	if mode&unix.S_IFMT != unix.S_IFLNK {
		return ""
	}
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
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
	id, err := fileUser(req.User)
	if err != nil {
		return err
	}
	var info api.FileInfo
	err = as(id, func(o walkOpts) error {
		o.followFinal, o.mkdirs = true, true
		if req.ParentsAsRoot {
			o.giveDirs = &id
		}
		p, err := walkTarget(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		st, err := lstatAt(p)
		switch {
		case err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFileExists,
				fmt.Sprintf("a file already exists at %s", path), "remove it first or choose another path")
		case errors.Is(err, fs.ErrNotExist):
			if err := checkPseudo(p, "create directories"); err != nil {
				return err
			}
			if err := mkdirFor(p.dir, p.name, o); err != nil {
				return &fs.PathError{Op: "mkdir", Path: p.real, Err: err}
			}
		case err != nil:
			return err
		}
		info, err = infoAt(p, path)
		return err
	})
	if err != nil {
		return fileError(err, path)
	}
	named := []api.FileInfo{info}
	ownerNames(named)
	writeJSON(w, http.StatusOK, named[0])
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
	id, err := fileUser(req.User)
	if err != nil {
		return err
	}
	var info api.FileInfo
	errPath := from
	err = as(id, func(o walkOpts) error {
		errPath = from
		pf, err := walk(from, o)
		if err != nil {
			return err
		}
		defer pf.close()
		if err := checkReserved(pf.real); err != nil {
			return err
		}
		if err := checkPseudo(pf, "rename"); err != nil {
			return err
		}
		if _, err := lstatAt(pf); err != nil {
			return err
		}
		errPath = to
		o.mkdirs = true
		pt, err := walk(to, o)
		if err != nil {
			return err
		}
		defer pt.close()
		if err := checkReserved(pt.real); err != nil {
			return err
		}
		if pf.isRoot() || pt.isRoot() {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"cannot rename /", "rename a path below /")
		}
		if err := checkPseudo(pt, "rename"); err != nil {
			return err
		}
		if err := unix.Renameat(pf.dir, pf.name, pt.dir, pt.name); err != nil {
			if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
				return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty,
					fmt.Sprintf("directory %s is not empty", to), "remove it first or rename to another path")
			}
			if errors.Is(err, unix.EBUSY) {
				errPath = from
			}
			return &fs.PathError{Op: "rename", Path: pt.real, Err: err}
		}
		info, err = infoAt(pt, to)
		return err
	})
	if err != nil {
		return fileError(err, errPath)
	}
	named := []api.FileInfo{info}
	ownerNames(named)
	writeJSON(w, http.StatusOK, named[0])
	return nil
}

// pseudoRoots are the pseudo file systems of every machine, refused
// whatever the type of file system mounted there.
var pseudoRoots = []string{"/proc", "/sys", "/dev"}

// pseudoTypes are the statfs types of pseudo file systems.
var pseudoTypes = map[int64]string{
	unix.PROC_SUPER_MAGIC:    "proc",
	unix.SYSFS_MAGIC:         "sysfs",
	unix.DEVPTS_SUPER_MAGIC:  "devpts",
	unix.CGROUP_SUPER_MAGIC:  "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2",
	unix.DEBUGFS_MAGIC:       "debugfs",
	unix.TRACEFS_MAGIC:       "tracefs",
	unix.SECURITYFS_MAGIC:    "securityfs",
	unix.BPF_FS_MAGIC:        "bpf",
	unix.NSFS_MAGIC:          "nsfs",
}

// checkPseudo refuses to change files on a pseudo file system (/proc,
// /sys, /dev, or one mounted elsewhere).
// walkTarget walks to path as o says (see walk) and refuses the agent's
// own directory; the caller closes what it returns.
func walkTarget(path string, o walkOpts) (*pathAt, error) {
	p, err := walk(path, o)
	if err != nil {
		return nil, err
	}
	if err := checkReserved(p.real); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func checkPseudo(p *pathAt, verb string) error {
	return pseudoPath(p.real, p.dir, verb)
}

func pseudoPath(real string, dir int, verb string) error {
	for _, root := range pseudoRoots {
		if real == root || strings.HasPrefix(real, root+"/") {
			return pseudoFS(real, root, verb)
		}
	}
	var sf unix.Statfs_t
	if dir >= 0 && unix.Fstatfs(dir, &sf) == nil {
		if t, ok := pseudoTypes[int64(sf.Type)]; ok {
			return pseudoFS(real, t, verb)
		}
	}
	return nil
}

func pseudoFS(path, fsName, verb string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		fmt.Sprintf("cannot %s %s: it is on %s, a pseudo file system", verb, path, fsName),
		"the file API changes regular files only; use a command for the kernel's files")
}

func specialFile(path string, mode uint32) error {
	kind := "special file"
	switch mode & unix.S_IFMT {
	case unix.S_IFCHR:
		kind = "character device"
	case unix.S_IFBLK:
		kind = "block device"
	case unix.S_IFIFO:
		kind = "named pipe (FIFO)"
	case unix.S_IFSOCK:
		kind = "socket"
	}
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		fmt.Sprintf("%s is a %s, not a regular file", path, kind),
		"the file API reads and writes regular files only; use a command for devices, pipes and sockets")
}

func isADirectory(path string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory,
		fmt.Sprintf("%s is a directory", path), "pass the path of a file")
}

func mountPoint(path, mount string) *errdefs.Error {
	msg := fmt.Sprintf("%s is a mount point", path)
	if mount != path {
		msg = fmt.Sprintf("%s holds a mount point, %s", path, mount)
	}
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		msg+", which cannot be removed or replaced; nothing was changed",
		"remove the files inside it instead; the machine manages its mounts, such as /etc/hosts, /etc/resolv.conf and /tmp")
}

// statInfo describes a file from its stat, as path.
func statInfo(path string, st *unix.Stat_t, target string) api.FileInfo {
	info := api.FileInfo{
		Name:    filepath.Base(path),
		Path:    path,
		Size:    st.Size,
		Mode:    fmt.Sprintf("%04o", st.Mode&0o7777),
		ModTime: time.Unix(st.Mtim.Unix()).UTC(),
		// Numbers until ownerNames names them.
		Owner: strconv.FormatUint(uint64(st.Uid), 10),
		Group: strconv.FormatUint(uint64(st.Gid), 10),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		info.Type = "dir"
	case unix.S_IFREG:
		info.Type = "file"
	case unix.S_IFLNK:
		info.Type = "symlink"
		info.Target = target
	default:
		info.Type = "other"
	}
	return info
}

// fileMode is the permission bits of a stat mode as an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
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
	case errors.Is(err, syscall.EBUSY):
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			mountPoint(path, path).Message, mountPoint(path, path).SuggestedAction)
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
