package agent

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/internal/errdefs"
)

// File metadata is user key/value pairs kept on a file as extended
// attributes, in the namespace E2B's envd uses, so that metadata written
// through either API reads back through the other (and a setfattr in the
// machine shows in both). Other user.* attributes are not metadata.
const (
	metadataPrefix = "user.e2b."
	// maxMetadataKey is what the kernel's 255-byte limit on an attribute
	// name leaves for the key.
	maxMetadataKey = 255 - len(metadataPrefix)
	// maxMetadataBytes bounds a file's metadata (names with their prefix,
	// and values): ext4 keeps all of an inode's attributes in one 4 KiB
	// block, and a template's disk may be ext4. envd has the same limit.
	maxMetadataBytes = 4096
)

// queryMetadata reads a write's metadata from its query, as OpenAPI's
// deepObject style puts an object there: metadata[key]=value. nil when
// there is none.
func queryMetadata(q url.Values) (map[string]string, error) {
	var md map[string]string
	for name, vs := range q {
		rest, ok := strings.CutPrefix(name, "metadata[")
		if !ok {
			continue
		}
		key, ok := strings.CutSuffix(rest, "]")
		if !ok || len(vs) != 1 {
			return nil, badMetadata(fmt.Sprintf("query parameter %q is not one metadata[KEY]=VALUE", name))
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = vs[0]
	}
	return md, checkMetadata(md)
}

// checkMetadata refuses what could not be stored, before anything is
// written. Keys and values are printable ASCII, as in the HTTP headers
// E2B's SDKs send them in.
func checkMetadata(md map[string]string) error {
	total := 0
	for k, v := range md {
		switch {
		case k == "":
			return badMetadata("a metadata key is empty")
		case len(k) > maxMetadataKey:
			return badMetadata(fmt.Sprintf("metadata key %.20q... is longer than %d bytes", k, maxMetadataKey))
		case !printable(k):
			return badMetadata(fmt.Sprintf("metadata key %q has a byte that is not printable ASCII", k))
		case !printable(v):
			return badMetadata(fmt.Sprintf("the value of metadata key %q has a byte that is not printable ASCII", k))
		}
		total += len(metadataPrefix) + len(k) + len(v)
	}
	if total > maxMetadataBytes {
		return badMetadata(fmt.Sprintf("the metadata takes %d bytes, more than the %d a file may have", total, maxMetadataBytes))
	}
	return nil
}

func printable(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func badMetadata(msg string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, msg,
		"use keys and values of printable ASCII, 4 KiB in all")
}

// setMetadata stores md on the open file f (an upload's temporary file,
// new: it has no metadata to clear). path names it in errors.
func setMetadata(f *os.File, path string, md map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(md)) {
		err := unix.Fsetxattr(int(f.Fd()), metadataPrefix+k, []byte(md[k]), 0)
		switch {
		case errors.Is(err, unix.ENOTSUP):
			return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("the file system of %s does not keep extended attributes, where metadata is stored; nothing was written", path),
				"write the file without metadata, or to another directory such as /home/user or /tmp")
		case errors.Is(err, unix.E2BIG), errors.Is(err, unix.ERANGE):
			return badMetadata(fmt.Sprintf("the file system of %s has no room for this metadata", path))
		case err != nil:
			return &os.PathError{Op: "setxattr", Path: path, Err: err}
		}
	}
	return nil
}

// readMetadata is the metadata of name in dir (a regular file or a
// directory; nil for anything else), best effort: nil when it has none or
// it cannot be read. There is no lgetxattrat, so the file is opened, which
// reading user attributes needs permission for anyway; a device or a FIFO
// is never opened. Entries whose key or value is not UTF-8 (set in the
// machine by other means) are left out: JSON and protobuf strings are
// UTF-8.
func readMetadata(dir int, name string, mode uint32) map[string]string {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		flags |= unix.O_DIRECTORY
	default:
		return nil
	}
	var fd int
	var err error
	if name == "" { // "/"
		fd, err = unix.Open("/", flags, 0)
	} else {
		fd, err = unix.Openat(dir, name, flags, 0)
	}
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	return fdMetadata(fd)
}

// fdMetadata is the metadata of the file open as fd.
func fdMetadata(fd int) map[string]string {
	buf := make([]byte, 1024)
	n, err := unix.Flistxattr(fd, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Flistxattr(fd, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Flistxattr(fd, buf)
		}
	}
	if err != nil || n <= 0 {
		return nil
	}
	var md map[string]string
	val := make([]byte, 256)
	for _, attr := range bytes.Split(buf[:n], []byte{0}) {
		key, ok := strings.CutPrefix(string(attr), metadataPrefix)
		if !ok || key == "" {
			continue
		}
		v, err := getxattr(fd, string(attr), &val)
		if err != nil || !utf8.ValidString(key) || !utf8.Valid(v) {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = string(v)
	}
	return md
}

// getxattr reads one attribute of fd into *buf, growing it as needed.
func getxattr(fd int, attr string, buf *[]byte) ([]byte, error) {
	for range 3 {
		n, err := unix.Fgetxattr(fd, attr, *buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := unix.Fgetxattr(fd, attr, nil)
			if err != nil {
				return nil, err
			}
			*buf = make([]byte, size+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		return (*buf)[:n], nil
	}
	return nil, unix.ERANGE
}
