package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"net/http"
	"sync"
	"syscall"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/fswatch"
)

// File watches outlive the stream that made them, so that a client that
// lost its connection (a pause, a network blip) resumes from the last seq
// it saw. A watch nobody has read for watchIdle is removed.
const (
	maxWatches = 64
	watchIdle  = 10 * time.Minute
	watchBatch = 256
)

type watches struct {
	mu     sync.Mutex
	m      map[string]*watchEntry
	gcOnce sync.Once
}

type watchEntry struct {
	w       *fswatch.Watcher
	readers int
	idle    time.Time // since the last reader left
}

func (ws *watches) add(w *fswatch.Watcher) (string, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.m == nil {
		ws.m = map[string]*watchEntry{}
	}
	if len(ws.m) >= maxWatches {
		return "", errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
			fmt.Sprintf("the machine has %d file watches, the most it may have", len(ws.m)),
			"remove watches no longer read with DELETE .../files/watch/{watch_id}")
	}
	b := make([]byte, 8)
	rand.Read(b)
	id := "wch_" + hex.EncodeToString(b)
	ws.m[id] = &watchEntry{w: w, idle: time.Now()}
	ws.gcOnce.Do(func() { go ws.gc() })
	return id, nil
}

// open returns a watch for a reader, who calls the function returned when
// it leaves.
func (ws *watches) open(id string) (*fswatch.Watcher, func(), error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	e, ok := ws.m[id]
	if !ok {
		return nil, nil, watchNotFound(id)
	}
	e.readers++
	return e.w, func() {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		e.readers--
		e.idle = time.Now()
	}, nil
}

func (ws *watches) remove(id string) error {
	ws.mu.Lock()
	e, ok := ws.m[id]
	delete(ws.m, id)
	ws.mu.Unlock()
	if !ok {
		return watchNotFound(id)
	}
	return e.w.Close()
}

func watchNotFound(id string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeWatchNotFound,
		fmt.Sprintf("no file watch %s in this machine", id),
		fmt.Sprintf("start a new watch: watches end when removed, when their directory goes, or %s after their last reader left", watchIdle))
}

// restored restarts every watch's idle clock: the time a machine spent
// paused is not its clients' idleness.
func (ws *watches) restored() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, e := range ws.m {
		e.idle = time.Now()
	}
}

func (ws *watches) gc() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for range t.C {
		ws.mu.Lock()
		for id, e := range ws.m {
			if e.readers == 0 && time.Since(e.idle) > watchIdle {
				e.w.Close()
				delete(ws.m, id)
			}
		}
		ws.mu.Unlock()
	}
}

// watchFiles streams a file watch's events as NDJSON: a new watch of
// path (its first event "watching" names it), or, with watch_id, an
// existing one from after its seq `after`. follow=false returns what is
// held at once (for polling).
func (a *Agent) watchFiles(w http.ResponseWriter, r *http.Request) error {
	follow, err := queryBoolOr(r, "follow", true)
	if err != nil {
		return err
	}
	after, err := queryCount(r, "after", "pass the seq of the last event seen, or 0")
	if err != nil {
		return err
	}
	id := r.URL.Query().Get("watch_id")
	var first *api.FileEvent
	if id == "" {
		path, err := queryPath(r, "path")
		if err != nil {
			return err
		}
		recursive, err := queryBool(r, "recursive")
		if err != nil {
			return err
		}
		withEntry, err := queryBool(r, "entry")
		if err != nil {
			return err
		}
		// The Nullspace API has always watched any file system; envd
		// refuses network ones unless asked (allow_network_mounts).
		network, err := queryBoolOr(r, "allow_network_mounts", true)
		if err != nil {
			return err
		}
		user := r.URL.Query().Get("user")
		if err := canList(user, path); err != nil {
			return err
		}
		if !network {
			if err := localFS(path); err != nil {
				return err
			}
		}
		opts := fswatch.Options{Upload: a.files.upload}
		if withEntry {
			if opts.Entry, err = entryAs(user); err != nil {
				return err
			}
		}
		fw, err := fswatch.New(path, recursive, opts)
		if err != nil {
			return watchError(err, path)
		}
		if id, err = a.watches.add(fw); err != nil {
			fw.Close()
			return err
		}
		first = &api.FileEvent{Type: api.FileEventWatching, WatchID: id, Path: path, Time: time.Now().UTC()}
	}
	fw, leave, err := a.watches.open(id)
	if err != nil {
		return err
	}
	defer leave()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if first != nil {
		if err := enc.Encode(first); err != nil {
			return nil
		}
	}
	for {
		evs, lost, changed, ended := fw.Read(after, watchBatch)
		if lost > 0 {
			enc.Encode(api.FileEvent{Type: api.FileEventLost, Lost: lost, WatchID: id, Time: time.Now().UTC()})
		}
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return nil
			}
			after = e.Seq
		}
		if len(evs) == watchBatch {
			continue
		}
		if ended {
			if n := len(evs); n == 0 || evs[n-1].Type != api.FileEventEnd {
				enc.Encode(api.FileEvent{Type: api.FileEventEnd, WatchID: id, Time: time.Now().UTC()})
			}
			rc.Flush()
			return nil
		}
		if err := rc.Flush(); err != nil || !follow {
			return nil
		}
		if !wait(r.Context(), changed) {
			return nil
		}
	}
}

func wait(ctx context.Context, ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

func watchError(err error, path string) error {
	switch {
	case errors.Is(err, syscall.ENOTDIR):
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory,
			fmt.Sprintf("%s is not a directory", path), "watch the directory that holds the file")
	case errors.Is(err, fswatch.ErrTooManyDirs):
		return errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
			fmt.Sprintf("%s has more than %d directories to watch", path, fswatch.MaxDirs), "watch a smaller tree, or without recursive")
	case errors.Is(err, syscall.ENOSPC):
		return errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
			"the machine's inotify watch limit is reached", "watch fewer directories")
	}
	return fileError(err, path)
}

// unwatchFiles removes a watch; its readers see its end.
func (a *Agent) unwatchFiles(w http.ResponseWriter, r *http.Request) error {
	if err := a.watches.remove(r.PathValue("watch_id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// canList checks that user may list directory path: a watch reports what
// a listing would.
func canList(user, path string) error {
	id, err := fileUser(user)
	if err != nil {
		return err
	}
	err = as(id, func(o walkOpts) error {
		o.followFinal = true
		p, err := walk(path, o)
		if err != nil {
			return err
		}
		defer p.close()
		fd, err := openDir(p)
		if err != nil {
			return &fs.PathError{Op: "open", Path: p.real, Err: err}
		}
		return unix.Close(fd)
	})
	if err != nil {
		return watchError(err, path)
	}
	return nil
}

// entryAs describes the path of a watch's event as user sees it (the
// user who started the watch), with its metadata; nil when it is gone or
// user may not look at it.
func entryAs(user string) (func(path string) *api.FileInfo, error) {
	id, err := fileUser(user)
	if err != nil {
		return nil, err
	}
	return func(path string) *api.FileInfo {
		info, err := statAs(id, path)
		if err != nil {
			return nil
		}
		return &info
	}, nil
}

// networkFS are the statfs types of the network file systems envd
// refuses to watch unless asked to (allow_network_mounts): inotify sees
// only the changes made through this machine's kernel, not those made by
// the server's other clients. FUSE is among them because a FUSE server
// may be a network one.
var networkFS = map[int64]string{
	unix.NFS_SUPER_MAGIC:  "nfs",
	unix.CIFS_SUPER_MAGIC: "cifs",
	unix.SMB_SUPER_MAGIC:  "smb",
	unix.SMB2_SUPER_MAGIC: "smb2",
	unix.FUSE_SUPER_MAGIC: "fuse",
}

// statfsType is the statfs type of the file system path is on (a hook
// for tests: the host has no network file system to watch).
var statfsType = func(path string) (int64, error) {
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	return int64(sf.Type), nil
}

// localFS refuses a directory on a network file system. Nullspace's
// volumes are not network file systems to the machine (gVisor's gofer
// serves them), though changes a volume gets from the host or from
// another machine are not seen either (see the README).
func localFS(path string) error {
	t, err := statfsType(path)
	if err != nil {
		return watchError(err, path)
	}
	if name, ok := networkFS[t]; ok {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s is on a network file system (%s), whose changes made elsewhere a watch would not see", path, name),
			"watch it anyway with allow_network_mounts=true, or watch a local directory")
	}
	return nil
}
