package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The file API resolves paths itself, one component at a time from /, with
// openat(O_PATH|O_NOFOLLOW) relative to the directory before: the kernel
// never follows a symlink for it, so a link swapped in by a process of the
// machine between two calls is never followed either. The agent follows
// the symlinks it finds itself, and, acting as root, only root's: a link
// another user owns makes the whole operation start again as that user
// (foreignLinkError), so a link that user planted leads no further than
// the user could go (writing /home/user/notes.txt, a link to /etc/shadow,
// as root is permission_denied). Every call along the way runs with the
// credentials of the user the operation acts as (identity.run), so search
// permission on each directory is the user's.

// maxLinks is Linux's limit of symlinks followed in one path (ELOOP).
const maxLinks = 40

// Every call costs here (a system call under gVisor's systrap is tens of
// microseconds, and one that looks a name up may ask the gofer), so a walk
// makes as few as it can: / is opened once for the process, a directory on
// the way is opened with O_DIRECTORY (one call; a symlink there fails with
// ENOTDIR and is then looked at), and the last component is looked at with
// one fstatat, whose result the caller gets.

// rootDir is / opened O_PATH, once for the process; walks start from it
// and never close it.
var rootDir = sync.OnceValues(func() (int, error) {
	return unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
})

// closeDir closes a directory a walk opened (never the shared /).
func closeDir(fd int) {
	if root, err := rootDir(); fd >= 0 && (err != nil || fd != root) {
		unix.Close(fd)
	}
}

// pathAt is a resolved path: its parent directory, held open, and its
// last component, which is not a symlink the agent was asked to follow.
type pathAt struct {
	dir  int    // the parent directory, opened O_PATH; -1 for /
	name string // the last component; "" for /
	real string // the path with every symlink resolved
	// st is what the last component was when walk looked at it (lstat);
	// nil when it does not exist or was not looked at.
	st *unix.Stat_t
}

func (p *pathAt) close() { closeDir(p.dir) }

// isRoot reports whether p is / itself.
func (p *pathAt) isRoot() bool { return p.name == "" }

// walkOpts says how walk treats the path.
type walkOpts struct {
	// followFinal follows a symlink in the last component (read, list,
	// write); stat, remove and rename act on the link itself.
	followFinal bool
	// mkdirs creates missing directories on the way (write, mkdir,
	// rename's destination), owned like their parent when root makes them.
	mkdirs bool
	// privileged refuses to follow symlinks owned by other users than
	// root (foreignLinkError).
	privileged bool
	// giveDirs, with mkdirs, makes a missing directory the user may not
	// make as root and gives it to the user (giveDirs): E2B's envd acts as
	// root and does that for a write or a mkdir. Nil: the user's own
	// permissions only.
	giveDirs *identity
}

// mkdirFor makes name in dir as o's user: mkdirAt, or, when the user may
// not and o.giveDirs is set, as root given to the user.
func mkdirFor(dir int, name string, o walkOpts) error {
	err := mkdirAt(dir, name, o.privileged)
	if errors.Is(err, unix.EACCES) && o.giveDirs != nil {
		err = o.giveDirs.mkdirGiven(dir, name)
	}
	return err
}

// foreignLinkError stops a walk done as root at a symlink another user
// owns: the operation starts again as that user.
type foreignLinkError struct {
	uid  uint32
	path string
}

func (e *foreignLinkError) Error() string {
	return fmt.Sprintf("%s is a symlink owned by uid %d", e.path, e.uid)
}

// walk resolves path (absolute, cleaned). The last component need not
// exist. Errors are *fs.PathError with the path as far as it got.
func walk(path string, o walkOpts) (*pathAt, error) {
	root, err := rootDir()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: err}
	}
	// stack holds the open directories from / down; names their names.
	stack := []int{root}
	var names []string
	closeFrom := func(i int) {
		for _, fd := range stack[i:] {
			closeDir(fd)
		}
		stack = stack[:i]
	}
	fail := func(op, name string, err error) (*pathAt, error) {
		closeFrom(0)
		return nil, &fs.PathError{Op: op, Path: "/" + filepath.Join(append(names, name)...), Err: err}
	}
	pending := components(path)
	links := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		if c == ".." {
			if len(names) > 0 {
				closeFrom(len(stack) - 1)
				names = names[:len(names)-1]
			}
			continue
		}
		final := len(pending) == 0
		cur := stack[len(stack)-1]
		if final && !o.followFinal {
			return done(stack, names, c), nil
		}
		if !final {
			// A directory on the way, in one call.
			fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if errors.Is(err, unix.ENOENT) && o.mkdirs {
				if perr := pseudoPath("/"+filepath.Join(names...), cur, "create directories in"); perr != nil {
					closeFrom(0)
					return nil, perr
				}
				if err = mkdirFor(cur, c, o); err == nil {
					fd, err = unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				}
			}
			if err == nil {
				stack = append(stack, fd)
				names = append(names, c)
				continue
			}
			if !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.ELOOP) {
				return fail("open", c, err)
			}
			// Not a directory: a symlink to follow, or the end.
		} else {
			// The last component, in one call when it is no symlink.
			var st unix.Stat_t
			err := unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW)
			if errors.Is(err, unix.ENOENT) {
				return done(stack, names, c), nil
			}
			if err != nil {
				return fail("stat", c, err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				p := done(stack, names, c)
				p.st = &st
				return p, nil
			}
		}
		// A symlink (or not a directory): look at it through a descriptor
		// of its own, so that the owner checked is the link's whose target
		// is read.
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && final {
			return done(stack, names, c), nil
		}
		if err != nil {
			return fail("open", c, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fail("stat", c, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			if o.privileged && st.Uid != 0 {
				unix.Close(fd)
				closeFrom(0)
				return nil, &foreignLinkError{uid: st.Uid, path: "/" + filepath.Join(append(names, c)...)}
			}
			target, err := readlinkFD(fd)
			unix.Close(fd)
			if err != nil {
				return fail("readlink", c, err)
			}
			if links++; links > maxLinks {
				return fail("open", c, unix.ELOOP)
			}
			if strings.HasPrefix(target, "/") {
				closeFrom(1)
				names = names[:0]
			}
			pending = append(components(target), pending...)
		case unix.S_IFDIR:
			if final {
				unix.Close(fd)
				return done(stack, names, c), nil
			}
			stack = append(stack, fd)
			names = append(names, c)
		default:
			unix.Close(fd)
			if final {
				return done(stack, names, c), nil
			}
			return fail("open", c, unix.ENOTDIR)
		}
	}
	// The path named a directory already open (/, or one ending in ..):
	// its parent and name are the ones before it.
	if len(names) == 0 {
		closeFrom(0)
		return &pathAt{dir: -1, real: "/"}, nil
	}
	last := names[len(names)-1]
	closeFrom(len(stack) - 1)
	names = names[:len(names)-1]
	return done(stack, names, last), nil
}

// done keeps the top of stack as the parent of name and closes the rest.
func done(stack []int, names []string, name string) *pathAt {
	top := len(stack) - 1
	dir := stack[top]
	for _, fd := range stack[:top] {
		closeDir(fd)
	}
	return &pathAt{dir: dir, name: name, real: "/" + filepath.Join(append(names, name)...)}
}

// components splits a path into its names, without empty ones and ".".
func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// readlinkFD reads the target of a symlink opened with O_PATH|O_NOFOLLOW.
func readlinkFD(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// mkdirAt makes directory name in dir (0755); root gives it the owner of
// dir, so that directories made in a user's home stay the user's.
func mkdirAt(dir int, name string, privileged bool) error {
	if err := unix.Mkdirat(dir, name, 0o755); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil // made by someone else meanwhile
		}
		return err
	}
	if privileged {
		inheritOwnerAt(dir, name)
	}
	return nil
}

// inheritOwnerAt gives name in dir the owner of dir, when it is not root.
func inheritOwnerAt(dir int, name string) {
	var st unix.Stat_t
	if unix.Fstat(dir, &st) == nil && (st.Uid != 0 || st.Gid != 0) {
		unix.Fchownat(dir, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW)
	}
}
