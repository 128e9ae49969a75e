// Package fswatch watches a directory (or a tree) with inotify and keeps a
// bounded log of what changed, numbered, so that a reader that lost its
// connection asks again from the last number it saw and misses nothing
// the log still holds.
//
// It uses inotify directly rather than fsnotify: a watch of a tree needs a
// watch per directory, added as directories appear, and a rename needs its
// two halves paired by cookie, neither of which fsnotify exposes on Linux.
package fswatch

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
)

// Limits of one watcher.
const (
	// DefaultCapacity is how many events a watcher holds for readers.
	DefaultCapacity = 4096
	// MaxDirs bounds the directories a recursive watch follows.
	MaxDirs = 8192
)

const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// ErrTooManyDirs is returned when a tree has more directories than MaxDirs.
var ErrTooManyDirs = errors.New("too many directories to watch")

// Options tune a watcher.
type Options struct {
	// Capacity is how many events it holds; 0 is DefaultCapacity.
	Capacity int
	// Upload, if set, says whether a path is a temporary file that an
	// upload is written to before it is renamed over its destination:
	// such files are not reported, and their rename is reported as a
	// write of the destination (after a create when created says it is
	// new).
	Upload func(path string) (upload, created bool)
	// Entry, if set, describes a path when its create, write, chmod or
	// rename event is logged (nil: it is gone already), so that readers
	// see the file as it was then rather than when they read.
	Entry func(path string) *api.FileInfo
}

// Watcher watches one directory.
type Watcher struct {
	Root      string
	Recursive bool
	opts      Options

	f  *os.File // the inotify instance (non-blocking: Close ends a Read)
	fd int      // its descriptor (f.Fd() would make it blocking)

	mu       sync.Mutex
	dirs     map[int32]string // watch descriptor → directory
	log      []api.FileEvent  // ring of the newest events
	capacity int
	next     int64 // seq of the next event; seqs start at 1
	changed  chan struct{}
	ended    bool
	lastUse  time.Time
	// scanned are paths reported created by the scan of a new directory,
	// whose own create events may still be queued: those are dropped.
	scanned map[string]bool
}

// New starts watching root, a directory, and with recursive every
// directory under it.
func New(root string, recursive bool, opts Options) (*Watcher, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, unix.ENOTDIR
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if opts.Capacity <= 0 {
		opts.Capacity = DefaultCapacity
	}
	w := &Watcher{Root: root, Recursive: recursive, opts: opts, f: os.NewFile(uintptr(fd), "inotify"), fd: fd, dirs: map[int32]string{},
		capacity: opts.Capacity, next: 1, changed: make(chan struct{}), lastUse: time.Now()}
	if err := w.add(root); err != nil {
		w.f.Close()
		return nil, err
	}
	if recursive {
		if err := w.addTree(root, nil); err != nil {
			w.f.Close()
			return nil, err
		}
	}
	go w.run()
	return w, nil
}

// add watches one directory.
func (w *Watcher) add(dir string) error {
	if len(w.dirs) >= MaxDirs {
		return ErrTooManyDirs
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	w.dirs[int32(wd)] = dir
	return nil
}

// addTree watches the directories under dir. found, if set, is told of
// every entry on the way (a directory that appeared may have filled before
// its watch was added: what is in it is reported as created).
func (w *Watcher) addTree(dir string, found func(path string, isDir bool)) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil // gone already, or unreadable: nothing to watch
		}
		if found != nil {
			found(p, d.IsDir())
		}
		if !d.IsDir() {
			return nil
		}
		if err := w.add(p); err != nil {
			if errors.Is(err, ErrTooManyDirs) {
				return err
			}
			return fs.SkipDir
		}
		return nil
	})
}

// Close stops watching; readers see the end.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.endLocked()
	w.mu.Unlock()
	return w.f.Close()
}

func (w *Watcher) endLocked() {
	if !w.ended {
		w.ended = true
		close(w.changed)
	}
}

// Read returns the events after seq after, at most max of them, and lost:
// how many events after it the log no longer holds. changed is closed when
// more come; ended says the watcher has stopped (its root is gone, or it
// was closed) and no more will.
func (w *Watcher) Read(after int64, max int) (events []api.FileEvent, lost int64, changed <-chan struct{}, ended bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastUse = time.Now()
	first := w.next - int64(len(w.log)) // seq of the oldest event held
	if after < first-1 {
		lost = first - 1 - after
		after = first - 1
	}
	start := int(after - first + 1)
	if start < len(w.log) {
		end := min(len(w.log), start+max)
		events = append(events, w.log[start:end]...)
	}
	return events, lost, w.changed, w.ended
}

// Next is the seq the next event will get: a reader that starts now reads
// after Next()-1.
func (w *Watcher) Next() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// IdleSince is when the watcher was last read.
func (w *Watcher) IdleSince() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastUse
}

// emitLocked appends an event and wakes the readers. A watcher that has
// ended takes no more: Close may end it while run still handles what it
// read before the file closed (and changed is closed for good then).
// Options.Entry runs here, under the lock: a stat, which readers wait for.
func (w *Watcher) emitLocked(e api.FileEvent) {
	if w.ended {
		return
	}
	e.Seq = w.next
	w.next++
	if w.opts.Entry != nil && carriesEntry(e.Type) {
		e.Entry = w.opts.Entry(e.Path)
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if len(w.log) == w.capacity {
		copy(w.log, w.log[1:])
		w.log = w.log[:len(w.log)-1]
	}
	w.log = append(w.log, e)
	close(w.changed)
	w.changed = make(chan struct{})
}

// carriesEntry says whether an event's path names what it is about: a
// remove's is gone (a stat could find a newer file there).
func carriesEntry(typ string) bool {
	switch typ {
	case api.FileEventCreate, api.FileEventWrite, api.FileEventChmod, api.FileEventRename:
		return true
	}
	return false
}

// pairWait is how long a batch whose move-out has no move-in yet waits for
// more: a rename queues its two halves one after the other, but a read
// can fall between them (seen on a loaded host), and without its second
// half an upload's rename into place would be lost and a rename within
// the tree reported as a remove and a create.
var pairWait = 100 * time.Millisecond // a variable for the tests

// maxHeld bounds the events held back waiting for a move's second half.
const maxHeld = 4096

func (w *Watcher) run() {
	buf := make([]byte, 64<<10)
	var held []raw // a batch waiting for a move's second half
	for {
		n, err := w.f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The move-out's partner did not come: it left the tree.
			w.f.SetReadDeadline(time.Time{})
			evs := held
			held = nil
			if w.apply(evs) {
				return
			}
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.endLocked()
			w.mu.Unlock()
			return
		}
		evs := append(held, parse(buf[:n])...)
		if unpairedMove(evs) && len(evs) < maxHeld {
			// Hold on until the partner comes, for pairWait from the
			// first read held: no event waits longer than that.
			if held == nil {
				w.f.SetReadDeadline(time.Now().Add(pairWait))
			}
			held = evs
			continue
		}
		if held != nil {
			w.f.SetReadDeadline(time.Time{})
			held = nil
		}
		if w.apply(evs) {
			return
		}
	}
}

// apply handles a batch of events and says whether it ended the watcher
// (the root is gone), whose file it then closes.
func (w *Watcher) apply(evs []raw) bool {
	w.mu.Lock()
	w.handle(evs)
	ended := w.ended
	w.mu.Unlock()
	if ended {
		w.f.Close()
	}
	return ended
}

// unpairedMove says whether evs has a move-out without its move-in.
func unpairedMove(evs []raw) bool {
	for i, ev := range evs {
		if ev.mask&unix.IN_MOVED_FROM != 0 && movedTo(evs, i, ev.cookie) < 0 {
			return true
		}
	}
	return false
}

// raw is one inotify event as read.
type raw struct {
	wd     int32
	mask   uint32
	cookie uint32
	name   string
}

func parse(b []byte) []raw {
	var out []raw
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			break
		}
		name := b[unix.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, raw{wd: ev.Wd, mask: ev.Mask, cookie: ev.Cookie, name: string(name)})
		b = b[end:]
	}
	return out
}

// handle turns one read's events into the log's: renames paired by
// cookie (a move out of the tree is a remove, a move in a create),
// repeated writes of a file in a row kept once, new directories watched.
func (w *Watcher) handle(evs []raw) {
	moved := map[uint32]int{} // cookie → index of its IN_MOVED_FROM
	for i, ev := range evs {
		if ev.mask&unix.IN_MOVED_FROM != 0 {
			moved[ev.cookie] = i
		}
	}
	paired := map[int]bool{}
	skip := map[int]bool{} // moves into place of uploads, reported already
	lastWrite := ""
	for i, ev := range evs {
		if skip[i] {
			continue
		}
		if ev.mask&unix.IN_Q_OVERFLOW != 0 {
			w.emitLocked(api.FileEvent{Type: api.FileEventOverflow})
			continue
		}
		dir, ok := w.dirs[ev.wd]
		if !ok {
			continue
		}
		if ev.mask&unix.IN_IGNORED != 0 {
			delete(w.dirs, ev.wd)
			continue
		}
		isDir := ev.mask&unix.IN_ISDIR != 0
		path := dir
		if ev.name != "" {
			path = filepath.Join(dir, ev.name)
		}
		if ev.mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			if dir == w.Root {
				// The watched directory itself is gone: nothing more
				// can come.
				w.emitLocked(api.FileEvent{Type: api.FileEventRemove, Path: w.Root, IsDir: true})
				w.emitLocked(api.FileEvent{Type: api.FileEventEnd, Path: w.Root})
				w.endLocked()
				return
			}
			continue // a subdirectory: its parent reports it
		}
		if ev.mask&unix.IN_MODIFY == 0 {
			lastWrite = ""
		}
		if w.opts.Upload != nil && !isDir {
			if up, created := w.opts.Upload(path); up {
				if ev.mask&unix.IN_MOVED_FROM != 0 {
					if j := movedTo(evs, i, ev.cookie); j >= 0 {
						to := evs[j]
						dest := filepath.Join(w.dirs[to.wd], to.name)
						if created {
							w.emitLocked(api.FileEvent{Type: api.FileEventCreate, Path: dest})
						}
						w.emitLocked(api.FileEvent{Type: api.FileEventWrite, Path: dest})
						skip[j] = true
					}
				}
				continue
			}
		}
		switch {
		case ev.mask&unix.IN_CREATE != 0:
			if w.scanned[path] {
				delete(w.scanned, path)
				continue
			}
			w.emitLocked(api.FileEvent{Type: api.FileEventCreate, Path: path, IsDir: isDir})
			if isDir && w.Recursive {
				w.watchNew(path)
			}
		case ev.mask&unix.IN_MODIFY != 0:
			if path != lastWrite {
				w.emitLocked(api.FileEvent{Type: api.FileEventWrite, Path: path})
				lastWrite = path
			}
		case ev.mask&unix.IN_ATTRIB != 0:
			w.emitLocked(api.FileEvent{Type: api.FileEventChmod, Path: path, IsDir: isDir})
		case ev.mask&unix.IN_DELETE != 0:
			w.emitLocked(api.FileEvent{Type: api.FileEventRemove, Path: path, IsDir: isDir})
		case ev.mask&unix.IN_MOVED_FROM != 0:
			if !hasMovedTo(evs, i, ev.cookie) {
				w.emitLocked(api.FileEvent{Type: api.FileEventRemove, Path: path, IsDir: isDir})
				if isDir {
					w.forgetTree(path)
				}
			}
		case ev.mask&unix.IN_MOVED_TO != 0:
			j, ok := moved[ev.cookie]
			if !ok || paired[j] {
				w.emitLocked(api.FileEvent{Type: api.FileEventCreate, Path: path, IsDir: isDir})
				if isDir && w.Recursive {
					w.watchNew(path)
				}
				continue
			}
			paired[j] = true
			from := evs[j]
			old := filepath.Join(w.dirs[from.wd], from.name)
			w.emitLocked(api.FileEvent{Type: api.FileEventRename, Path: path, OldPath: old, IsDir: isDir})
			if isDir {
				w.renameTree(old, path)
				if w.Recursive {
					w.watchMissed(path)
				}
			}
		}
	}
}

func hasMovedTo(evs []raw, from int, cookie uint32) bool {
	return movedTo(evs, from, cookie) >= 0
}

// movedTo is the index of the IN_MOVED_TO after from with cookie, or -1.
func movedTo(evs []raw, from int, cookie uint32) int {
	for j := from + 1; j < len(evs); j++ {
		if evs[j].mask&unix.IN_MOVED_TO != 0 && evs[j].cookie == cookie {
			return j
		}
	}
	return -1
}

// watchNew watches a directory that appeared, and reports what it holds
// already.
func (w *Watcher) watchNew(dir string) {
	if err := w.add(dir); err != nil {
		return
	}
	if w.scanned == nil || len(w.scanned) > 1024 {
		w.scanned = map[string]bool{}
	}
	w.addTree(dir, func(p string, isDir bool) {
		w.scanned[p] = true
		w.emitLocked(api.FileEvent{Type: api.FileEventCreate, Path: p, IsDir: isDir})
	})
}

// watchMissed watches the directories of a tree moved within the watched
// one that have no watch yet: made and moved before their watch could be
// added. What is in them is reported created.
func (w *Watcher) watchMissed(dir string) {
	watched := map[string]bool{}
	for _, d := range w.dirs {
		watched[d] = true
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if !watched[p] {
			w.watchNew(p)
			return fs.SkipDir
		}
		return nil
	})
}

// renameTree updates the paths of watched directories moved within the
// tree.
func (w *Watcher) renameTree(old, new string) {
	for wd, d := range w.dirs {
		if d == old {
			w.dirs[wd] = new
		} else if rest, ok := cutDir(d, old); ok {
			w.dirs[wd] = filepath.Join(new, rest)
		}
	}
}

// forgetTree drops the watches of a directory moved out of the tree.
func (w *Watcher) forgetTree(dir string) {
	for wd, d := range w.dirs {
		if _, ok := cutDir(d, dir); ok || d == dir {
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.dirs, wd)
		}
	}
}

func cutDir(p, dir string) (string, bool) {
	if len(p) > len(dir) && p[:len(dir)] == dir && p[len(dir)] == '/' {
		return p[len(dir)+1:], true
	}
	return "", false
}
