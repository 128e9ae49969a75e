package chunks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"nullspace.dev/nullspace/internal/objstore"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Stats counts what an Upload did.
type Stats struct {
	BytesRead      int64 // uncompressed bytes of the files
	Chunks         int   // chunks in the manifest, repeats included
	ChunksUploaded int   // chunks put (new, or refreshed, see Upload)
	BytesUploaded  int64 // compressed bytes put, the manifest excluded
}

// Upload stores files (names relative to dir) as chunks and then writes
// their manifest at key, with meta in it. A chunk already in the store is
// not put again, unless it is older than Grace/2: then it is put again to
// renew its LastModified, so that a Sweep running while this upload is in
// flight (it only deletes chunks older than Grace that no live manifest
// names) cannot delete a chunk this manifest is about to name, provided
// the upload finishes within Grace/2.
//
// The manifest is written last: if Upload fails or the process dies, no
// manifest names a missing chunk, and the chunks already put are swept
// once they are older than Grace. Calling Upload again is idempotent.
func (s *Store) Upload(ctx context.Context, key, dir string, files []string, meta json.RawMessage) (Manifest, Stats, error) {
	m := Manifest{Version: manifestVersion, Meta: meta}
	var st Stats // BytesRead and Chunks: this goroutine's; the rest under mu
	var mu sync.Mutex
	zlens := map[string]int64{} // sha → compressed length, once put or found; under mu

	// One single-threaded encoder per worker: on 2 cores, two chunks
	// compressed at once use both without zstd's own goroutines.
	encs := make([]*zstd.Encoder, max(1, s.Workers))
	for i := range encs {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return Manifest{}, Stats{}, fmt.Errorf("upload %s: zstd: %w", key, err)
		}
		encs[i] = enc
	}
	type job struct {
		sha  string
		data []byte
	}
	jobs := make(chan job, len(encs))
	g, gctx := errgroup.WithContext(ctx)
	for _, enc := range encs {
		g.Go(func() error {
			defer enc.Close()
			for j := range jobs {
				zlen, put, err := s.putChunk(gctx, enc, j.sha, j.data)
				if err != nil {
					return err
				}
				mu.Lock()
				zlens[j.sha] = zlen
				if put {
					st.ChunksUploaded++
					st.BytesUploaded += zlen
				}
				mu.Unlock()
			}
			return nil
		})
	}

	// Read and hash in this goroutine; the workers compress and send.
	readErr := func() error {
		defer close(jobs)
		queued := map[string]bool{}
		for _, name := range files {
			f, err := s.readFile(gctx, dir, name, func(sha string, data []byte) error {
				if queued[sha] {
					return nil // a repeat within this upload (zero pages)
				}
				queued[sha] = true
				select {
				case jobs <- job{sha, data}:
					return nil
				case <-gctx.Done():
					return gctx.Err()
				}
			})
			if err != nil {
				return err
			}
			m.Files = append(m.Files, f)
			st.BytesRead += f.Size
			st.Chunks += len(f.Chunks)
		}
		return nil
	}()
	if err := g.Wait(); err != nil {
		return Manifest{}, Stats{}, fmt.Errorf("upload %s: %w", key, err)
	}
	if readErr != nil {
		return Manifest{}, Stats{}, fmt.Errorf("upload %s: %w", key, readErr)
	}
	for i := range m.Files {
		for j := range m.Files[i].Chunks {
			m.Files[i].Chunks[j].ZLen = zlens[m.Files[i].Chunks[j].SHA256]
		}
	}

	b, err := json.Marshal(m)
	if err != nil {
		return Manifest{}, Stats{}, fmt.Errorf("upload %s: manifest: %w", key, err)
	}
	if err := s.Remote.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		return Manifest{}, Stats{}, fmt.Errorf("upload %s: manifest: %w", key, err)
	}
	s.Log.DebugContext(ctx, "uploaded", "key", key, "files", len(m.Files), "bytes_read", st.BytesRead,
		"chunks", st.Chunks, "chunks_uploaded", st.ChunksUploaded, "bytes_uploaded", st.BytesUploaded)
	return m, st, nil
}

// readFile reads one file through the chunker, computing its CRC-32C and
// each chunk's sha256, and hands every chunk to send.
func (s *Store) readFile(ctx context.Context, dir, name string, send func(sha string, data []byte) error) (File, error) {
	fh, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return File{}, fmt.Errorf("file %s: %w", name, err)
	}
	defer fh.Close()
	f := File{Name: name}
	crc := crc32.New(castagnoli)
	next := s.Chunker.Split(io.TeeReader(fh, crc))
	for {
		data, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return File{}, fmt.Errorf("file %s: read: %w", name, err)
		}
		sum := sha256.Sum256(data)
		sha := hex.EncodeToString(sum[:])
		f.Chunks = append(f.Chunks, Chunk{SHA256: sha, Offset: f.Size, Len: int64(len(data))})
		f.Size += int64(len(data))
		if err := send(sha, data); err != nil {
			return File{}, fmt.Errorf("file %s: %w", name, err)
		}
	}
	f.CRC32C = crc.Sum32()
	return f, ctx.Err()
}

// putChunk puts one chunk unless the store has a fresh copy. It returns the
// stored (compressed) length and whether it put it.
func (s *Store) putChunk(ctx context.Context, enc *zstd.Encoder, sha string, data []byte) (int64, bool, error) {
	k := ChunkKey(sha)
	info, err := s.Remote.Stat(ctx, k)
	switch {
	case err == nil && s.Now().Sub(info.LastModified) < s.Grace/2:
		return info.Size, false, nil
	case err != nil && !errors.Is(err, objstore.ErrNotFound):
		return 0, false, fmt.Errorf("chunk %s: %w", sha, err)
	}
	z := enc.EncodeAll(data, make([]byte, 0, len(data)/2))
	if err := s.Remote.Put(ctx, k, bytes.NewReader(z), int64(len(z))); err != nil {
		return 0, false, fmt.Errorf("chunk %s: %w", sha, err)
	}
	return int64(len(z)), true, nil
}
