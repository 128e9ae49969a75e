package fswatch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
)

// collect reads events after after until want (type:relative-path, in
// order, others in between allowed) have all been seen.
func collect(t *testing.T, w *Watcher, after int64, want ...string) []api.FileEvent {
	t.Helper()
	var got []api.FileEvent
	deadline := time.After(5 * time.Second)
	for {
		evs, _, changed, ended := w.Read(after, 1000)
		for _, e := range evs {
			got = append(got, e)
			after = e.Seq
		}
		if containsInOrder(w.Root, got, want) {
			return got
		}
		if ended {
			t.Fatalf("watcher ended; got %s, want %v", describe(w.Root, got), want)
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("got %s, want %v", describe(w.Root, got), want)
		}
	}
}

func describe(root string, evs []api.FileEvent) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, key(root, e))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func key(root string, e api.FileEvent) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(e.Path, root), "/")
	if e.OldPath != "" {
		rel = strings.TrimPrefix(strings.TrimPrefix(e.OldPath, root), "/") + ">" + rel
	}
	return e.Type + ":" + rel
}

func containsInOrder(root string, evs []api.FileEvent, want []string) bool {
	i := 0
	for _, e := range evs {
		if i < len(want) && key(root, e) == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestWatch(t *testing.T) {
	root := t.TempDir()
	w, err := New(root, true, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	write := func(rel, data string) {
		if err := os.WriteFile(filepath.Join(root, rel), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.txt", "one")
	os.Rename(filepath.Join(root, "a.txt"), filepath.Join(root, "b.txt"))
	os.Chmod(filepath.Join(root, "b.txt"), 0o600)
	os.Remove(filepath.Join(root, "b.txt"))
	collect(t, w, 0, "create:a.txt", "write:a.txt", "rename:a.txt>b.txt", "chmod:b.txt", "remove:b.txt")

	// A new directory is watched (recursive), and what was made in it
	// before its watch was added is reported too.
	after := w.Next() - 1
	os.MkdirAll(filepath.Join(root, "d/e"), 0o755)
	write("d/e/f.txt", "x")
	collect(t, w, after, "create:d", "create:d/e", "create:d/e/f.txt")
	after = w.Next() - 1
	os.Rename(filepath.Join(root, "d"), filepath.Join(root, "moved"))
	write("moved/e/g.txt", "y")
	collect(t, w, after, "rename:d>moved", "create:moved/e/g.txt", "write:moved/e/g.txt")

	// A tree made and moved before its watches could be added is
	// followed where it went.
	after = w.Next() - 1
	os.MkdirAll(filepath.Join(root, "p/q"), 0o755)
	os.Rename(filepath.Join(root, "p"), filepath.Join(root, "r"))
	evs := collect(t, w, after, "create:p", "rename:p>r")
	if n := strings.Count(describe(root, evs), "create:p/q"); n > 1 {
		t.Errorf("p/q reported created %d times: %s", n, describe(root, evs))
	}
	after = w.Next() - 1
	write("r/q/late.txt", "z")
	collect(t, w, after, "create:r/q/late.txt")

	// A move out of the tree is a remove; into it, a create.
	outside := t.TempDir()
	after = w.Next() - 1
	os.Rename(filepath.Join(root, "moved"), filepath.Join(outside, "gone"))
	os.WriteFile(filepath.Join(outside, "in.txt"), nil, 0o644)
	os.Rename(filepath.Join(outside, "in.txt"), filepath.Join(root, "in.txt"))
	collect(t, w, after, "remove:moved", "create:in.txt")
}

// TestResume: a reader that resumes from a seq the log still holds gets
// every event after it; from further back, a count of what was lost.
func TestResume(t *testing.T) {
	root := t.TempDir()
	w, err := New(root, false, Options{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 3 {
		os.Mkdir(filepath.Join(root, string(rune('a'+i))), 0o755)
	}
	evs := collect(t, w, 0, "create:a", "create:b", "create:c")
	got, lost, _, _ := w.Read(evs[0].Seq, 100)
	if lost != 0 || len(got) != 2 || got[0].Path != filepath.Join(root, "b") {
		t.Fatalf("resume after the first: %v lost %d", describe(root, got), lost)
	}
	for i := range 10 {
		os.Mkdir(filepath.Join(root, "n"+string(rune('a'+i))), 0o755)
	}
	collect(t, w, 3, "create:nj")
	got, lost, _, _ = w.Read(0, 100)
	if lost != 13-8 || len(got) != 8 || got[0].Seq != 6 {
		t.Fatalf("from the start with 8 held of 13: %d events from %d, lost %d", len(got), got[0].Seq, lost)
	}
}

// TestRootRemoved: the watch ends when its directory goes.
func TestRootRemoved(t *testing.T) {
	root := filepath.Join(t.TempDir(), "w")
	os.Mkdir(root, 0o755)
	w, err := New(root, false, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.Remove(root)
	evs := collect(t, w, 0, "end:")
	if _, _, _, ended := w.Read(evs[len(evs)-1].Seq, 1); !ended {
		t.Fatal("not ended")
	}
	if _, err := New(filepath.Join(t.TempDir(), "nope"), false, Options{}); err == nil {
		t.Fatal("watching a missing directory")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := New(f, false, Options{}); err == nil {
		t.Fatal("watching a file")
	}
}

// TestClose: Close ends a reader's wait and the watcher.
func TestClose(t *testing.T) {
	w, err := New(t.TempDir(), true, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, _, changed, _ := w.Read(0, 1)
	w.Close()
	select {
	case <-changed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the reader")
	}
	if _, _, _, ended := w.Read(0, 1); !ended {
		t.Fatal("not ended after Close")
	}
}

// TestCloseWhileBusy: closing a watcher while changes pour in ends it;
// what its reader had read before the close is dropped, not a panic (it
// was once a close of the closed change channel).
func TestCloseWhileBusy(t *testing.T) {
	for range 300 {
		dir := t.TempDir()
		w, err := New(dir, true, Options{})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				os.WriteFile(filepath.Join(dir, "f"), []byte{byte(i)}, 0o644)
			}
		}()
		time.Sleep(time.Millisecond)
		w.Close()
		close(stop)
		<-done
		time.Sleep(time.Millisecond) // the reader goroutine handles what it read
		if _, _, _, ended := w.Read(0, 1); !ended {
			t.Fatal("not ended after Close")
		}
	}
}

// TestUploads: an upload's temporary file is not reported; its rename
// into place is a write, after a create when the file is new.
func TestUploads(t *testing.T) {
	root := t.TempDir()
	isUpload := func(p string) (bool, bool) {
		base := filepath.Base(p)
		return strings.HasPrefix(base, ".up-"), strings.HasSuffix(base, "-new")
	}
	w, err := New(root, false, Options{Upload: isUpload})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	upload := func(tmp, dest string) {
		os.WriteFile(filepath.Join(root, tmp), []byte("data"), 0o644)
		os.Chmod(filepath.Join(root, tmp), 0o600)
		os.Rename(filepath.Join(root, tmp), filepath.Join(root, dest))
	}
	upload(".up-1-new", "f.txt")
	upload(".up-2-old", "f.txt")
	os.WriteFile(filepath.Join(root, ".up-3-new"), nil, 0o644)
	os.Remove(filepath.Join(root, ".up-3-new")) // a failed upload
	os.WriteFile(filepath.Join(root, "last"), nil, 0o644)
	evs := collect(t, w, 0, "create:f.txt", "write:f.txt", "write:f.txt", "create:last")
	if d := describe(root, evs); d != "[create:f.txt write:f.txt write:f.txt create:last]" {
		t.Fatalf("events %s", d)
	}
}

// TestSplitRename: a rename whose two halves come in separate reads (a
// read can fall between them on a loaded host) is still one rename, an
// upload's rename into place still a write, and a move-out with no second
// half a remove once pairWait has passed. The watcher reads a pipe fed
// by hand, so the split is certain.
func TestSplitRename(t *testing.T) {
	ev := func(mask, cookie uint32, name string) []byte {
		n := (len(name) + 1 + 15) / 16 * 16
		b := make([]byte, unix.SizeofInotifyEvent+n)
		*(*unix.InotifyEvent)(unsafe.Pointer(&b[0])) = unix.InotifyEvent{Wd: 1, Mask: mask, Cookie: cookie, Len: uint32(n)}
		copy(b[unix.SizeofInotifyEvent:], name)
		return b
	}
	tests := []struct {
		name   string
		writes [][]byte
		want   string
	}{
		{"upload", [][]byte{ev(unix.IN_MOVED_FROM, 7, ".up-1-new"), ev(unix.IN_MOVED_TO, 7, "f.txt")},
			"[create:f.txt write:f.txt create:last]"},
		{"rename", [][]byte{ev(unix.IN_MOVED_FROM, 8, "a"), ev(unix.IN_MOVED_TO, 8, "b")},
			"[rename:a>b create:last]"},
		{"move out", [][]byte{ev(unix.IN_MOVED_FROM, 9, "gone")},
			"[remove:gone create:last]"},
	}
	defer func(d time.Duration) { pairWait = d }(pairWait)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A long wait for a pair, as a loaded host may take a while
			// between the halves; a short one for a move out, which waits
			// it out.
			pairWait = 3 * time.Second
			if len(tt.writes) == 1 {
				pairWait = 200 * time.Millisecond
			}
			r, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pw.Close()
			root := t.TempDir()
			w := &Watcher{Root: root, f: r, fd: -1, dirs: map[int32]string{1: root}, capacity: 100, next: 1,
				changed: make(chan struct{}), opts: Options{Upload: func(p string) (bool, bool) {
					base := filepath.Base(p)
					return strings.HasPrefix(base, ".up-"), strings.HasSuffix(base, "-new")
				}}}
			go w.run()
			defer w.Close()
			for _, b := range tt.writes {
				pw.Write(b)
				time.Sleep(50 * time.Millisecond) // the halves in two reads
			}
			pw.Write(ev(unix.IN_CREATE, 0, "last"))
			evs := collect(t, w, 0, "create:last")
			if d := describe(root, evs); d != tt.want {
				t.Fatalf("events %s, want %s", d, tt.want)
			}
		})
	}
}
