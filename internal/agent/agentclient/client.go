// Package agentclient is the host-side client of the in-machine agent
// (package agent): the server uses it to run commands and move files in a
// machine.
//
// Errors the agent answers with come back as *errdefs.Error with the same
// code and the matching class, so the server's HTTP edge maps them like its
// own. An agent that cannot be reached gives code agent_unavailable, class
// errdefs.ErrUnavailable.
package agentclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	base   string // e.g. http://10.11.0.2:49983, without trailing slash
	hc     *http.Client
	shared bool // hc is sharedHTTP, or c is a view (AsUser)
	auth   *auth
	// user is who file calls act as; "" is the agent's default (root).
	user string
}

// auth is the token of an agent, shared by a client and its views.
type auth struct {
	// mu guards token, which SetToken changes after a restore.
	mu    sync.Mutex
	token string
}

// AsUser returns a view of c whose file calls (read, write, list, stat,
// remove, mkdir, rename, watch) act as user, a name or uid of the
// machine: with its permissions, and creating files it owns. "" is the
// agent's default, root.
func (c *Client) AsUser(user string) *Client {
	return &Client{base: c.base, hc: c.hc, shared: true, auth: c.auth, user: user}
}

// FileCallTimeout bounds a file call that names no deadline of its own:
// the agent bounds its work by 60 s (agent.DefaultFileTimeout); a read's
// or a write's bytes may take longer, and only the answer's head is
// bounded there.
const FileCallTimeout = 90 * time.Second

// bounded gives ctx FileCallTimeout when it has no deadline.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, FileCallTimeout)
}

// headBounded is ctx, cancelled if the answer's head has not come within
// FileCallTimeout; call the stop function returned once it has come. It
// reports whether the head came too late.
func headBounded(ctx context.Context) (context.Context, context.CancelFunc, func() (late bool)) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(FileCallTimeout, cancel)
	return ctx, cancel, func() bool { return !t.Stop() }
}

// fileQuery is the query of a file call on path.
func (c *Client) fileQuery(path string) url.Values {
	q := url.Values{"path": {path}}
	if c.user != "" {
		q.Set("user", c.user)
	}
	return q
}

// New returns a client for the agent at baseURL (scheme, host and port)
// that authenticates with token. A nil hc uses one pool of connections
// shared by every agent client in the process (see NewHTTPClient); it has
// no overall timeout, since foreground commands and streams last long:
// bound calls with their context.
func New(baseURL, token string, hc *http.Client) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), auth: &auth{token: token}, hc: hc}
	if hc == nil {
		c.hc, c.shared = sharedHTTP, true
	}
	return c
}

// sharedHTTP is the default HTTP client for agents: one connection pool
// for every machine, so that a command round trip reuses a kept-alive
// connection instead of paying for a handshake.
var sharedHTTP = NewHTTPClient()

// SharedHTTPClient returns the connection pool New uses by default. The
// API's proxy uses it too, so a machine's first command reuses the
// connection its readiness check opened.
func SharedHTTPClient() *http.Client { return sharedHTTP }

// NewHTTPClient returns an HTTP client suited to talking to agents: direct
// (no proxy), short dial timeout, kept-alive connections, and no overall
// timeout, since foreground commands and streams last long: bound calls
// with their context.
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 nil, // the agent is always reached directly
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}}
}

// SetToken makes the client authenticate with token from now on: the
// agent's new token after POST /lifecycle/restored.
func (c *Client) SetToken(token string) {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	c.auth.token = token
}

func (c *Client) bearer() string {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	return "Bearer " + c.auth.token
}

// Close releases the idle connections of a client given its own
// http.Client; the shared pool is left to the other clients using it.
func (c *Client) Close() {
	if !c.shared {
		c.hc.CloseIdleConnections()
	}
}

// Health is the answer of GET /health.
type Health struct {
	OK      bool   `json:"ok"`
	Version string `json:"version"`
	// Restore is the machine's id and how often it was restored; zero from
	// an agent older than the lifecycle routes.
	Restore api.AgentRestoreInfo `json:"restore"`
}

// Health asks the agent whether it is up.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.doJSON(ctx, http.MethodGet, "/health", nil, nil, &h)
	return h, err
}

// WaitReady polls GET /health until the agent answers or ctx is done. It
// polls every few milliseconds at first, since machine start latency
// depends on it, and backs off to 50 ms.
func (c *Client) WaitReady(ctx context.Context) error {
	delay := 2 * time.Millisecond
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := c.Health(attemptCtx)
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errdefs.Wrap(errors.Join(ctx.Err(), err), errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable,
				"the machine agent did not become ready", "check the machine's log; the agent may have failed to start")
		case <-t.C:
		}
		// Readiness is on the create path: keep polling often (a failed
		// connect to the machine costs microseconds).
		delay = min(delay*5/4, 5*time.Millisecond)
	}
}

// Run runs a foreground command and waits for its result. Background and
// Stream in req are ignored.
func (c *Client) Run(ctx context.Context, req api.RunCommandRequest) (api.CommandResult, error) {
	req.Background, req.Stream = false, false
	var res api.CommandResult
	err := c.doJSON(ctx, http.MethodPost, "/commands", nil, req, &res)
	return res, err
}

// Start starts a background command and returns its pid at once.
func (c *Client) Start(ctx context.Context, req api.RunCommandRequest) (api.CommandStarted, error) {
	req.Background, req.Stream = true, false
	var res api.CommandStarted
	err := c.doJSON(ctx, http.MethodPost, "/commands", nil, req, &res)
	return res, err
}

// Stream runs a command and returns its events: start, stdout and stderr
// chunks, exit. Closing the stream, or cancelling ctx, before the exit
// event kills the command, unless req.Background is set: then the command
// outlives its stream.
func (c *Client) Stream(ctx context.Context, req api.RunCommandRequest) (*EventStream, error) {
	req.Stream = true
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode command request: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/commands", nil, bytes.NewReader(body), "application/json")
	if err != nil {
		return nil, err
	}
	return newEventStream(ctx, resp.Body), nil
}

// Prepare readies the machine for a checkpoint: the agent runs the pause
// hooks, then flushes every file system.
func (c *Client) Prepare(ctx context.Context, req api.AgentPrepareRequest) (api.AgentLifecycleResult, error) {
	var res api.AgentLifecycleResult
	err := c.doJSON(ctx, http.MethodPost, "/lifecycle/prepare", nil, req, &res)
	return res, err
}

// Reclaim asks the agent to kill the process with the largest resident set
// (POST /lifecycle/reclaim): the machine is about to run out of memory.
func (c *Client) Reclaim(ctx context.Context) (api.AgentReclaimResult, error) {
	var res api.AgentReclaimResult
	err := c.doJSON(ctx, http.MethodPost, "/lifecycle/reclaim", nil, struct{}{}, &res)
	return res, err
}

// Restored tells the agent of a restored machine its new identity, then
// has it run the resume hooks. It authenticates with the token the agent
// was checkpointed with; once it succeeds the agent accepts only req.Token:
// call SetToken(req.Token) to keep using c.
func (c *Client) Restored(ctx context.Context, req api.AgentRestoredRequest) (api.AgentLifecycleResult, error) {
	var res api.AgentLifecycleResult
	err := c.doJSON(ctx, http.MethodPost, "/lifecycle/restored", nil, req, &res)
	return res, err
}

// Stop ends every process in the machine (SIGTERM, SIGKILL after the
// grace period) and flushes its file systems, before a stop's checkpoint.
func (c *Client) Stop(ctx context.Context, req api.AgentStopRequest) (api.AgentStopResult, error) {
	var res api.AgentStopResult
	err := c.doJSON(ctx, http.MethodPost, "/lifecycle/stop", nil, req, &res)
	return res, err
}

// StartMain starts the machine's main process (argv) in the background.
func (c *Client) StartMain(ctx context.Context, argv []string) (api.CommandStarted, error) {
	var res api.CommandStarted
	err := c.doJSON(ctx, http.MethodPost, "/lifecycle/main", nil, api.RunCommandRequest{Cmd: argv}, &res)
	return res, err
}

// Wait blocks until command pid has exited, or ctx ends, and returns how it
// ended.
func (c *Client) Wait(ctx context.Context, pid int) (api.MainExit, error) {
	var res api.MainExit
	err := c.doJSON(ctx, http.MethodGet, "/commands/"+strconv.Itoa(pid)+"/wait", nil, nil, &res)
	return res, err
}

// ListProcesses lists running commands and recently exited ones.
func (c *Client) ListProcesses(ctx context.Context) (api.ProcessList, error) {
	var res api.ProcessList
	err := c.doJSON(ctx, http.MethodGet, "/commands", nil, nil, &res)
	return res, err
}

// OutputOptions selects what Output returns.
type OutputOptions struct {
	// Follow keeps the stream open for live output until the process exits.
	Follow bool
	// StdoutOffset and StderrOffset skip output a client already has. If
	// the agent no longer keeps that offset, it starts at the oldest byte
	// it has; each event carries its offset.
	StdoutOffset int64
	StderrOffset int64
	// Live skips the buffered output: only what is written from now on
	// (the offsets are ignored).
	Live bool
}

// Output streams the buffered, and with Follow the live, output of a
// command, ending with an exit event once it has exited.
func (c *Client) Output(ctx context.Context, pid int, opts OutputOptions) (*EventStream, error) {
	q := url.Values{}
	if opts.Follow {
		q.Set("follow", "true")
	}
	if opts.Live {
		q.Set("live", "true")
	}
	if opts.StdoutOffset > 0 {
		q.Set("stdout_offset", strconv.FormatInt(opts.StdoutOffset, 10))
	}
	if opts.StderrOffset > 0 {
		q.Set("stderr_offset", strconv.FormatInt(opts.StderrOffset, 10))
	}
	resp, err := c.do(ctx, http.MethodGet, "/commands/"+strconv.Itoa(pid)+"/output", q, nil, "")
	if err != nil {
		return nil, err
	}
	return newEventStream(ctx, resp.Body), nil
}

// WriteStdin writes to the stdin of a command started with KeepStdinOpen.
func (c *Client) WriteStdin(ctx context.Context, pid int, req api.StdinRequest) error {
	return c.doJSON(ctx, http.MethodPost, "/commands/"+strconv.Itoa(pid)+"/stdin", nil, req, nil)
}

// StdinStream is one open request whose body is a command's stdin: each
// Write reaches the command as it is made (a chunk, flushed), without a
// request per keystroke.
type StdinStream struct {
	w    *io.PipeWriter
	done chan error
}

// OpenStdin opens a stdin stream to a command; Close ends it and returns
// the agent's answer.
func (c *Client) OpenStdin(ctx context.Context, pid int) *StdinStream {
	pr, pw := io.Pipe()
	s := &StdinStream{w: pw, done: make(chan error, 1)}
	go func() {
		resp, err := c.do(ctx, http.MethodPost, "/commands/"+strconv.Itoa(pid)+"/stdin/stream", nil, pr, "application/octet-stream")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		pr.CloseWithError(err) // a Write after the agent gave up fails
		s.done <- err
	}()
	return s
}

// Write sends b; once the agent has refused the stream it returns why.
func (s *StdinStream) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	if err != nil {
		if aerr := <-s.done; aerr != nil {
			s.done <- aerr
			return n, aerr
		}
		s.done <- nil
	}
	return n, err
}

// Close ends the stream once every byte written has reached the command.
func (s *StdinStream) Close() error {
	s.w.Close()
	err := <-s.done
	s.done <- err
	return err
}

// Resize changes the size of a command's terminal (one started with PTY).
func (c *Client) Resize(ctx context.Context, pid int, size api.PTYSize) error {
	return c.doJSON(ctx, http.MethodPost, "/commands/"+strconv.Itoa(pid)+"/resize", nil, size, nil)
}

// Signal sends a signal ("SIGTERM", "TERM" or "15") to a command's process
// group.
func (c *Client) Signal(ctx context.Context, pid int, signal string) error {
	return c.doJSON(ctx, http.MethodPost, "/commands/"+strconv.Itoa(pid)+"/signal", nil,
		api.SignalRequest{Signal: signal}, nil)
}

// Kill sends SIGKILL to a command's process group.
func (c *Client) Kill(ctx context.Context, pid int) error {
	return c.doJSON(ctx, http.MethodDelete, "/commands/"+strconv.Itoa(pid), nil, nil, nil)
}

// ReadFile streams a file's bytes. size is its length, or -1 when the
// agent does not know it up front (files in /proc). The caller closes the
// reader.
func (c *Client) ReadFile(ctx context.Context, path string) (rc io.ReadCloser, size int64, err error) {
	ctx, cancel, stop := headBounded(ctx)
	resp, err := c.do(ctx, http.MethodGet, "/files", c.fileQuery(path), nil, "")
	if late := stop(); err != nil {
		cancel()
		if late {
			return nil, 0, headTimeout("GET /files", err)
		}
		return nil, 0, err
	}
	return &cancelBody{ReadCloser: resp.Body, cancel: cancel}, resp.ContentLength, nil
}

// cancelBody is a response body that releases its call's context when
// closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func headTimeout(what string, err error) error {
	return errdefs.Wrap(fmt.Errorf("agent %s: %w", what, err), errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
		fmt.Sprintf("the machine agent did not answer within %s", FileCallTimeout), "retry; if it keeps failing, check the machine with a command")
}

// WriteOptions tunes WriteFile.
type WriteOptions struct {
	// Mode sets the permission bits. 0 keeps those of the file replaced,
	// or 0644 for a new file.
	Mode fs.FileMode
	// Size is the body's length when known (sets Content-Length, so an
	// oversize file is refused before it is sent). 0 means unknown, unless
	// r is a *bytes.Reader, *bytes.Buffer or *strings.Reader.
	Size int64
	// Metadata is stored on the file as extended attributes, replacing
	// what it had (none when empty).
	Metadata map[string]string
	// ParentsAsRoot: a missing directory on the way that the client's user
	// may not make is made by root and given to the user, as E2B's envd
	// does.
	ParentsAsRoot bool
}

// WriteFile streams r into path atomically: readers of path see the old
// content or the new, never a part; a failed upload changes nothing.
// Missing parent directories are created.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, opts WriteOptions) (api.WriteResult, error) {
	q := c.fileQuery(path)
	if opts.Mode != 0 {
		q.Set("mode", fmt.Sprintf("%04o", unixMode(opts.Mode)))
	}
	for k, v := range opts.Metadata {
		q.Set("metadata["+k+"]", v)
	}
	if opts.ParentsAsRoot {
		q.Set("parents_as_root", "true")
	}
	if r == nil {
		r = http.NoBody
	}
	req, err := c.newRequest(ctx, http.MethodPut, "/files", q, r)
	if err != nil {
		return api.WriteResult{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if opts.Size > 0 {
		req.ContentLength = opts.Size
	}
	unknownSize := req.ContentLength == 0 && req.Body != nil && req.Body != http.NoBody
	if unknownSize || req.ContentLength > 64<<10 {
		// Let the agent refuse (too large, bad path) before the body is sent.
		req.Header.Set("Expect", "100-continue")
	}
	resp, err := c.send(req)
	if err != nil {
		return api.WriteResult{}, err
	}
	defer resp.Body.Close()
	var res api.WriteResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res, c.transportError(ctx, "decode answer of PUT /files", err)
	}
	return res, nil
}

// ListFiles lists the entries of a directory, descending depth levels
// (1: the directory's own entries), sorted by path.
func (c *Client) ListFiles(ctx context.Context, path string, depth int) (api.FileList, error) {
	q := c.fileQuery(path)
	if depth > 0 {
		q.Set("depth", strconv.Itoa(depth))
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	var res api.FileList
	err := c.doJSON(ctx, http.MethodGet, "/files/list", q, nil, &res)
	return res, err
}

// Stat describes a file without following a final symlink.
func (c *Client) Stat(ctx context.Context, path string) (api.FileInfo, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var res api.FileInfo
	err := c.doJSON(ctx, http.MethodGet, "/files/stat", c.fileQuery(path), nil, &res)
	return res, err
}

// Remove removes a file or an empty directory; with recursive, a
// directory and everything in it.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	q := c.fileQuery(path)
	if recursive {
		q.Set("recursive", "true")
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	return c.doJSON(ctx, http.MethodDelete, "/files", q, nil, nil)
}

// Mkdir creates a directory and its missing parents (mkdir -p).
func (c *Client) Mkdir(ctx context.Context, path string) (api.FileInfo, error) {
	return c.MkdirWith(ctx, api.MkdirRequest{Path: path})
}

// MkdirWith is Mkdir with the request's options (ParentsAsRoot); the
// request's user is the client's.
func (c *Client) MkdirWith(ctx context.Context, req api.MkdirRequest) (api.FileInfo, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	req.User = c.user
	var res api.FileInfo
	err := c.doJSON(ctx, http.MethodPost, "/files/mkdir", nil, req, &res)
	return res, err
}

// Rename moves from to to, replacing a file at to; to's missing parents
// are created.
func (c *Client) Rename(ctx context.Context, from, to string) (api.FileInfo, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var res api.FileInfo
	err := c.doJSON(ctx, http.MethodPost, "/files/rename", nil, api.RenameRequest{From: from, To: to, User: c.user}, &res)
	return res, err
}

// WatchOptions say what a file watch reports (GET /files/watch).
type WatchOptions struct {
	Path      string
	Recursive bool
	// WatchID and After resume a watch after the last event seen.
	WatchID string
	After   int64
	// Poll returns the events there are and ends, instead of following.
	Poll bool
	// Entry has a new watch describe each created, written, chmodded or
	// renamed path (FileEvent.Entry) when it sees the change.
	Entry bool
	// LocalOnly has a new watch refuse a directory on a network file
	// system (envd's default, unless allow_network_mounts).
	LocalOnly bool
}

// Watch opens a file watch, or resumes one, and streams its events: a new
// watch starts with a "watching" event carrying its id.
func (c *Client) Watch(ctx context.Context, opts WatchOptions) (*WatchStream, error) {
	q := url.Values{}
	if opts.WatchID != "" {
		q.Set("watch_id", opts.WatchID)
		q.Set("after", strconv.FormatInt(opts.After, 10))
	} else {
		q = c.fileQuery(opts.Path)
		q.Set("recursive", strconv.FormatBool(opts.Recursive))
		if opts.Entry {
			q.Set("entry", "true")
		}
		if opts.LocalOnly {
			q.Set("allow_network_mounts", "false")
		}
	}
	if opts.Poll {
		q.Set("follow", "false")
	}
	resp, err := c.do(ctx, http.MethodGet, "/files/watch", q, nil, "")
	if err != nil {
		return nil, err
	}
	return &WatchStream{ctx: ctx, body: resp.Body, dec: json.NewDecoder(resp.Body), what: "file watch",
		resume: "resume it with its watch_id and the last seq as after"}, nil
}

// Unwatch removes a file watch.
func (c *Client) Unwatch(ctx context.Context, watchID string) error {
	return c.doJSON(ctx, http.MethodDelete, "/files/watch/"+url.PathEscape(watchID), nil, nil, nil)
}

// Stream reads an NDJSON stream of T (command events, file events):
//
//	for s.Next() {
//		ev := s.Event()
//	}
//	if err := s.Err(); err != nil { ... }
//
// The caller must Close it.
type Stream[T any] struct {
	ctx    context.Context
	body   io.ReadCloser
	dec    *json.Decoder
	ev     T
	err    error  // io.EOF at a clean end
	what   string // what the stream carries, for errors
	resume string // how to pick up after a break, for errors
}

// EventStream is a command's events.
type EventStream = Stream[api.CommandEvent]

// WatchStream is a file watch's events.
type WatchStream = Stream[api.FileEvent]

func newEventStream(ctx context.Context, body io.ReadCloser) *EventStream {
	return &EventStream{ctx: ctx, body: body, dec: json.NewDecoder(body), what: "command output",
		resume: "reattach with GET .../commands/{pid}/output and the last offsets"}
}

// Next reads the next event; it returns false at the end of the stream or
// on an error.
func (s *Stream[T]) Next() bool {
	if s.err != nil {
		return false
	}
	var ev T
	if err := s.dec.Decode(&ev); err != nil {
		s.err = err
		return false
	}
	s.ev = ev
	return true
}

// Event returns the event read by the last successful Next.
func (s *Stream[T]) Event() T { return s.ev }

// Err returns the error that ended the stream, or nil at a clean end. A
// stream cut short by the caller's context gives the context's error; one
// cut short otherwise (the agent died, the connection broke) gives an
// agent_unavailable error.
func (s *Stream[T]) Err() error {
	if s.err == nil || s.err == io.EOF {
		return nil
	}
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("read %s: %w", s.what, err)
	}
	return errdefs.Wrap(s.err, errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable,
		"the "+s.what+" stream from the machine agent broke off", s.resume)
}

// Close ends the stream.
func (s *Stream[T]) Close() error { return s.body.Close() }

// doJSON sends in (if not nil) as JSON and decodes a 2xx answer into out
// (if not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	contentType := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		body, contentType = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, q, body, contentType)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body) // lets the connection be reused
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return c.transportError(ctx, "decode answer of "+method+" "+path, err)
	}
	return nil
}

// do sends a request and returns the response if it is a 2xx; otherwise
// the agent's error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return c.send(req)
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("agent request %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", c.bearer())
	return req, nil
}

func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(req.Context(), req.Method+" "+req.URL.Path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

// transportError explains a failure to talk to the agent: the caller's
// context ending, or the agent being unreachable.
func (c *Client) transportError(ctx context.Context, what string, err error) error {
	switch ctx.Err() {
	case context.Canceled:
		return fmt.Errorf("agent %s: %w", what, context.Canceled)
	case context.DeadlineExceeded:
		return errdefs.Wrap(fmt.Errorf("agent %s: %w", what, err), errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
			"the machine agent did not answer in time", "retry with a longer timeout")
	}
	return errdefs.Wrap(fmt.Errorf("agent %s: %w", what, err), errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable,
		"the machine agent is not reachable", "retry in a few seconds; if it keeps failing, the machine may have stopped")
}

// codeClasses gives the class of each code the agent answers with.
var codeClasses = map[string]error{
	errdefs.CodeInvalidArgument:    errdefs.ErrInvalidArgument,
	errdefs.CodeCommandNotFound:    errdefs.ErrInvalidArgument,
	errdefs.CodeFileTooLarge:       errdefs.ErrInvalidArgument,
	errdefs.CodeIsADirectory:       errdefs.ErrInvalidArgument,
	errdefs.CodeNotADirectory:      errdefs.ErrInvalidArgument,
	errdefs.CodeUnauthenticated:    errdefs.ErrUnauthenticated,
	errdefs.CodeNotFound:           errdefs.ErrNotFound,
	errdefs.CodeFileNotFound:       errdefs.ErrNotFound,
	errdefs.CodeProcessNotFound:    errdefs.ErrNotFound,
	errdefs.CodeFileExists:         errdefs.ErrFailedPrecondition,
	errdefs.CodeDirectoryNotEmpty:  errdefs.ErrFailedPrecondition,
	errdefs.CodePermissionDenied:   errdefs.ErrFailedPrecondition,
	errdefs.CodeFailedPrecondition: errdefs.ErrFailedPrecondition,
	errdefs.CodeConflict:           errdefs.ErrConflict,
	errdefs.CodeResourceExhausted:  errdefs.ErrResourceExhausted,
	errdefs.CodeUnavailable:        errdefs.ErrUnavailable,
	errdefs.CodeAgentUnavailable:   errdefs.ErrUnavailable,
	errdefs.CodeDeadlineExceeded:   errdefs.ErrDeadlineExceeded,
	errdefs.CodeCommandTimeout:     errdefs.ErrDeadlineExceeded,
	errdefs.CodeInternal:           errdefs.ErrInternal,
}

// statusClass is the class of an HTTP status, for codes not in codeClasses.
func statusClass(status int) error {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return errdefs.ErrInvalidArgument
	case http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case http.StatusForbidden, http.StatusConflict:
		return errdefs.ErrFailedPrecondition
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusTooManyRequests:
		return errdefs.ErrResourceExhausted
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return errdefs.ErrUnavailable
	case http.StatusGatewayTimeout:
		return errdefs.ErrDeadlineExceeded
	}
	return errdefs.ErrInternal
}

// decodeError turns a non-2xx answer into an *errdefs.Error.
func decodeError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ae api.Error
	if err := json.Unmarshal(body, &ae); err != nil || ae.Code == "" {
		class := statusClass(resp.StatusCode)
		code := errdefs.Classify(class).Code
		return errdefs.Wrap(fmt.Errorf("agent answered %s: %.200q", resp.Status, body), class, code,
			"the machine agent answered "+resp.Status, "")
	}
	class, ok := codeClasses[ae.Code]
	if !ok {
		class = statusClass(resp.StatusCode)
	}
	e := errdefs.New(class, ae.Code, ae.Message, ae.SuggestedAction)
	if ae.Code == errdefs.CodePermissionDenied {
		e.Status = http.StatusForbidden // as the agent answers it
	}
	return e
}

func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}
