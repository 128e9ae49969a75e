// Package snapshot stores machine checkpoints on the local disk: each in its
// own directory, written to a temporary directory first, checksummed,
// fsynced and renamed into place, so a crash never leaves a half-written
// snapshot where a restore could find it. It also records what a checkpoint
// depends on from the host (runsc version, CPU features, platform) and
// refuses a restore where those differ.
//
// The store is a directory; the state store (SQLite) holds the rows that
// say which snapshots exist. Reconcile removes whatever is on disk without a
// row, and temporary directories left by a crash.
package snapshot

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore/chunks"
)

// File is one file of a snapshot with its size and CRC-32C. CRC-32C runs at
// memory speed with SSE4.2, so verifying a 256 MiB image costs tens of
// milliseconds; it detects corruption, not tampering (the store is the
// server's own disk).
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
}

// metaFile is the name of the metadata file inside a snapshot directory.
const metaFile = "meta.json"

const tmpPrefix = ".tmp-"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Store is a directory of snapshots, one subdirectory per snapshot id.
type Store struct {
	dir string
	// remote keeps copies of committed snapshots (nil: none; remote.go).
	remote *chunks.Store

	mu       sync.Mutex
	fetching map[string]*sync.Mutex // per snapshot id
	holds    map[string]int         // restores reading a snapshot, by id
}

// Open returns the store at dir, creating it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Path is the directory of a committed snapshot.
func (s *Store) Path(id string) string { return filepath.Join(s.dir, id) }

// Pending is a snapshot being written. Its directory is invisible to
// restores until Commit renames it into place.
type Pending struct {
	store *Store
	id    string
	dir   string
}

// Begin starts writing snapshot id into a fresh temporary directory.
func (s *Store) Begin(id string) (*Pending, error) {
	dir := filepath.Join(s.dir, tmpPrefix+id)
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot dir: %w", err)
	}
	return &Pending{store: s, id: id, dir: dir}, nil
}

// Dir is where the checkpoint is to be written.
func (p *Pending) Dir() string { return p.dir }

// Commit checksums every file, writes meta (with the file list set) as
// meta.json, fsyncs the files and the directory, and renames it into place.
// It returns the files and their total size. On error the pending directory
// is left for Abort.
func (p *Pending) Commit(meta any) ([]File, int64, error) {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, 0, err
	}
	var files []File
	var total int64
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == metaFile {
			continue
		}
		f, err := checksumAndSync(filepath.Join(p.dir, e.Name()))
		if err != nil {
			return nil, 0, fmt.Errorf("snapshot file %s: %w", e.Name(), err)
		}
		files = append(files, f)
		total += f.Size
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	b, err := json.MarshalIndent(struct {
		Files []File `json:"files"`
		Meta  any    `json:"meta"`
	}{files, meta}, "", "  ")
	if err != nil {
		return nil, 0, err
	}
	if err := writeSynced(filepath.Join(p.dir, metaFile), b); err != nil {
		return nil, 0, fmt.Errorf("snapshot metadata: %w", err)
	}
	if err := syncDir(p.dir); err != nil {
		return nil, 0, err
	}
	final := p.store.Path(p.id)
	if err := os.Rename(p.dir, final); err != nil {
		return nil, 0, fmt.Errorf("commit snapshot: %w", err)
	}
	p.dir = final
	if err := syncDir(p.store.dir); err != nil {
		return nil, 0, err
	}
	return files, total + int64(len(b)), nil
}

// Abort removes the pending directory. It is safe after a failed Commit.
func (p *Pending) Abort() error {
	if strings.HasPrefix(filepath.Base(p.dir), tmpPrefix) {
		return os.RemoveAll(p.dir)
	}
	return nil
}

// Verify checks that snapshot id has exactly the given files with their
// sizes and checksums. A mismatch is a snapshot_corrupt error.
func (s *Store) Verify(ctx context.Context, id string, files []File) error {
	dir := s.Path(id)
	if _, err := os.Stat(dir); err != nil {
		return Corrupt(id, "its directory is missing", err)
	}
	for _, want := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		got, err := checksum(filepath.Join(dir, want.Name))
		if err != nil {
			return Corrupt(id, fmt.Sprintf("file %s cannot be read", want.Name), err)
		}
		if got.Size != want.Size {
			return Corrupt(id, fmt.Sprintf("file %s is %d bytes, %d were written", want.Name, got.Size, want.Size), nil)
		}
		if got.CRC32C != want.CRC32C {
			return Corrupt(id, fmt.Sprintf("file %s does not match its checksum", want.Name), nil)
		}
	}
	return nil
}

// Corrupt is the error for a snapshot whose files are damaged.
func Corrupt(id, what string, cause error) error {
	return errdefs.Wrap(cause, errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotCorrupt,
		fmt.Sprintf("snapshot %s is corrupt: %s", id, what),
		"delete this snapshot; resume from another checkpoint (GET /v1/machines/{id}/checkpoints) or create the machine anew")
}

// Delete removes a snapshot's directory; a missing one is not an error.
func (s *Store) Delete(id string) error {
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("delete snapshot: bad id %q", id)
	}
	return os.RemoveAll(s.Path(id))
}

// Sweep removes temporary directories and snapshot directories whose id is
// not in keep. It returns the removed names.
func (s *Store) Sweep(keep map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// Usage returns the bytes used by committed snapshots.
func (s *Store) Usage() (int64, error) {
	var total int64
	err := filepath.WalkDir(s.dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total, err
}

func checksum(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return File{}, err
	}
	return File{Name: filepath.Base(path), Size: n, CRC32C: h.Sum32()}, nil
}

func checksumAndSync(path string) (File, error) {
	sum, err := checksum(path)
	if err != nil {
		return File{}, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return File{}, err
	}
	return sum, nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
