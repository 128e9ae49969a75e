package envd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem/filesystemconnect"
	"nullspace.dev/nullspace/internal/errdefs"
)

// filesystemService is filesystem.Filesystem over the agent's files and
// file watches.
type filesystemService struct{ s *Server }

var _ filesystemconnect.FilesystemHandler = (*filesystemService)(nil)

// unary opens the sandbox of a call and runs fn on it with the path
// resolved for the call's user, whom the sandbox's agent client acts as;
// errors come back as Connect errors.
func unary[Req, Resp any](f *filesystemService, ctx context.Context, req *connect.Request[Req], p string,
	fn func(sb *Sandbox, p string) (*Resp, error)) (*connect.Response[Resp], error) {
	sb, err := f.s.open(ctx, request(req.Header()))
	if err != nil {
		return nil, rpcError(err)
	}
	defer sb.Done()
	user := userOf(req.Header())
	sb.Agent = sb.Agent.AsUser(user) // sb is this call's
	out, err := fn(sb, resolve(p, user))
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(out), nil
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	return unary(f, ctx, req, req.Msg.GetPath(), func(sb *Sandbox, p string) (*filesystem.StatResponse, error) {
		fi, err := sb.Agent.Stat(sb.Ctx, p)
		if err != nil {
			return nil, err
		}
		return &filesystem.StatResponse{Entry: entryInfo(fi)}, nil
	})
}

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	return unary(f, ctx, req, req.Msg.GetPath(), func(sb *Sandbox, p string) (*filesystem.ListDirResponse, error) {
		list, err := sb.Agent.ListFiles(sb.Ctx, p, depth)
		if err != nil {
			return nil, err
		}
		out := &filesystem.ListDirResponse{}
		for _, fi := range list.Entries {
			out.Entries = append(out.Entries, entryInfo(fi))
		}
		return out, nil
	})
}

func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	return unary(f, ctx, req, req.Msg.GetPath(), func(sb *Sandbox, p string) (*filesystem.MakeDirResponse, error) {
		// envd refuses an existing directory (the SDKs then answer false);
		// the agent's mkdir is mkdir -p.
		if _, err := sb.Agent.Stat(sb.Ctx, p); err == nil {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s already exists", p))
		}
		// envd runs as root and gives what it makes to the user.
		fi, err := sb.Agent.MkdirWith(sb.Ctx, api.MkdirRequest{Path: p, ParentsAsRoot: true})
		if err != nil {
			return nil, err
		}
		return &filesystem.MakeDirResponse{Entry: entryInfo(fi)}, nil
	})
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	user := userOf(req.Header())
	return unary(f, ctx, req, req.Msg.GetSource(), func(sb *Sandbox, src string) (*filesystem.MoveResponse, error) {
		fi, err := sb.Agent.Rename(sb.Ctx, src, resolve(req.Msg.GetDestination(), user))
		if err != nil {
			return nil, err
		}
		return &filesystem.MoveResponse{Entry: entryInfo(fi)}, nil
	})
}

func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	return unary(f, ctx, req, req.Msg.GetPath(), func(sb *Sandbox, p string) (*filesystem.RemoveResponse, error) {
		// envd removes as rm -rf does: nothing to remove is not an error.
		err := sb.Agent.Remove(sb.Ctx, p, true)
		if errdefs.Classify(err).Code == errdefs.CodeFileNotFound {
			err = nil
		}
		return &filesystem.RemoveResponse{}, err
	})
}

func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], stream *connect.ServerStream[filesystem.WatchDirResponse]) error {
	sb, err := f.s.open(ctx, request(req.Header()))
	if err != nil {
		return rpcError(err)
	}
	defer sb.Done()
	user := userOf(req.Header())
	sb.Agent = sb.Agent.AsUser(user) // sb is this call's
	dir := resolve(req.Msg.GetPath(), user)
	w, err := sb.Agent.Watch(sb.Ctx, agentclient.WatchOptions{Path: dir, Recursive: req.Msg.GetRecursive(),
		Entry: req.Msg.GetIncludeEntry(), LocalOnly: !req.Msg.GetAllowNetworkMounts()})
	if err != nil {
		return rpcError(err)
	}
	defer w.Close()
	watchID := ""
	defer func() {
		if watchID != "" { // a streamed watch ends with its stream
			sb.Agent.Unwatch(context.WithoutCancel(sb.Ctx), watchID)
		}
	}()
	keep := func() error {
		return stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}})
	}
	return follow(ctx, sb, w, keepalive(req.Header()), nil, keep, func(ev api.FileEvent) (bool, error) {
		switch ev.Type {
		case api.FileEventWatching:
			watchID = ev.WatchID
			return false, stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}})
		case api.FileEventEnd:
			return true, connect.NewError(connect.CodeNotFound, fmt.Errorf("the watched directory %s was removed", dir))
		}
		for _, fe := range fsEvents(dir, ev) {
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: fe}}); err != nil {
				return false, err
			}
		}
		return false, nil
	})
}

// fsEvents are an agent file event as envd's, named relative to the
// watched directory. A rename is two, like fsnotify's: a rename of the old
// name and a create of the new one. The entry (include_entry) is the one
// the agent took when it saw the change, as envd stats when it does; a
// remove and a rename's old name have none.
func fsEvents(dir string, ev api.FileEvent) []*filesystem.FilesystemEvent {
	rel := func(p string) string {
		r := strings.TrimPrefix(strings.TrimPrefix(p, dir), "/")
		if r == "" {
			return path.Base(p)
		}
		return r
	}
	mk := func(t filesystem.EventType, p string) *filesystem.FilesystemEvent {
		fe := &filesystem.FilesystemEvent{Name: rel(p), Type: t}
		if ev.Entry != nil && t != filesystem.EventType_EVENT_TYPE_REMOVE {
			fe.Entry = entryInfo(*ev.Entry)
		}
		return fe
	}
	switch ev.Type {
	case api.FileEventCreate:
		return []*filesystem.FilesystemEvent{mk(filesystem.EventType_EVENT_TYPE_CREATE, ev.Path)}
	case api.FileEventWrite:
		return []*filesystem.FilesystemEvent{mk(filesystem.EventType_EVENT_TYPE_WRITE, ev.Path)}
	case api.FileEventRemove:
		return []*filesystem.FilesystemEvent{mk(filesystem.EventType_EVENT_TYPE_REMOVE, ev.Path)}
	case api.FileEventChmod:
		return []*filesystem.FilesystemEvent{mk(filesystem.EventType_EVENT_TYPE_CHMOD, ev.Path)}
	case api.FileEventRename:
		var out []*filesystem.FilesystemEvent
		if ev.OldPath != "" && strings.HasPrefix(ev.OldPath, dir) {
			out = append(out, &filesystem.FilesystemEvent{Name: rel(ev.OldPath), Type: filesystem.EventType_EVENT_TYPE_RENAME})
		}
		if strings.HasPrefix(ev.Path, dir) {
			out = append(out, mk(filesystem.EventType_EVENT_TYPE_CREATE, ev.Path))
		}
		return out
	}
	return nil
}

// The non-streaming watchers (what E2B's Python SDK uses): a watch kept in
// the agent, read from where the previous read ended. The agent collects a
// watch nobody reads for 10 minutes; the positions kept here are bounded by
// maxWatchers.

const maxWatchers = 4096

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	return unary(f, ctx, req, req.Msg.GetPath(), func(sb *Sandbox, dir string) (*filesystem.CreateWatcherResponse, error) {
		w, err := sb.Agent.Watch(sb.Ctx, agentclient.WatchOptions{Path: dir, Recursive: req.Msg.GetRecursive(), Poll: true,
			Entry: req.Msg.GetIncludeEntry(), LocalOnly: !req.Msg.GetAllowNetworkMounts()})
		if err != nil {
			return nil, err
		}
		defer w.Close()
		for w.Next() {
			if ev := w.Event(); ev.Type == api.FileEventWatching {
				f.s.mu.Lock()
				forgetOne(f.s.watchers, maxWatchers)
				f.s.watchers[sb.Lineage+"/"+ev.WatchID] = watcher{dir: dir}
				f.s.mu.Unlock()
				return &filesystem.CreateWatcherResponse{WatcherId: ev.WatchID}, nil
			}
		}
		if err := w.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("the machine's agent opened no watch")
	})
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	id := req.Msg.GetWatcherId()
	return unary(f, ctx, req, "/", func(sb *Sandbox, _ string) (*filesystem.GetWatcherEventsResponse, error) {
		key := sb.Lineage + "/" + id
		f.s.mu.Lock()
		pos, ok := f.s.watchers[key]
		f.s.mu.Unlock()
		if !ok {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found: create one with CreateWatcher", id))
		}
		w, err := sb.Agent.Watch(sb.Ctx, agentclient.WatchOptions{WatchID: id, After: pos.after, Poll: true})
		if err != nil {
			return nil, err
		}
		defer w.Close()
		out := &filesystem.GetWatcherEventsResponse{}
		for w.Next() {
			ev := w.Event()
			pos.after = max(pos.after, ev.Seq)
			out.Events = append(out.Events, fsEvents(pos.dir, ev)...)
		}
		if err := w.Err(); err != nil {
			return nil, err
		}
		f.s.mu.Lock()
		f.s.watchers[key] = pos
		f.s.mu.Unlock()
		return out, nil
	})
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	id := req.Msg.GetWatcherId()
	return unary(f, ctx, req, "/", func(sb *Sandbox, _ string) (*filesystem.RemoveWatcherResponse, error) {
		f.s.mu.Lock()
		delete(f.s.watchers, sb.Lineage+"/"+id)
		f.s.mu.Unlock()
		return &filesystem.RemoveWatcherResponse{}, sb.Agent.Unwatch(sb.Ctx, id)
	})
}

// entryInfo is a file as envd describes it, with its metadata (the
// user.e2b. attributes, prefix stripped): mode is the permission bits
// alone (0o755 for a directory), permissions the ls-style string with
// its type letter, a symlink's target an absolute path (link text that is
// relative is resolved against the link's directory), owner and group
// names.
func entryInfo(fi api.FileInfo) *filesystem.EntryInfo {
	perm, _ := strconv.ParseUint(fi.Mode, 8, 32)
	mode := fs.FileMode(perm) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	e := &filesystem.EntryInfo{Name: fi.Name, Path: fi.Path, Size: fi.Size, ModifiedTime: timestamppb.New(fi.ModTime),
		Owner: fi.Owner, Group: fi.Group, Metadata: fi.Metadata}
	switch fi.Type {
	case "file":
		e.Type = filesystem.FileType_FILE_TYPE_FILE
	case "dir":
		e.Type = filesystem.FileType_FILE_TYPE_DIRECTORY
		mode |= fs.ModeDir
	case "symlink":
		e.Type = filesystem.FileType_FILE_TYPE_SYMLINK
		mode |= fs.ModeSymlink
		if fi.Target != "" {
			target := fi.Target
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(fi.Path), target)
			}
			target = path.Clean(target)
			e.SymlinkTarget = &target
		}
	}
	e.Mode, e.Permissions = uint32(mode.Perm()), mode.String()
	return e
}
