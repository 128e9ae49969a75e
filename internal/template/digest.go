package template

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// A template's digest names its root filesystem by content, so that a
// snapshot taken on one host finds the same files on another. It is
// "sha256:" and the hex sha256 of a canonical description of the tree:
//
//	"nullspace rootfs v1\x00"
//	then, for every entry in depth-first order with the entries of each
//	directory sorted by name (bytes), the root "." first, seven fields each
//	ended by a NUL byte:
//	  path     relative to the root, "/"-separated ("." for the root)
//	  type     d (directory), f (regular file), l (symbolic link),
//	           c / b (character / block device), p (FIFO)
//	  mode     the permission, setuid, setgid and sticky bits, octal
//	  uid, gid decimal
//	  what     f: "<size> <sha256 of the content, hex>", or "= <path>" for a
//	           further name of a file already listed (a hard link);
//	           l: the link's target; c, b: "<major> <minor>"; d, p: empty
//	  xattr    the security.capability extended attribute of a regular
//	           file, hex; empty if none (the only one the templates' tars
//	           keep, tarFlags)
//
// Times (mtime, atime, ctime) are left out: they differ between two copies
// of the same files, and runsc does not check them when it restores
// (runsc/boot/restore.go passes vfs.CompleteRestoreOptions{} with
// ValidateFileModificationTimestamps false). Sockets are left out too:
// tar cannot carry them, and one without its listener is useless. So is a
// directory's size, which depends on the filesystem.
//
// The digest is computed when a build commits (every path: built-in,
// Build, BuildUpload) and kept in template.json. A template made by an
// older binary has none; Digest computes it on first use, and Open starts
// doing so for all of them in the background, so that normally the first
// use finds it there (see Digest).

const digestPrefix = "sha256:"

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidateDigest reports whether d is a template digest, sha256:<64 hex>.
func ValidateDigest(d string) error {
	if !digestRE.MatchString(d) {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid template digest %q", d), "give sha256: followed by 64 lower-case hex digits")
	}
	return nil
}

// digestHex is d without its "sha256:".
func digestHex(d string) string { return d[len(digestPrefix):] }

// scan is one canonical walk of a root filesystem.
type scan struct {
	digest string
	size   int64 // apparent size of the regular files, each file once however many names it has
}

// scanTree walks the root filesystem dir in canonical order and returns
// its digest and size. If tw is not nil, it also writes the tree to tw as
// a tar in the same order (see writeEntry), so that what is written is
// exactly what was digested, and closes tw.
func scanTree(ctx context.Context, dir string, tw *tar.Writer) (scan, error) {
	h := sha256.New()
	io.WriteString(h, "nullspace rootfs v1\x00")
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{} // first path of each multiply linked file
	var sc scan
	buf := make([]byte, 256<<10)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", rel)
		}
		e := node{rel: filepath.ToSlash(rel), mode: uint32(st.Mode) & 0o7777, uid: st.Uid, gid: st.Gid, mtime: fi.ModTime()}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			e.typ = 'd'
		case syscall.S_IFREG:
			e.typ, e.size = 'f', st.Size
			if st.Nlink > 1 {
				k := inode{uint64(st.Dev), st.Ino}
				if first, ok := links[k]; ok {
					e.linkTo = first
					break
				}
				links[k] = e.rel
			}
			sc.size += st.Size
		case syscall.S_IFLNK:
			e.typ = 'l'
			if e.target, err = os.Readlink(p); err != nil {
				return err
			}
		case syscall.S_IFCHR, syscall.S_IFBLK:
			e.typ = 'c'
			if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
				e.typ = 'b'
			}
			e.major, e.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		case syscall.S_IFIFO:
			e.typ = 'p'
		case syscall.S_IFSOCK:
			return nil
		default:
			return fmt.Errorf("%s: unknown file type %o", e.rel, st.Mode&syscall.S_IFMT)
		}
		if e.typ == 'f' && e.linkTo == "" {
			return e.hashFile(p, h, tw, buf)
		}
		e.record(h)
		return e.writeHeader(tw)
	})
	if err == nil && tw != nil {
		err = tw.Close()
	}
	if err != nil {
		return scan{}, fmt.Errorf("scan %s: %w", dir, err)
	}
	sc.digest = digestPrefix + hex.EncodeToString(h.Sum(nil))
	return sc, nil
}

// node is one file of a walk.
type node struct {
	rel          string
	typ          byte
	mode         uint32
	uid, gid     uint32
	size         int64
	linkTo       string // a regular file's first name, if this is a further one
	target       string // a symbolic link's
	major, minor uint32
	xattrCap     []byte
	sha          string
	mtime        time.Time
}

// record writes e's fields to the digest (see the comment at the top).
func (e *node) record(h hash.Hash) {
	var what string
	switch {
	case e.typ == 'f' && e.linkTo != "":
		what = "= " + e.linkTo
	case e.typ == 'f':
		what = strconv.FormatInt(e.size, 10) + " " + e.sha
	case e.typ == 'l':
		what = e.target
	case e.typ == 'c' || e.typ == 'b':
		what = fmt.Sprintf("%d %d", e.major, e.minor)
	}
	fmt.Fprintf(h, "%s\x00%c\x00%o\x00%d\x00%d\x00%s\x00%s\x00",
		e.rel, e.typ, e.mode, e.uid, e.gid, what, hex.EncodeToString(e.xattrCap))
}

// hashFile reads the regular file p (opened without following a link),
// hashing its content and copying it to tw after its header.
func (e *node) hashFile(p string, h hash.Hash, tw *tar.Writer, buf []byte) error {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) { // O_NOATIME on a file root does not own, in a user namespace
		f, err = os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	e.xattrCap, err = fileCap(f)
	if err != nil {
		return fmt.Errorf("%s: %w", e.rel, err)
	}
	if err := e.writeHeader(tw); err != nil {
		return err
	}
	fh := sha256.New()
	var w io.Writer = fh
	if tw != nil {
		w = io.MultiWriter(fh, tw)
	}
	n, err := io.CopyBuffer(w, io.LimitReader(f, e.size+1), buf)
	if err != nil {
		return fmt.Errorf("%s: %w", e.rel, err)
	}
	if n != e.size {
		return fmt.Errorf("%s: changed while read (%d bytes, stat said %d)", e.rel, n, e.size)
	}
	e.sha = hex.EncodeToString(fh.Sum(nil))
	e.record(h)
	return nil
}

// fileCap returns f's security.capability attribute, nil if it has none.
func fileCap(f *os.File) ([]byte, error) {
	b := make([]byte, 64)
	for {
		n, err := unix.Fgetxattr(int(f.Fd()), "security.capability", b)
		switch {
		case err == nil:
			return b[:n], nil
		case errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case errors.Is(err, unix.ERANGE) && len(b) < 64<<10:
			b = make([]byte, 2*len(b))
		default:
			return nil, fmt.Errorf("read security.capability: %w", err)
		}
	}
}

// writeHeader writes e's tar header, if there is a tar: the canonical tar
// of a template has the entries in the walk's order, numeric owners, the
// walk's modes, hard links to the first name, mtimes (so that a copy
// fetched from the object store looks like the original) and
// security.capability.
func (e *node) writeHeader(tw *tar.Writer) error {
	if tw == nil {
		return nil
	}
	hdr := &tar.Header{Name: e.rel, Mode: int64(e.mode), Uid: int(e.uid), Gid: int(e.gid),
		ModTime: e.mtime, Format: tar.FormatPAX}
	switch e.typ {
	case 'd':
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if e.rel == "." {
			hdr.Name = "./"
		}
	case 'f':
		if e.linkTo != "" {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, e.linkTo
			break
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, e.size
		if e.xattrCap != nil {
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(e.xattrCap)}
		}
	case 'l':
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.target
	case 'c', 'b':
		hdr.Typeflag = tar.TypeChar
		if e.typ == 'b' {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(e.major), int64(e.minor)
	case 'p':
		hdr.Typeflag = tar.TypeFifo
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: tar: %w", e.rel, err)
	}
	return nil
}

// Digest returns the digest of the ready template name (see the top of
// this file). A template made by an older binary has none recorded: it is
// computed now (about a second for base, see the commit) and recorded in
// template.json, unless the template was replaced meanwhile, in which case
// the new one's is returned. Open computes the missing ones in the
// background, so this normally only reads.
func (s *Store) Digest(ctx context.Context, name string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("template digest: %w", err)
	}
	for attempt := 0; ; attempt++ {
		m, err := s.get(name)
		if err != nil {
			return "", fmt.Errorf("template digest %s: %w", name, err)
		}
		if m.State != api.TemplateReady {
			return "", fmt.Errorf("template digest %s: %w", name, errNotReady(name, m.State))
		}
		if m.Digest != "" {
			return m.Digest, nil
		}
		id, err := s.identity(name, m)
		if err != nil {
			return "", fmt.Errorf("template digest %s: %w", name, err)
		}
		v, err, _ := s.flight.Do("digest:"+id.String(), func() (any, error) {
			return s.backfillDigest(ctx, name, id)
		})
		if errors.Is(err, errReplaced) && attempt < 3 {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("template digest %s: %w", name, err)
		}
		return v.(string), nil
	}
}

// backfillDigest computes the digest of the template id names and records
// it, if the template is still that one.
func (s *Store) backfillDigest(ctx context.Context, name string, id identity) (string, error) {
	start := time.Now()
	sc, err := scanTree(ctx, filepath.Join(s.dir, name, rootfsName), nil)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		// Most likely deleted or replaced under the walk.
		if cur, rerr := s.readMeta(filepath.Join(s.dir, name)); rerr != nil || !id.matches(s, name, cur) {
			return "", errReplaced
		}
		return "", err
	}
	err = s.updateMeta(name, id, func(m *meta) {
		if m.Digest == "" {
			m.Digest = sc.digest
		}
	})
	if err != nil {
		return "", err
	}
	s.log.Info("template digest computed", "template", name, "digest", sc.digest,
		"duration", time.Since(start).Round(time.Millisecond))
	return sc.digest, nil
}

// errReplaced says that a template was deleted or replaced while something
// about the old one was being worked out.
var errReplaced = errors.New("template replaced meanwhile")

// identity tells one template of a name from a later one of the same name:
// the inode of its directory (a new build is renamed into place, a deleted
// one moved away) and its creation time (an inode number can be reused).
type identity struct {
	ino     uint64
	created time.Time
}

func (id identity) String() string {
	return strconv.FormatUint(id.ino, 10) + "@" + id.created.Format(time.RFC3339Nano)
}

func (s *Store) identity(name string, m meta) (identity, error) {
	fi, err := os.Stat(filepath.Join(s.dir, name))
	if err != nil {
		return identity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return identity{}, errors.New("no stat")
	}
	return identity{ino: st.Ino, created: m.CreatedAt}, nil
}

func (id identity) matches(s *Store, name string, m meta) bool {
	cur, err := s.identity(name, m)
	return err == nil && m.State == api.TemplateReady && cur.ino == id.ino && cur.created.Equal(id.created)
}

// updateMeta changes the template.json of the ready template id, under the
// name's build lock (so that no build of the name renames itself into place
// meanwhile); errReplaced if name is another template by now.
func (s *Store) updateMeta(name string, id identity, change func(*meta)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lock, err := lockWait(ctx, s.lockPath(name), nil)
	if err != nil {
		// Held this long: the name is being built anew, so it was deleted.
		return errReplaced
	}
	defer lock.Close()
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	m, err := s.readMeta(filepath.Join(s.dir, name))
	if err != nil || !id.matches(s, name, m) {
		return errReplaced
	}
	change(&m)
	return writeJSON(filepath.Join(s.dir, name, metaFile), m)
}
