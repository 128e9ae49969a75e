package template

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"strings"

	"nullspace.dev/nullspace/internal/errdefs"
)

// The tarballs of user templates (an upload, or a file on this host) are
// untrusted input: extractUntrusted passes them through filterTar before GNU
// tar (the extraction the built-in templates use) writes them, so that only
// entries that stay inside the root filesystem reach the disk. A template
// fetched from the object store (remote.go) goes through the same filter,
// with device nodes allowed: base has /dev/null and the like, and the
// fetched tree must match its digest before anything uses it.

// tarEntryError is a tarball entry the filter refuses.
type tarEntryError struct {
	name string
	why  string
}

func (e *tarEntryError) Error() string { return fmt.Sprintf("entry %q %s", e.name, e.why) }

// errUnpackedTooLarge is returned when a tarball unpacks to more than its bound.
func errUnpackedTooLarge(limit int64) error {
	return &errdefs.Error{Class: errdefs.ErrInvalidArgument, Code: errdefs.CodeFileTooLarge, Status: 413,
		Message:         fmt.Sprintf("the tarball unpacks to more than %d bytes", limit),
		SuggestedAction: "make the root filesystem smaller, or ask the operator to raise --template-upload-max-bytes"}
}

// extractUntrusted extracts the tar stream r (plain, gzip, zstd or xz,
// recognised by its first bytes) into dir, which exists and is empty. It
// refuses absolute member names, names and hard link targets with a ".."
// element or under a symbolic link of the archive, and device nodes. If
// limit > 0 the unpacked stream may not exceed it (errUnpackedTooLarge).
//
// Errors that are the tarball's fault wrap a *tarEntryError or a read error
// of the stream; errUnpackedTooLarge is an *errdefs.Error.
func extractUntrusted(ctx context.Context, r io.Reader, dir string, limit int64) error {
	return extract(ctx, r, dir, limit, false)
}

// extract is extractUntrusted, letting device nodes through if devices.
func extract(ctx context.Context, r io.Reader, dir string, limit int64, devices bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	plain, wait, err := decompress(ctx, r)
	if err != nil {
		return err
	}
	if limit > 0 {
		plain = &limitReader{r: plain, left: limit, limit: limit}
	}
	pr, pw := io.Pipe()
	filtered := make(chan error, 1)
	go func() {
		ew := &errWriter{w: pw}
		err := filterTar(plain, ew, devices)
		if ew.err != nil {
			err = ew.err // tar stopped reading: its error says why
		}
		if err == nil {
			// Read to the end: a compressed stream's checksum comes last.
			_, err = io.Copy(io.Discard, plain)
		}
		if err == nil {
			err = wait()
		}
		pw.CloseWithError(err)
		filtered <- err
	}()
	args := append([]string{"-x", "-p", "-f", "-", "-C", dir}, tarFlags...)
	terr := command{name: "tar", args: args, stdin: pr}.run(ctx)
	pr.CloseWithError(errTarExited)
	if ferr := <-filtered; ferr != nil && !(errors.Is(ferr, errTarExited) && terr != nil) {
		cancel() // stops a decompressor still running
		wait()
		return ferr
	}
	return terr
}

var errTarExited = errors.New("tar exited")

// errWriter keeps the first error of w.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

// limitReader fails with errUnpackedTooLarge once more than limit bytes were read.
type limitReader struct {
	r           io.Reader
	left, limit int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, errUnpackedTooLarge(l.limit)
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, errUnpackedTooLarge(l.limit)
	}
	return n, err
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// decompress returns the tar stream inside r; wait reports how an external
// decompressor ended (call it once the stream was read).
func decompress(ctx context.Context, r io.Reader) (plain io.Reader, wait func() error, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(6)
	none := func() error { return nil }
	var tool string
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("read gzip: %w", err)
		}
		return gz, none, nil
	case bytes.HasPrefix(magic, zstdMagic):
		tool = "zstd"
	case bytes.HasPrefix(magic, xzMagic):
		tool = "xz"
	default:
		return br, none, nil
	}
	if _, err := exec.LookPath(tool); err != nil {
		return nil, nil, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			fmt.Sprintf("the tarball is %s-compressed and the server host has no %s", tool, tool),
			"install "+tool+" on the server host, or send a plain or gzip-compressed tarball")
	}
	cmd := exec.CommandContext(ctx, tool, "-d", "-c")
	cmd.Stdin = br
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", tool, err)
	}
	waited, werr := false, error(nil)
	wait = func() error {
		if !waited {
			waited = true
			if werr = cmd.Wait(); werr != nil {
				werr = fmt.Errorf("%s: %w: %s", tool, werr, lastBytes(strings.TrimSpace(stderr.String()), 1<<10))
			}
		}
		return werr
	}
	return out, wait, nil
}

// filterTar copies the tar stream r to w, entry by entry, refusing entries
// that could make the extraction write outside its directory, and device
// nodes unless devices. Regular files, directories, symbolic links (to any
// target: they are resolved inside the machine), hard links and FIFOs pass,
// with their modes, owners, times and extended attributes.
func filterTar(r io.Reader, w io.Writer, devices bool) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	symlinks := make(map[string]bool) // names of the archive's symbolic links
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if entries == 0 {
				return errors.New("the tarball has no entries")
			}
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("read tarball: %w", err)
		}
		switch hdr.Typeflag {
		case tar.TypeXGlobalHeader:
			continue
		case tar.TypeReg, '\x00', tar.TypeGNUSparse, tar.TypeCont:
			hdr.Typeflag = tar.TypeReg // the reader expands sparse files
		case tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
		case tar.TypeChar, tar.TypeBlock:
			if devices {
				break
			}
			return &tarEntryError{hdr.Name, "is a device node: a root filesystem needs none (the sandbox provides /dev)"}
		default:
			return &tarEntryError{hdr.Name, fmt.Sprintf("has the unsupported type %q", hdr.Typeflag)}
		}
		name, err := entryName(hdr.Name, symlinks)
		if err != nil {
			return &tarEntryError{hdr.Name, err.Error()}
		}
		if hdr.Typeflag == tar.TypeLink {
			target, err := entryName(hdr.Linkname, symlinks)
			if err == nil && target == "." {
				err = errors.New("is the root")
			}
			if err != nil {
				return &tarEntryError{hdr.Name, "is a hard link whose target " + err.Error()}
			}
			hdr.Linkname = target
			hdr.Size = 0
		}
		if hdr.Typeflag == tar.TypeSymlink {
			if name == "." {
				return &tarEntryError{hdr.Name, "makes the root a symbolic link"}
			}
			// Kept even if a later entry replaces it: nothing may go under it.
			symlinks[name] = true
		}
		hdr.Name = name
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				delete(hdr.PAXRecords, k)
			}
		}
		hdr.Format = tar.FormatUnknown // the writer picks one that holds the header
		if err := tw.WriteHeader(hdr); err != nil {
			return &tarEntryError{hdr.Name, "cannot be copied: " + err.Error()}
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return fmt.Errorf("read tarball: %w", err)
			}
		}
		entries++
	}
}

// entryName checks and cleans a member name or a hard link target: relative,
// without "..", and not under one of the archive's symbolic links (through
// which the extraction would write wherever the link points).
func entryName(name string, symlinks map[string]bool) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", errors.New("is an absolute path")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("holds a NUL byte")
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", errors.New(`has a ".." element`)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return clean, nil
	}
	for i := range len(clean) {
		if clean[i] == '/' && symlinks[clean[:i]] {
			return "", fmt.Errorf("lies under the symbolic link %q of the archive", clean[:i])
		}
	}
	return clean, nil
}
