package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/terminal"
)

// attachWriteTimeout bounds one frame to a client that does not read: its
// session ends, the command runs on (its output stays bounded in the
// machine) and can be attached again.
const attachWriteTimeout = 30 * time.Second

// attachCommand upgrades to a WebSocket joined to a running command (one
// on a terminal, typically): binary frames are bytes both ways, text frames
// JSON control messages (docs/http-api.md "Terminals"). Errors before the
// upgrade are ordinary API errors.
func (s *Server) attachCommand(w http.ResponseWriter, r *http.Request, team string) error {
	id := r.PathValue("id")
	pid, err := parsePID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var offset int64
	if v := q.Get("stdout_offset"); v != "" {
		if offset, err = strconv.ParseInt(v, 10, 64); err != nil || offset < 0 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("stdout_offset %q is not a byte offset", v), "pass the offset after the output you have, or 0")
		}
	}
	connect := q.Get("connect") == "true"
	if !connect {
		// A paused or stopped machine with auto_resume wakes for a
		// session as it does for its URL.
		if rec, err := s.machines.Get(r.Context(), team, id); err == nil && rec.AutoResume &&
			(rec.State == api.StatePaused || rec.State == api.StateStopped) {
			connect = true
		}
	}
	if connect {
		// Like POST .../connect: follow the lineage to its latest execution,
		// resuming or starting it first.
		m, err := s.machines.Connect(r.Context(), team, id)
		if err != nil {
			return err
		}
		id = m.ID
	}
	ctx, done := s.machines.WhileRunning(r.Context(), id)
	defer done()
	ep, err := s.machines.AgentEndpoint(ctx, team, id)
	if err != nil {
		return err
	}
	agent := agentclient.New(ep.URL, ep.Token, s.agent)
	if err := checkProcess(ctx, agent, id, pid); err != nil {
		return err
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return nil // Accept answered the client already
	}
	ws.SetReadLimit(1 << 20)
	conn := &wsConn{ws: ws}
	// The session runs on a context of its own: a socket read whose
	// context ends drops the connection without a close frame, and the
	// client is owed one with the reason when the machine or the server
	// stops. Then the socket is closed with it, which ends the session.
	run, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRun()
	told := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			state := ""
			if rec, err := s.machines.Get(context.WithoutCancel(ctx), team, id); err == nil {
				state = rec.State
			}
			reason := terminal.Gone(id, pid, state, "attach again with connect=true")
			if r.Context().Err() != nil {
				reason = fmt.Sprintf("the server is shutting down; process %d runs on: attach again", pid)
			}
			close(told)
			ws.Close(websocket.StatusGoingAway, truncate(reason, 123)) // waits a moment for the client's answer
			cancelRun()
		case <-run.Done():
		}
	}()
	err = terminal.Run(run, agent, pid, offset, conn, func() { s.machines.Touch(id) })
	select {
	case <-told:
		return nil
	default:
	}
	switch {
	case err == nil:
		ws.Close(websocket.StatusNormalClosure, "")
	case errors.Is(err, io.EOF):
		ws.CloseNow() // the client left
	default:
		s.logger.WarnContext(r.Context(), "attach ended", "machine_id", id, "pid", pid, "err", err)
		ws.Close(websocket.StatusInternalError, truncate(errdefs.Classify(err).Message, 120))
	}
	return nil
}

func checkProcess(ctx context.Context, agent *agentclient.Client, id string, pid int) error {
	list, err := agent.ListProcesses(ctx)
	if err != nil {
		return err
	}
	for _, p := range list.Processes {
		if p.PID == pid {
			if !p.Running {
				return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
					fmt.Sprintf("process %d in machine %s has exited", pid, id), "read its output with GET .../commands/{pid}/output")
			}
			return nil
		}
	}
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeProcessNotFound,
		fmt.Sprintf("no process %d in machine %s", pid, id), "list the machine's commands with GET .../commands")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// control is a text frame of the attach protocol.
type control struct {
	Type     string `json:"type"` // resize and eof (client), exit and error (server)
	Rows     int    `json:"rows,omitempty"`
	Cols     int    `json:"cols,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
}

// wsConn is a terminal.Conn over a WebSocket.
type wsConn struct{ ws *websocket.Conn }

func (c *wsConn) write(ctx context.Context, typ websocket.MessageType, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, attachWriteTimeout)
	defer cancel()
	return c.ws.Write(ctx, typ, b)
}

func (c *wsConn) text(ctx context.Context, m control) error {
	b, _ := json.Marshal(m)
	return c.write(ctx, websocket.MessageText, b)
}

func (c *wsConn) Output(ctx context.Context, o terminal.Output) error {
	return c.write(ctx, websocket.MessageBinary, o.Data)
}

func (c *wsConn) Exit(ctx context.Context, e terminal.Exit) error {
	code := e.ExitCode
	return c.text(ctx, control{Type: "exit", ExitCode: &code, Signal: e.Signal})
}

func (c *wsConn) Notice(ctx context.Context, err error) error {
	p := errdefs.Classify(err)
	return c.text(ctx, control{Type: "error", Code: p.Code, Message: p.Message})
}

func (c *wsConn) Input(ctx context.Context) (terminal.Input, error) {
	for {
		typ, b, err := c.ws.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != -1 {
				return terminal.Input{}, io.EOF
			}
			return terminal.Input{}, err
		}
		if typ == websocket.MessageBinary {
			return terminal.Input{Bytes: b}, nil
		}
		var m control
		err = json.Unmarshal(b, &m)
		switch {
		case err == nil && m.Type == "resize":
			return terminal.Input{Resize: &api.PTYSize{Rows: m.Rows, Cols: m.Cols}}, nil
		case err == nil && m.Type == "eof":
			return terminal.Input{CloseStdin: true}, nil
		}
		if err := c.Notice(ctx, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"a text frame must be {\"type\":\"resize\",\"rows\":R,\"cols\":C} or {\"type\":\"eof\"}", "send keystrokes as binary frames")); err != nil {
			return terminal.Input{}, err
		}
	}
}
