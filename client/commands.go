package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/api"
)

// RunCommand runs a command in the foreground and returns its result once it
// exits (POST /v1/machines/{id}/commands). req.Background and req.Stream are
// ignored.
func (c *Client) RunCommand(ctx context.Context, id string, req api.RunCommandRequest) (*api.CommandResult, error) {
	req.Background, req.Stream = false, false
	var res api.CommandResult
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "commands"), json: req}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// StartCommand starts a command in the background and returns its pid. Its
// output is kept by the machine; read it with StreamOutput.
func (c *Client) StartCommand(ctx context.Context, id string, req api.RunCommandRequest) (int, error) {
	req.Background, req.Stream = true, false
	var res api.CommandStarted
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "commands"), json: req}, &res); err != nil {
		return 0, err
	}
	return res.PID, nil
}

// StreamCommand runs a command in the foreground and streams its events
// (start, stdout, stderr, exit) as they happen. Errors the server reports
// before the stream starts (an unknown machine, say) are returned here as an
// *APIError; later ones come from the stream. The caller must close the stream.
func (c *Client) StreamCommand(ctx context.Context, id string, req api.RunCommandRequest) (*EventStream, error) {
	req.Background, req.Stream = false, true
	return c.stream(ctx, request{method: http.MethodPost, path: machinePath(id, "commands"), json: req})
}

// StreamOutputOptions says what part of a command's output StreamOutput reads.
type StreamOutputOptions struct {
	// Follow keeps the stream open for live output until the process exits;
	// otherwise the stream ends after the buffered output.
	Follow bool
	// StdoutOffset and StderrOffset skip output already seen: pass the
	// offset of the last event plus the length of its data.
	StdoutOffset int64
	StderrOffset int64
	// Live skips the buffered output: only what the command writes from
	// now on (the offsets are ignored), then its exit event.
	Live bool
}

// StreamOutput streams the output of a command started earlier, buffered
// output first (GET /v1/machines/{id}/commands/{pid}/output). The stream ends
// with an exit event when the process has exited. The caller must close it.
func (c *Client) StreamOutput(ctx context.Context, id string, pid int, opts StreamOutputOptions) (*EventStream, error) {
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
	return c.stream(ctx, request{method: http.MethodGet, path: processPath(id, pid, "output"), query: q})
}

func (c *Client) stream(ctx context.Context, r request) (*EventStream, error) {
	r.accept = "application/x-ndjson"
	resp, err := c.send(ctx, r)
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: got a %s stream, want application/x-ndjson", r.method, r.path, ct)
	}
	return newEventStream(resp.Body), nil
}

// ListProcesses lists the commands started in a machine
// (GET /v1/machines/{id}/commands).
func (c *Client) ListProcesses(ctx context.Context, id string) ([]api.Process, error) {
	var l api.ProcessList
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id, "commands")}, &l); err != nil {
		return nil, err
	}
	return l.Processes, nil
}

// SendStdin writes data to a background command's stdin, then closes stdin
// if closeStdin is set (POST .../commands/{pid}/stdin). The command must have
// been started with KeepStdinOpen.
func (c *Client) SendStdin(ctx context.Context, id string, pid int, data string, closeStdin bool) error {
	body := api.StdinRequest{Data: data, Close: closeStdin}
	return c.do(ctx, request{method: http.MethodPost, path: processPath(id, pid, "stdin"), json: body}, nil)
}

// WriteStdin writes req's text and raw bytes to a command's stdin (a
// terminal's keystrokes, for a command started with PTY)
// (POST .../commands/{pid}/stdin).
func (c *Client) WriteStdin(ctx context.Context, id string, pid int, req api.StdinRequest) error {
	return c.do(ctx, request{method: http.MethodPost, path: processPath(id, pid, "stdin"), json: req}, nil)
}

// Resize changes the size of a command's terminal
// (POST .../commands/{pid}/resize).
func (c *Client) Resize(ctx context.Context, id string, pid int, rows, cols int) error {
	body := api.PTYSize{Rows: rows, Cols: cols}
	return c.do(ctx, request{method: http.MethodPost, path: processPath(id, pid, "resize"), json: body}, nil)
}

// Signal sends a signal ("SIGTERM", "TERM" or "15") to a command's process
// group (POST .../commands/{pid}/signal).
func (c *Client) Signal(ctx context.Context, id string, pid int, signal string) error {
	body := api.SignalRequest{Signal: signal}
	return c.do(ctx, request{method: http.MethodPost, path: processPath(id, pid, "signal"), json: body}, nil)
}

// KillProcess sends SIGKILL to a command's process group
// (DELETE /v1/machines/{id}/commands/{pid}).
func (c *Client) KillProcess(ctx context.Context, id string, pid int) error {
	return c.do(ctx, request{method: http.MethodDelete, path: processPath(id, pid)}, nil)
}

func processPath(id string, pid int, rest ...string) string {
	return machinePath(id, append([]string{"commands", strconv.Itoa(pid)}, rest...)...)
}

// AttachOptions says how Attach joins a command.
type AttachOptions struct {
	// StdoutOffset starts the output there (0: all the machine holds).
	StdoutOffset int64
	// Connect follows the lineage to its latest execution and wakes it
	// first, like Connect.
	Connect bool
}

// Attach opens a WebSocket joined to a running command
// (GET .../commands/{pid}/attach): binary frames are output and keystrokes,
// text frames JSON control messages (docs/http-api.md "Terminals"). The
// caller closes the connection.
func (c *Client) Attach(ctx context.Context, id string, pid int, opts AttachOptions) (*websocket.Conn, error) {
	q := url.Values{}
	if opts.StdoutOffset > 0 {
		q.Set("stdout_offset", strconv.FormatInt(opts.StdoutOffset, 10))
	}
	if opts.Connect {
		q.Set("connect", "true")
	}
	u := "ws" + strings.TrimPrefix(c.baseURL, "http") + processPath(id, pid, "attach")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	h := http.Header{}
	if c.apiKey != "" {
		h.Set("Authorization", "Bearer "+c.apiKey)
	}
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("attach to process %d in %s: %w", pid, id, err)
	}
	ws.SetReadLimit(4 << 20)
	return ws, nil
}
