// Package chunks stores directories of files (a snapshot's images, a
// template's tar) in an object store as content-addressed, zstd-compressed
// chunks listed by a manifest.
//
// A chunk's key is the sha256 of its uncompressed bytes,
// chunks/<sha[0:2]>/<sha>, so the address does not depend on the
// compressor and a chunk that two snapshots share (an idle machine's
// memory, a parent's pages in its children) is stored once. Upload puts
// only the chunks the store lacks and writes the manifest last, so a
// manifest never names a chunk that is not there. Download verifies every
// chunk's hash while it streams and the whole file's CRC-32C, and refuses
// damaged or missing data with snapshot_corrupt. Sweep deletes what no live
// manifest needs. See docs/design/store-and-objects.md, 3.4.
package chunks

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path"
	"time"

	"github.com/restic/chunker"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
)

// ChunkPrefix is where chunks live, relative to the store's prefix.
const ChunkPrefix = "chunks/"

// ChunkKey is the key of the chunk whose uncompressed bytes hash to sha
// (lower-case hex): chunks/<sha[0:2]>/<sha>. The two-character directory
// keeps a posix-backed store's directories small.
func ChunkKey(sha string) string { return ChunkPrefix + sha[:2] + "/" + sha }

// Manifest lists the files of one upload and the chunks they are made of.
type Manifest struct {
	Version int    `json:"version"` // manifestVersion
	Files   []File `json:"files"`
	// Meta is the caller's own record (a snapshot's meta.json), kept
	// opaque here.
	Meta json.RawMessage `json:"meta,omitempty"`
}

// File is one file: its size, CRC-32C (Castagnoli, as the local snapshot
// store records) and its chunks in order, which cover it exactly.
type File struct {
	Name   string  `json:"name"`
	Size   int64   `json:"size"`
	CRC32C uint32  `json:"crc32c"`
	Chunks []Chunk `json:"chunks"`
}

// Chunk is a piece of a file at Offset, Len bytes uncompressed, stored as
// ZLen bytes of zstd under ChunkKey(SHA256).
type Chunk struct {
	SHA256 string `json:"sha256"`
	Offset int64  `json:"offset"`
	Len    int64  `json:"len"`
	ZLen   int64  `json:"zlen"`
}

const manifestVersion = 1

// maxChunk bounds a chunk's length in a manifest read from the store, so a
// damaged manifest cannot make Download decode without end. Well above
// any chunker's maximum (content-defined chunking would cap at 4 MiB).
const maxChunk = 64 << 20

// Validate checks what Download relies on: plain file names (no path can
// escape the directory), chunks that cover each file exactly, and sha256
// addresses.
func (m *Manifest) Validate() error {
	if m.Version != manifestVersion {
		return fmt.Errorf("manifest version %d, this binary reads %d", m.Version, manifestVersion)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if f.Name == "" || f.Name == "." || f.Name == ".." || path.Base(f.Name) != f.Name || seen[f.Name] {
			return fmt.Errorf("manifest: bad or repeated file name %q", f.Name)
		}
		seen[f.Name] = true
		var off int64
		for _, c := range f.Chunks {
			if c.Offset != off || c.Len <= 0 || c.Len > maxChunk || c.ZLen <= 0 {
				return fmt.Errorf("manifest: file %s: chunk at %d (len %d, zlen %d) does not follow %d", f.Name, c.Offset, c.Len, c.ZLen, off)
			}
			if b, err := hex.DecodeString(c.SHA256); err != nil || len(b) != 32 {
				return fmt.Errorf("manifest: file %s: chunk at %d: bad sha256 %q", f.Name, c.Offset, c.SHA256)
			}
			off += c.Len
		}
		if off != f.Size {
			return fmt.Errorf("manifest: file %s: chunks cover %d bytes of %d", f.Name, off, f.Size)
		}
	}
	return nil
}

// Store uploads, downloads and sweeps chunked files on a Remote. Set the
// fields before first use; New gives the defaults.
type Store struct {
	Remote objstore.Remote // with retries (objstore.WithRetry)
	Log    *slog.Logger
	// Chunker cuts files; default DefaultCDC (64 KiB content-defined).
	Chunker Chunker
	// Workers is how many chunks an upload compresses and sends at once;
	// FetchWorkers how many a download fetches and decompresses at once.
	// An upload is background work and a download is in a resume's path,
	// so a server may give them different shares of a small host.
	Workers, FetchWorkers int
	// Grace protects young objects: Sweep deletes no chunk or unkept
	// manifest younger than it, and Upload re-puts a present chunk older
	// than Grace/2 (see Upload). Default 1 h.
	Grace time.Duration
	// Now is the clock compared with the store's LastModified.
	Now func() time.Time
}

// New returns a Store with the defaults; a nil log discards.
func New(r objstore.Remote, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{Remote: r, Log: log, Chunker: DefaultCDC, Workers: 2, FetchWorkers: 2, Grace: time.Hour, Now: time.Now}
}

// Chunker cuts a file into chunks: Fixed or CDC. The manifest records the
// cuts, not the chunker, so changing it needs no migration (only the first
// upload after the change shares fewer chunks).
type Chunker interface {
	// Split returns a function that yields r's next chunk each call, in
	// order, then io.EOF. Each chunk is a new slice the caller may keep.
	Split(r io.Reader) func() ([]byte, error)
}

// Fixed cuts at multiples of its size, so a page changed in place changes
// one chunk; but bytes inserted or removed move every later cut (see CDC).
// A file no larger than the size is one chunk.
type Fixed int

func (f Fixed) Split(r io.Reader) func() ([]byte, error) {
	return func() ([]byte, error) {
		if f <= 0 {
			return nil, fmt.Errorf("chunk size %d: must be positive", int(f))
		}
		buf := make([]byte, f)
		n, err := io.ReadFull(r, buf)
		switch {
		case err == nil || (err == io.ErrUnexpectedEOF && n > 0):
			return buf[:n], nil
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return nil, io.EOF
		default:
			return nil, err
		}
	}
}

// CDC cuts where a Rabin fingerprint of the last 64 bytes has AverageBits
// zero bits (restic/chunker), so bytes inserted or removed early in a file
// move only the cuts next to them. pages.img needs this: it is the packed
// list of committed pages, and after a restore a few pages appear or go
// and everything after them moves, which a fixed grid loses entirely
// (step 0 in docs/design/store-and-objects.md measured 0% reuse for fixed
// chunks and 94% for 64 KiB CDC on a machine running a server).
type CDC struct {
	AverageBits int  // 2^AverageBits is the average chunk size
	Min, Max    uint // bounds on a chunk's size
}

// DefaultCDC is the measured choice: 64 KiB on average, 16 KiB to 256 KiB.
var DefaultCDC = CDC{AverageBits: 16, Min: 16 << 10, Max: 256 << 10}

// cdcPol is fixed, never random per host: every host must cut the same
// bytes in the same places, or chunks would not dedup across hosts.
const cdcPol = chunker.Pol(0x3DA3358B4DC173)

func (c CDC) Split(r io.Reader) func() ([]byte, error) {
	ch := chunker.NewWithBoundaries(r, cdcPol, c.Min, c.Max)
	ch.SetAverageBits(c.AverageBits)
	buf := make([]byte, c.Max)
	return func() ([]byte, error) {
		chunk, err := ch.Next(buf)
		if err != nil {
			return nil, err // io.EOF at the end
		}
		// A copy the size of the chunk: the caller keeps it while a
		// worker compresses it, and Max is 4× the average.
		return bytes.Clone(chunk.Data), nil
	}
}

// CorruptError says what is wrong with stored data: a chunk whose bytes do
// not hash to its address, that decodes short or long, that is missing, or
// a manifest that cannot be read. Download and ReadManifest return it
// inside an *errdefs.Error with code snapshot_corrupt; match it with
// errors.As.
type CorruptError struct {
	Key    string // the object
	File   string // the file it belongs to; "" for a manifest
	Reason string
	Err    error // the cause, if any (objstore.ErrNotFound for a missing object)
}

func (e *CorruptError) Error() string {
	s := e.Key
	if e.File != "" {
		s = "file " + e.File + ": " + s
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *CorruptError) Unwrap() error { return e.Err }

// corrupt wraps ce as the public snapshot_corrupt error. The snapshot
// store may wrap it again with the snapshot's id (snapshot.Corrupt).
func corrupt(ce *CorruptError) error {
	msg := "the object store's copy of " + ce.Key + " is corrupt"
	if ce.File != "" {
		msg = "the object store's copy of " + ce.File + " is corrupt"
	}
	return errdefs.Wrap(ce, errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotCorrupt, msg,
		"delete this snapshot; resume from another checkpoint (GET /v1/machines/{id}/checkpoints) or create the machine anew")
}
