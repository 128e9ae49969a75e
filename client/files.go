package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"

	"nullspace.dev/nullspace/api"
)

// ReadFile opens a file in a machine for reading (GET .../files?path=). The
// caller must close the returned reader.
func (c *Client) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, request{
		method: http.MethodGet,
		path:   machinePath(id, "files"),
		query:  c.fileQuery(path),
		accept: "application/octet-stream",
	})
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ReadFileBytes returns the whole content of a file in a machine.
func (c *Client) ReadFileBytes(ctx context.Context, id, path string) ([]byte, error) {
	rc, err := c.ReadFile(ctx, id, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s in machine %s: %w", path, id, err)
	}
	return b, nil
}

// WriteFile creates or replaces a file in a machine with the content of r,
// streamed (PUT .../files?path=&mode=). mode gives the permission bits; 0
// leaves the server's default.
func (c *Client) WriteFile(ctx context.Context, id, path string, r io.Reader, mode fs.FileMode) (*api.WriteResult, error) {
	return c.WriteFileWith(ctx, id, path, r, WriteOptions{Mode: mode})
}

// WriteOptions tune WriteFileWith.
type WriteOptions struct {
	// Mode gives the permission bits; 0 leaves the server's default.
	Mode fs.FileMode
	// Metadata is stored on the file (as user.e2b.KEY extended
	// attributes), replacing what it had; FileInfo.Metadata reads it back.
	Metadata map[string]string
}

// WriteFileWith is WriteFile with options (PUT
// .../files?path=&mode=&metadata[KEY]=VALUE).
func (c *Client) WriteFileWith(ctx context.Context, id, path string, r io.Reader, opts WriteOptions) (*api.WriteResult, error) {
	q := c.fileQuery(path)
	if opts.Mode != 0 {
		q.Set("mode", fmt.Sprintf("%04o", opts.Mode.Perm()))
	}
	for k, v := range opts.Metadata {
		q.Set("metadata["+k+"]", v)
	}
	var res api.WriteResult
	err := c.do(ctx, request{
		method:      http.MethodPut,
		path:        machinePath(id, "files"),
		query:       q,
		body:        r,
		contentType: "application/octet-stream",
	}, &res)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// WriteFileBytes is WriteFile with the content in memory.
func (c *Client) WriteFileBytes(ctx context.Context, id, path string, data []byte, mode fs.FileMode) (*api.WriteResult, error) {
	return c.WriteFile(ctx, id, path, bytes.NewReader(data), mode)
}

// ListFiles lists a directory in a machine (GET .../files/list). depth 0
// leaves the server's default (1: the directory's own entries).
func (c *Client) ListFiles(ctx context.Context, id, path string, depth int) ([]api.FileInfo, error) {
	q := c.fileQuery(path)
	if depth > 0 {
		q.Set("depth", strconv.Itoa(depth))
	}
	var l api.FileList
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id, "files", "list"), query: q}, &l); err != nil {
		return nil, err
	}
	return l.Entries, nil
}

// Stat describes a file in a machine (GET .../files/stat).
func (c *Client) Stat(ctx context.Context, id, path string) (*api.FileInfo, error) {
	var fi api.FileInfo
	q := c.fileQuery(path)
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id, "files", "stat"), query: q}, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Remove deletes a file or an empty directory in a machine; with recursive,
// a directory and everything under it (DELETE .../files).
func (c *Client) Remove(ctx context.Context, id, path string, recursive bool) error {
	q := c.fileQuery(path)
	if recursive {
		q.Set("recursive", "true")
	}
	return c.do(ctx, request{method: http.MethodDelete, path: machinePath(id, "files"), query: q}, nil)
}

// Mkdir creates a directory in a machine (POST .../files/mkdir).
func (c *Client) Mkdir(ctx context.Context, id, path string) (*api.FileInfo, error) {
	var fi api.FileInfo
	body := api.MkdirRequest{Path: path, User: c.fileUser}
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "files", "mkdir"), json: body}, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Rename moves a file or directory in a machine (POST .../files/rename).
func (c *Client) Rename(ctx context.Context, id, from, to string) (*api.FileInfo, error) {
	var fi api.FileInfo
	body := api.RenameRequest{From: from, To: to, User: c.fileUser}
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "files", "rename"), json: body}, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// WatchOptions selects a file watch: a new one of Path, or the existing
// WatchID from after its seq After.
type WatchOptions struct {
	Path      string
	Recursive bool
	WatchID   string
	After     int64
	// NoFollow returns once the events held are read (polling).
	NoFollow bool
}

// WatchDir calls fn for every event of a file watch as it happens (GET
// /v1/machines/{id}/files/watch), until ctx ends, the stream breaks, the
// watch ends (an "end" event), or fn returns an error. A new watch's first
// event ("watching") carries its WatchID: after a break, call WatchDir
// again with it and After set to the last seq fn saw, and no event the
// machine still holds is missed.
func (c *Client) WatchDir(ctx context.Context, id string, opts WatchOptions, fn func(api.FileEvent) error) error {
	q := url.Values{}
	if opts.WatchID != "" {
		q.Set("watch_id", opts.WatchID)
		q.Set("after", strconv.FormatInt(opts.After, 10))
	} else {
		q = c.fileQuery(opts.Path)
		if opts.Recursive {
			q.Set("recursive", "true")
		}
	}
	if opts.NoFollow {
		q.Set("follow", "false")
	}
	resp, err := c.send(ctx, request{method: http.MethodGet, path: machinePath(id, "files/watch"), query: q, accept: "application/x-ndjson"})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readLines(ctx, resp.Body, fn)
}

// Unwatch removes a file watch (DELETE .../files/watch/{watch_id}).
func (c *Client) Unwatch(ctx context.Context, id, watchID string) error {
	return c.do(ctx, request{method: http.MethodDelete, path: machinePath(id, "files/watch/"+url.PathEscape(watchID))}, nil)
}

// fileQuery is the query of a file call on path.
func (c *Client) fileQuery(path string) url.Values {
	q := url.Values{"path": {path}}
	if c.fileUser != "" {
		q.Set("user", c.fileUser)
	}
	return q
}
