package chunks

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"nullspace.dev/nullspace/internal/objstore"
)

// maxManifest bounds a manifest read from the store (a 256 MiB pages.img
// in 64 KiB chunks is about 600 KB of JSON).
const maxManifest = 64 << 20

// ReadManifest reads and validates the manifest at key. A missing or
// unreadable manifest is snapshot_corrupt (matching objstore.ErrNotFound
// too when it is missing); a store that does not answer is
// object_store_unavailable.
func (s *Store) ReadManifest(ctx context.Context, key string) (Manifest, error) {
	rc, err := s.Remote.Get(ctx, key)
	if errors.Is(err, objstore.ErrNotFound) {
		return Manifest{}, fmt.Errorf("read manifest: %w", corrupt(&CorruptError{Key: key, Reason: "missing", Err: err}))
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		if ctx.Err() != nil {
			return Manifest{}, fmt.Errorf("read manifest %s: %w", key, ctx.Err())
		}
		return Manifest{}, fmt.Errorf("read manifest: %w", objstore.Unavailable("read "+key, err))
	}
	var m Manifest
	if len(b) > maxManifest {
		err = fmt.Errorf("over %d bytes", maxManifest)
	} else if err = json.Unmarshal(b, &m); err == nil {
		err = m.Validate()
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest: %w", corrupt(&CorruptError{Key: key, Reason: "unreadable", Err: err}))
	}
	return m, nil
}

// fetchAttempts is how many times a chunk that fails its check is fetched
// before it is called corrupt: a body cut short by the network looks like
// a truncated object, and one more fetch tells them apart.
const fetchAttempts = 3

// Download writes m's files into dir, which must not exist: into a
// temporary sibling first, each chunk streamed through the zstd decoder
// and a sha256 hasher and written at its offset; then each file's size and
// CRC-32C are checked, the files synced, and the directory renamed into
// place. Damaged or missing data is snapshot_corrupt (a *CorruptError
// inside); a store that does not answer is object_store_unavailable.
// Nothing is left behind on failure.
func (s *Store) Download(ctx context.Context, m Manifest, dir string) (err error) {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("download to %s: %w", dir, corrupt(&CorruptError{Key: "manifest", Reason: "invalid", Err: err}))
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("download to %s: %w", dir, os.ErrExist)
	}
	tmp := filepath.Join(filepath.Dir(dir), ".tmp-"+filepath.Base(dir)+"-"+rand.Text()[:8])
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("download to %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()

	for _, f := range m.Files {
		if err := s.downloadFile(ctx, tmp, f); err != nil {
			return fmt.Errorf("download to %s: %w", dir, err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("download to %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("download to %s: %w", dir, err)
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("download to %s: %w", dir, err)
	}
	return nil
}

// downloadFile fetches f's chunks with FetchWorkers at once, each written at
// its offset, then checks the whole file's CRC-32C and syncs it.
func (s *Store) downloadFile(ctx context.Context, dir string, f File) error {
	path := filepath.Join(dir, f.Name)
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("file %s: %w", f.Name, err)
	}
	defer fh.Close()
	if err := fh.Truncate(f.Size); err != nil {
		return fmt.Errorf("file %s: %w", f.Name, err)
	}

	decs := make([]*zstd.Decoder, max(1, s.FetchWorkers))
	for i := range decs {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*maxChunk))
		if err != nil {
			return fmt.Errorf("file %s: zstd: %w", f.Name, err)
		}
		decs[i] = dec
	}
	chunks := make(chan Chunk)
	g, gctx := errgroup.WithContext(ctx)
	for _, dec := range decs {
		g.Go(func() error {
			defer dec.Close()
			for c := range chunks {
				if err := s.fetchChunk(gctx, dec, fh, f.Name, c); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(chunks)
		for _, c := range f.Chunks {
			select {
			case chunks <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err // fetchChunk names the file
	}

	// Every chunk matched its hash, so the file is what was hashed at
	// upload; the CRC-32C is the same end-to-end check the local snapshot
	// store makes, and catches a manifest that pairs the wrong chunks.
	crc := crc32.New(castagnoli)
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("file %s: %w", f.Name, err)
	}
	if _, err := io.Copy(crc, fh); err != nil {
		return fmt.Errorf("file %s: %w", f.Name, err)
	}
	if crc.Sum32() != f.CRC32C {
		return corrupt(&CorruptError{Key: "manifest", File: f.Name, Reason: "the file does not match its CRC-32C"})
	}
	if err := fh.Sync(); err != nil {
		return fmt.Errorf("file %s: %w", f.Name, err)
	}
	return fh.Close()
}

// fetchChunk gets one chunk, decodes it into the file at its offset and
// checks its length and hash. A chunk that fails its check, or whose body
// breaks off, is fetched again: a body cut short by the network must not be
// taken for a truncated object. Still wrong after fetchAttempts, it is
// corrupt; still breaking off, the store is unavailable. A missing chunk
// is corrupt at once.
func (s *Store) fetchChunk(ctx context.Context, dec *zstd.Decoder, fh *os.File, file string, c Chunk) error {
	key := ChunkKey(c.SHA256)
	var lastCorrupt *CorruptError
	var lastErr error
	for attempt := 1; attempt <= fetchAttempts; attempt++ {
		ce, err := s.fetchOnce(ctx, dec, fh, key, c)
		switch {
		case errors.Is(err, objstore.ErrNotFound):
			return corrupt(&CorruptError{Key: key, File: file, Reason: "missing", Err: err})
		case err != nil && !objstore.IsTransient(err):
			return fmt.Errorf("file %s: %w", file, err)
		case err != nil:
			lastErr, lastCorrupt = err, nil
		case ce != nil:
			ce.File = file
			lastErr, lastCorrupt = nil, ce
		default:
			return nil
		}
		if attempt == fetchAttempts {
			break
		}
		why := lastErr
		if lastCorrupt != nil {
			why = lastCorrupt
		}
		s.Log.WarnContext(ctx, "chunk fetch failed; fetching it again", "key", key, "file", file, "attempt", attempt, "err", why)
	}
	if lastCorrupt != nil {
		return corrupt(lastCorrupt)
	}
	return fmt.Errorf("file %s: %w", file, objstore.Unavailable("get "+key, lastErr))
}

// fetchOnce returns a *CorruptError when the chunk's data is wrong, or an
// error when it could not be fetched or written (transient when its body
// broke off).
func (s *Store) fetchOnce(ctx context.Context, dec *zstd.Decoder, fh *os.File, key string, c Chunk) (*CorruptError, error) {
	rc, err := s.Remote.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	body := &bodyReader{r: rc}
	if err := dec.Reset(body); err != nil {
		if body.err != nil {
			return nil, body.failure(ctx)
		}
		return &CorruptError{Key: key, Reason: "not zstd", Err: err}, nil
	}
	h := sha256.New()
	out := &fileWriter{w: io.NewOffsetWriter(fh, c.Offset)}
	// One byte more than the chunk's length tells a long chunk apart.
	n, err := io.Copy(io.MultiWriter(h, out), io.LimitReader(dec, c.Len+1))
	switch {
	case out.err != nil:
		return nil, fmt.Errorf("write %s: %w", fh.Name(), out.err)
	case body.err != nil:
		return nil, body.failure(ctx)
	case err != nil:
		// The body arrived whole but does not decode: a bit flip or a
		// truncated object.
		return &CorruptError{Key: key, Reason: "does not decode", Err: err}, nil
	case n != c.Len:
		return &CorruptError{Key: key, Reason: fmt.Sprintf("decodes to %d bytes, want %d", n, c.Len)}, nil
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.SHA256 {
		return &CorruptError{Key: key, Reason: "does not match its sha256"}, nil
	}
	return nil, nil
}

// bodyReader remembers a failure of the body itself (not its clean end),
// so a connection that broke is told apart from data that is wrong.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *bodyReader) failure(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return objstore.Transient(fmt.Errorf("read body: %w", b.err))
}

// fileWriter remembers a failure to write the local file (disk full), which
// is neither the store's fault nor the data's.
type fileWriter struct {
	w   io.Writer
	err error
}

func (f *fileWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		f.err = err
	}
	return n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
