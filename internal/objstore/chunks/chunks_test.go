package chunks_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/memstore"
)

const mib = 1 << 20

var fast = objstore.Backoff{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Millisecond}

// newStore returns a chunk store on a fresh fake, retried as the real one is.
func newStore(t *testing.T) (*chunks.Store, *memstore.Store) {
	t.Helper()
	m := memstore.New()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := chunks.New(objstore.WithRetry(m, fast, log), log)
	// The machinery's tests count chunks on a fixed grid; TestCDC covers
	// the default chunker.
	s.Chunker = chunks.Fixed(mib)
	return s, m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// random returns n bytes that do not compress, the same for the same seed.
func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	r := rand.NewChaCha8(key)
	r.Read(b)
	return b
}

func writeDir(t *testing.T, files map[string][]byte) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return dir, names
}

func checkDir(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s: got %d bytes that differ from the %d uploaded", name, len(got), len(data))
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(want) {
		t.Errorf("%s has %d entries, want %d", dir, len(entries), len(want))
	}
}

// checkNoTemp fails if a download left anything in parent.
func checkNoTemp(t *testing.T, parent string) {
	t.Helper()
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		t.Errorf("left behind in %s: %s", parent, e.Name())
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name           string
		files          map[string][]byte
		wantChunks     int
		wantUploaded   int
		wantCompressed bool // BytesUploaded well under BytesRead
	}{
		{"small files whole", map[string][]byte{"checkpoint.img": random(1, 280<<10), "pages_meta.img": bytes.Repeat([]byte("meta"), 1000), "meta.json": []byte(`{}`)}, 3, 3, false},
		{"empty file", map[string][]byte{"empty": nil}, 0, 0, false},
		{"exactly one chunk", map[string][]byte{"f": random(2, mib)}, 1, 1, false},
		{"one byte over", map[string][]byte{"f": random(3, mib+1)}, 2, 2, false},
		{"large file in 1 MiB chunks", map[string][]byte{"pages.img": random(4, 10*mib+4096)}, 11, 11, false},
		{"repeated chunks put once, compressed", map[string][]byte{"pages.img": make([]byte, 3*mib)}, 3, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			ctx := t.Context()
			dir, names := writeDir(t, tt.files)
			meta := json.RawMessage(`{"snapshot":"s-1"}`)
			m, st, err := s.Upload(ctx, "snapshots/s-1/manifest.json", dir, names, meta)
			if err != nil {
				t.Fatal(err)
			}
			var size int64
			for _, d := range tt.files {
				size += int64(len(d))
			}
			if st.BytesRead != size || st.Chunks != tt.wantChunks || st.ChunksUploaded != tt.wantUploaded {
				t.Errorf("stats: got %+v, want %d bytes read, %d chunks, %d uploaded", st, size, tt.wantChunks, tt.wantUploaded)
			}
			if tt.wantCompressed && st.BytesUploaded*100 > st.BytesRead {
				t.Errorf("stats: %d bytes uploaded for %d of zeros, want them compressed", st.BytesUploaded, st.BytesRead)
			}

			got, err := s.ReadManifest(ctx, "snapshots/s-1/manifest.json")
			if err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(m)
			b, _ := json.Marshal(got)
			if !bytes.Equal(a, b) {
				t.Errorf("read manifest:\n got %s\nwant %s", b, a)
			}
			if string(got.Meta) != string(meta) {
				t.Errorf("meta: got %s, want %s", got.Meta, meta)
			}

			parent := t.TempDir()
			out := filepath.Join(parent, "s-1")
			if err := s.Download(ctx, got, out); err != nil {
				t.Fatal(err)
			}
			checkDir(t, out, tt.files)
		})
	}
}

// TestDedup: a second upload of an unchanged directory puts no chunk, and
// a one-page change in a 10 MiB file puts one.
func TestDedup(t *testing.T) {
	s, m := newStore(t)
	ctx := t.Context()
	pages := random(5, 10*mib)
	dir, names := writeDir(t, map[string][]byte{"pages.img": pages, "checkpoint.img": random(6, 100<<10)})
	if _, st, err := s.Upload(ctx, "snapshots/a/manifest.json", dir, names, nil); err != nil || st.ChunksUploaded != 11 {
		t.Fatalf("first upload: %+v, %v; want 11 chunks uploaded", st, err)
	}

	puts := m.Count(memstore.OpPut)
	_, st, err := s.Upload(ctx, "snapshots/b/manifest.json", dir, names, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksUploaded != 0 || st.BytesUploaded != 0 || st.Chunks != 11 {
		t.Errorf("unchanged: got %+v, want 11 chunks and none uploaded", st)
	}
	if got := m.Count(memstore.OpPut) - puts; got != 1 {
		t.Errorf("unchanged: %d puts, want 1 (the manifest)", got)
	}

	page := random(7, 4096)
	copy(pages[5*mib+8192:], page)
	if err := os.WriteFile(filepath.Join(dir, "pages.img"), pages, 0o600); err != nil {
		t.Fatal(err)
	}
	_, st, err = s.Upload(ctx, "snapshots/c/manifest.json", dir, names, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksUploaded != 1 || st.BytesUploaded < mib || st.BytesUploaded > mib+mib/8 {
		t.Errorf("one page changed: got %+v, want 1 chunk (about 1 MiB) uploaded", st)
	}
}

// TestUploadRenewsOldChunk: a present chunk older than Grace/2 is put again
// so that a concurrent Sweep cannot collect it before the manifest names it.
func TestUploadRenewsOldChunk(t *testing.T) {
	s, m := newStore(t)
	ctx := t.Context()
	dir, names := writeDir(t, map[string][]byte{"f": random(8, 2*mib)})
	man, _, err := s.Upload(ctx, "snapshots/a/manifest.json", dir, names, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := man.Files[0].Chunks[0].SHA256
	if err := m.SetModTime(chunks.ChunkKey(old), time.Now().Add(-s.Grace/2-time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, st, err := s.Upload(ctx, "snapshots/b/manifest.json", dir, names, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksUploaded != 1 {
		t.Errorf("got %d chunks uploaded, want 1 (the old one renewed)", st.ChunksUploaded)
	}
	info, err := m.Stat(ctx, chunks.ChunkKey(old))
	if err != nil || time.Since(info.LastModified) > time.Minute {
		t.Errorf("the old chunk: %+v, %v; want it renewed", info, err)
	}
}

// TestCorrupt: damaged or missing stored data is snapshot_corrupt, never
// accepted, and the download leaves nothing behind.
func TestCorrupt(t *testing.T) {
	tests := []struct {
		name      string
		damage    func(t *testing.T, m *memstore.Store, man *chunks.Manifest)
		wantGets  int // gets of the damaged chunk; 0 to skip the check
		wantNotFn bool
	}{
		{"bit flip", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			mutate(t, m, man, func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b })
		}, 3, false},
		{"truncated", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			mutate(t, m, man, func(b []byte) []byte { return b[:len(b)-100] })
		}, 3, false},
		{"empty", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			mutate(t, m, man, func(b []byte) []byte { return nil })
		}, 3, false},
		{"not zstd", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			mutate(t, m, man, func(b []byte) []byte { return []byte("<Error>InternalError</Error>") })
		}, 3, false},
		{"missing", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			if err := m.Delete(t.Context(), chunks.ChunkKey(man.Files[0].Chunks[1].SHA256)); err != nil {
				t.Fatal(err)
			}
		}, 1, true},
		{"chunks in the wrong order (the whole-file CRC)", func(t *testing.T, m *memstore.Store, man *chunks.Manifest) {
			// Each chunk matches its address and length; only the
			// CRC-32C of the whole file can see the swap.
			c := man.Files[0].Chunks
			c[0].SHA256, c[1].SHA256 = c[1].SHA256, c[0].SHA256
			c[0].ZLen, c[1].ZLen = c[1].ZLen, c[0].ZLen
		}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, m := newStore(t)
			ctx := t.Context()
			files := map[string][]byte{"pages.img": random(9, 3*mib)}
			dir, names := writeDir(t, files)
			man, _, err := s.Upload(ctx, "snapshots/x/manifest.json", dir, names, nil)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(t, m, &man)
			gets := m.Count(memstore.OpGet)
			parent := t.TempDir()
			err = s.Download(ctx, man, filepath.Join(parent, "x"))
			checkCorrupt(t, err)
			var ce *chunks.CorruptError
			if errors.As(err, &ce) && errors.Is(err, objstore.ErrNotFound) != tt.wantNotFn {
				t.Errorf("errors.Is(err, ErrNotFound) = %v, want %v", !tt.wantNotFn, tt.wantNotFn)
			}
			if tt.wantGets > 0 {
				// Chunk 0 is fetched once; the damaged chunk wantGets
				// times; chunk 2 at most once (a worker may have
				// started it).
				if got := m.Count(memstore.OpGet) - gets; got < 1+tt.wantGets || got > 2+tt.wantGets {
					t.Errorf("%d gets, want %d of the damaged chunk besides the others", got, tt.wantGets)
				}
			}
			checkNoTemp(t, parent)
		})
	}
}

// TestCorruptManifest: a manifest that is missing or damaged is
// snapshot_corrupt.
func TestCorruptManifest(t *testing.T) {
	s, m := newStore(t)
	ctx := t.Context()
	for key, body := range map[string]string{
		"snapshots/garbage/manifest.json":    "{not json",
		"snapshots/traverse/manifest.json":   `{"version":1,"files":[{"name":"../../etc/x","size":0,"chunks":[]}]}`,
		"snapshots/gap/manifest.json":        `{"version":1,"files":[{"name":"f","size":10,"chunks":[{"sha256":"` + strings.Repeat("a", 64) + `","offset":2,"len":8,"zlen":9}]}]}`,
		"snapshots/newversion/manifest.json": `{"version":2,"files":[]}`,
	} {
		m.Put(ctx, key, strings.NewReader(body), int64(len(body)))
	}
	for _, key := range []string{"snapshots/garbage/manifest.json", "snapshots/traverse/manifest.json",
		"snapshots/gap/manifest.json", "snapshots/newversion/manifest.json", "snapshots/missing/manifest.json"} {
		_, err := s.ReadManifest(ctx, key)
		checkCorrupt(t, err)
	}
}

// TestFaults: 500s and slow answers are retried; a store that stays down is
// object_store_unavailable, with no manifest written and nothing left on
// disk; a cancelled context ends an upload or download at once.
func TestFaults(t *testing.T) {
	files := map[string][]byte{"pages.img": random(10, 3*mib), "checkpoint.img": random(11, 1000)}
	tests := []struct {
		name     string
		fault    memstore.Fault
		download bool // inject before the download instead of the upload
		timeout  time.Duration
		check    func(t *testing.T, err error)
	}{
		{"upload: 500s then success", memstore.Fault{Op: memstore.OpPut, Times: 3}, false, 0, wantNil},
		{"upload: stat 500s then success", memstore.Fault{Op: memstore.OpStat, Times: 3}, false, 0, wantNil},
		{"upload: persistent 500s", memstore.Fault{Op: memstore.OpPut}, false, 0, wantUnavailable},
		{"upload: manifest put fails", memstore.Fault{Op: memstore.OpPut, KeyPrefix: "snapshots/"}, false, 0, wantUnavailable},
		{"upload: slow store, ctx deadline", memstore.Fault{Op: memstore.OpPut, Delay: time.Hour}, false, 100 * time.Millisecond, wantDeadline},
		{"download: 500s then success", memstore.Fault{Op: memstore.OpGet, Times: 3}, true, 0, wantNil},
		{"download: persistent 500s", memstore.Fault{Op: memstore.OpGet}, true, 0, wantUnavailable},
		{"download: slow store, ctx deadline", memstore.Fault{Op: memstore.OpGet, Delay: time.Hour}, true, 100 * time.Millisecond, wantDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, m := newStore(t)
			// The deadline, if any, is for the phase with the fault.
			faulted := t.Context()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				faulted, cancel = context.WithTimeout(faulted, tt.timeout)
				defer cancel()
			}
			ctx := t.Context()
			if !tt.download {
				ctx = faulted
			}
			dir, names := writeDir(t, files)
			const key = "snapshots/f/manifest.json"
			if !tt.download {
				m.Inject(tt.fault)
			}
			start := time.Now()
			man, _, err := s.Upload(ctx, key, dir, names, nil)
			if !tt.download {
				tt.check(t, err)
				if _, statErr := m.Stat(t.Context(), key); (err == nil) != (statErr == nil) {
					t.Errorf("upload error %v, manifest stat %v: want a manifest exactly when the upload succeeded", err, statErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				m.Inject(tt.fault)
				parent := t.TempDir()
				out := filepath.Join(parent, "f")
				err = s.Download(faulted, man, out)
				tt.check(t, err)
				if err == nil {
					checkDir(t, out, files)
				} else {
					checkNoTemp(t, parent)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestBodyBreaksOff: a chunk whose body breaks off mid-way is fetched again,
// and a store whose bodies keep breaking is unavailable, not corrupt.
func TestBodyBreaksOff(t *testing.T) {
	for _, breaks := range []int{1, 100} {
		s, m := newStore(t)
		ctx := t.Context()
		files := map[string][]byte{"f": random(12, 2*mib)}
		dir, names := writeDir(t, files)
		man, _, err := s.Upload(ctx, "snapshots/b/manifest.json", dir, names, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Remote = objstore.WithRetry(&breakingBodies{Store: m, left: breaks}, fast, s.Log)
		out := filepath.Join(t.TempDir(), "b")
		err = s.Download(ctx, man, out)
		if breaks == 1 {
			if err != nil {
				t.Errorf("one broken body: got %v, want a second fetch to succeed", err)
			}
			checkDir(t, out, files)
		} else if p := errdefs.Classify(err); p.Code != errdefs.CodeObjectStoreUnavailable {
			t.Errorf("bodies always breaking: got %v (%s), want object_store_unavailable", err, p.Code)
		}
	}
}

// breakingBodies cuts the first `left` bodies it serves after 1000 bytes
// with a connection reset.
type breakingBodies struct {
	*memstore.Store
	mu   sync.Mutex
	left int
}

func (b *breakingBodies) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := b.Store.Get(ctx, key)
	if err != nil || !strings.HasPrefix(key, chunks.ChunkPrefix) {
		return rc, err
	}
	if b.take() {
		return io.NopCloser(io.MultiReader(io.LimitReader(rc, 1000), errReader{})), nil
	}
	return rc, nil
}

func (b *breakingBodies) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left == 0 {
		return false
	}
	b.left--
	return true
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) {
	return 0, errors.New("read tcp: connection reset by peer")
}

func wantNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("got %v, want success after retries", err)
	}
}

func wantUnavailable(t *testing.T, err error) {
	t.Helper()
	p := errdefs.Classify(err)
	if p.Code != errdefs.CodeObjectStoreUnavailable || !p.Retryable || p.Status != 503 {
		t.Errorf("got %v (%+v), want a retryable 503 object_store_unavailable", err, p)
	}
}

func wantDeadline(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the context's deadline", err)
	}
}

func checkCorrupt(t *testing.T, err error) {
	t.Helper()
	var ce *chunks.CorruptError
	p := errdefs.Classify(err)
	if !errors.As(err, &ce) || p.Code != errdefs.CodeSnapshotCorrupt || p.Retryable {
		t.Errorf("got %v (%+v), want a *CorruptError classified snapshot_corrupt", err, p)
	}
}

func mutate(t *testing.T, m *memstore.Store, man *chunks.Manifest, fn func([]byte) []byte) {
	t.Helper()
	if err := m.Mutate(chunks.ChunkKey(man.Files[0].Chunks[1].SHA256), fn); err != nil {
		t.Fatal(err)
	}
}

// TestSweep keeps what live manifests name and what is younger than the
// grace period, and deletes the rest.
func TestSweep(t *testing.T) {
	s, m := newStore(t)
	ctx := t.Context()
	old := time.Now().Add(-2 * s.Grace)
	shared := random(20, mib)
	upload := func(key string, files map[string][]byte) chunks.Manifest {
		t.Helper()
		dir, names := writeDir(t, files)
		man, _, err := s.Upload(ctx, key, dir, names, nil)
		if err != nil {
			t.Fatal(err)
		}
		return man
	}
	const keptKey, deadKey, youngKey = "snapshots/kept/manifest.json", "snapshots/dead/manifest.json", "snapshots/young/manifest.json"
	kept := upload(keptKey, map[string][]byte{"f": append(bytes.Clone(shared), random(21, mib)...)})
	dead := upload(deadKey, map[string][]byte{"f": append(bytes.Clone(shared), random(22, mib)...)})
	// Everything so far is old.
	for _, k := range m.Keys("") {
		m.SetModTime(k, old)
	}
	// Uploaded now and not yet in the caller's keep set: an upload in flight.
	young := upload(youngKey, map[string][]byte{"f": random(23, 100)})
	orphanOld, orphanYoung := chunks.ChunkKey(strings.Repeat("0", 64)), chunks.ChunkKey(strings.Repeat("1", 64))
	m.Put(ctx, orphanOld, strings.NewReader("x"), 1)
	m.SetModTime(orphanOld, old)
	m.Put(ctx, orphanYoung, strings.NewReader("y"), 1)

	st, err := s.Sweep(ctx, []string{"snapshots/"}, func(key string) bool { return key == keptKey })
	if err != nil {
		t.Fatal(err)
	}
	want := chunks.SweepStats{Manifests: 3, ManifestsDeleted: 1, Chunks: 6, ChunksDeleted: 2}
	st.BytesDeleted = 0
	if st != want {
		t.Errorf("stats: got %+v, want %+v", st, want)
	}
	deadOnly := chunks.ChunkKey(dead.Files[0].Chunks[1].SHA256)
	for key, wantThere := range map[string]bool{
		keptKey: true, deadKey: false, youngKey: true,
		chunks.ChunkKey(kept.Files[0].Chunks[0].SHA256): true, // shared with the dead one
		chunks.ChunkKey(kept.Files[0].Chunks[1].SHA256): true,
		deadOnly: false,
		chunks.ChunkKey(young.Files[0].Chunks[0].SHA256): true,
		orphanOld: false, orphanYoung: true,
	} {
		if _, err := m.Stat(ctx, key); (err == nil) != wantThere {
			t.Errorf("%s: stat %v, want present %v", key, err, wantThere)
		}
	}
	if err := s.Download(ctx, kept, filepath.Join(t.TempDir(), "k")); err != nil {
		t.Errorf("the kept manifest after the sweep: %v", err)
	}

	t.Run("an unreadable kept manifest stops chunk deletion", func(t *testing.T) {
		m.Put(ctx, "snapshots/bad/manifest.json", strings.NewReader("{"), 1)
		m.SetModTime(youngKey, old)
		before := len(m.Keys(chunks.ChunkPrefix))
		_, err := s.Sweep(ctx, []string{"snapshots/"}, func(key string) bool { return key != youngKey })
		checkCorrupt(t, err)
		if after := len(m.Keys(chunks.ChunkPrefix)); after != before {
			t.Errorf("%d chunks deleted, want none", before-after)
		}
	})

	t.Run("a manifest prefix over the chunks is refused", func(t *testing.T) {
		if _, err := s.Sweep(ctx, []string{""}, func(string) bool { return true }); err == nil {
			t.Error("got nil, want an error")
		}
	})
}

// TestCDC: the default chunker cuts by content, so bytes inserted at the
// front (pages moved after a restore) leave the later chunks' addresses as
// they were; the fixed grid loses them all. Cuts are the same on every run
// and host (a fixed polynomial).
func TestCDC(t *testing.T) {
	data := random(40, 10*mib)
	shifted := append(random(41, 3*4096), data...)
	for _, tt := range []struct {
		chunker        chunks.Chunker
		maxUploaded    int
		minAvg, maxAvg int64
	}{
		{chunks.DefaultCDC, 2, 32 << 10, 128 << 10},
		{chunks.Fixed(mib), 11, mib, mib},
	} {
		s, _ := newStore(t)
		s.Chunker = tt.chunker
		ctx := t.Context()
		dir, names := writeDir(t, map[string][]byte{"pages.img": data})
		m1, st1, err := s.Upload(ctx, "snapshots/1/manifest.json", dir, names, nil)
		if err != nil {
			t.Fatal(err)
		}
		if avg := st1.BytesRead / int64(st1.Chunks); avg < tt.minAvg || avg > tt.maxAvg {
			t.Errorf("%T: average chunk %d bytes, want %d to %d", tt.chunker, avg, tt.minAvg, tt.maxAvg)
		}
		m1again, _, _ := s.Upload(ctx, "snapshots/1b/manifest.json", dir, names, nil)
		a, _ := json.Marshal(m1)
		b, _ := json.Marshal(m1again)
		if !bytes.Equal(a, b) {
			t.Errorf("%T: the same file cut differently twice", tt.chunker)
		}
		dir2, _ := writeDir(t, map[string][]byte{"pages.img": shifted})
		m2, st2, err := s.Upload(ctx, "snapshots/2/manifest.json", dir2, names, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, isFixed := tt.chunker.(chunks.Fixed); !isFixed && st2.ChunksUploaded > tt.maxUploaded {
			t.Errorf("%T: 12 KiB inserted at the front: %d of %d chunks uploaded, want at most %d", tt.chunker, st2.ChunksUploaded, st2.Chunks, tt.maxUploaded)
		}
		if _, isFixed := tt.chunker.(chunks.Fixed); isFixed && st2.ChunksUploaded != st2.Chunks {
			t.Errorf("fixed: %d of %d chunks uploaded after a shift, want all (this is why CDC is the default)", st2.ChunksUploaded, st2.Chunks)
		}
		out := filepath.Join(t.TempDir(), "2")
		if err := s.Download(ctx, m2, out); err != nil {
			t.Fatal(err)
		}
		checkDir(t, out, map[string][]byte{"pages.img": shifted})
	}
}
