package sshgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/terminal"
)

// DefaultShell is what a session without a command runs: a login bash
// where the template has one, sh otherwise (as `nullspace shell` does).
const DefaultShell = "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"

// writeTimeout bounds one write to a client that does not read: its
// session ends, the command runs on (its output stays bounded in the
// machine).
const writeTimeout = 30 * time.Second

// maxEnv bounds the variables a client may pass.
const maxEnv = 64

// session is one SSH session channel: requests set it up, then a shell or
// exec request runs one command in the machine.
type session struct {
	gate    *Server
	ch      ssh.Channel
	reqs    <-chan *ssh.Request
	team    string
	lineage string
	log     *slog.Logger
}

// SSH request payloads (RFC 4254).
type (
	ptyRequest struct {
		Term          string
		Cols, Rows    uint32
		Width, Height uint32
		Modes         string
	}
	windowChange struct {
		Cols, Rows    uint32
		Width, Height uint32
	}
	envRequest    struct{ Name, Value string }
	execRequest   struct{ Command string }
	signalRequest struct{ Signal string }
	exitStatus    struct{ Status uint32 }
	exitSignal    struct {
		Signal     string
		CoreDumped bool
		Message    string
		Lang       string
	}
)

func (ss *session) serve(ctx context.Context) {
	defer ss.ch.Close()
	var pty *api.PTYSize
	env := map[string]string{}
	for req := range ss.reqs {
		switch req.Type {
		case "pty-req":
			var p ptyRequest
			if ssh.Unmarshal(req.Payload, &p) != nil {
				req.Reply(false, nil)
				continue
			}
			pty = ptySize(p.Rows, p.Cols)
			if p.Term != "" {
				env["TERM"] = p.Term
			}
			req.Reply(true, nil)
		case "window-change":
			var w windowChange
			if ssh.Unmarshal(req.Payload, &w) == nil && pty != nil {
				pty = ptySize(w.Rows, w.Cols)
			}
		case "env":
			var e envRequest
			ok := ssh.Unmarshal(req.Payload, &e) == nil && len(env) < maxEnv && e.Name != "" && !strings.ContainsAny(e.Name, "=\x00")
			if ok {
				env[e.Name] = e.Value
			}
			req.Reply(ok, nil)
		case "shell", "exec":
			cmd := DefaultShell
			if req.Type == "exec" {
				var e execRequest
				if ssh.Unmarshal(req.Payload, &e) != nil || strings.TrimSpace(e.Command) == "" {
					req.Reply(false, nil)
					continue
				}
				cmd = e.Command
			}
			req.Reply(true, nil)
			ss.run(ctx, cmd, pty, env)
			return
		case "subsystem":
			// sftp needs an sftp-server in the machine, which templates
			// do not have; say what to use instead.
			fmt.Fprintf(ss.ch.Stderr(), "nullspace: SSH subsystems (sftp) are not supported: copy files with `nullspace files write|read` or the files API\r\n")
			req.Reply(false, nil)
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

// ptySize is a client's terminal size within the API's bounds (a client
// that sends 0×0, not knowing its size, gets 80×24).
func ptySize(rows, cols uint32) *api.PTYSize {
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	return &api.PTYSize{Rows: int(min(rows, api.MaxPTYRows)), Cols: int(min(cols, api.MaxPTYCols))}
}

// run runs cmd in the lineage's running execution, waking it first, and
// joins the channel to it until it exits or either side leaves.
func (ss *session) run(ctx context.Context, cmd string, pty *api.PTYSize, env map[string]string) {
	t, err := ss.wake(ctx, pty != nil)
	if err != nil {
		ss.fail(err)
		return
	}
	running, stop := ss.gate.machines.WhileRunning(ctx, t.MachineID)
	defer stop()
	agent, err := ss.gate.machines.Agent(running, ss.team, t.MachineID)
	if err != nil {
		ss.fail(err)
		return
	}
	req := api.RunCommandRequest{Shell: cmd, PTY: pty, Env: env, Background: true, KeepStdinOpen: pty == nil}
	started, err := agent.Start(running, req)
	if err != nil {
		ss.fail(err)
		return
	}
	pid := started.PID
	log := ss.log.With("machine_id", t.MachineID, "pid", pid)
	log.Info("ssh session started", "pty", pty != nil)

	done := make(chan struct{})
	conn := newConn(ss.ch, ss.reqs, pty != nil, done, func(sig string) {
		if err := agent.Signal(context.WithoutCancel(ctx), pid, sig); err != nil {
			log.Debug("ssh signal", "signal", sig, "err", err)
		}
	})
	err = terminal.Run(running, agent, pid, 0, conn, func() { ss.gate.machines.Touch(t.MachineID) })
	close(done)
	switch {
	case conn.exited:
	case ss.gate.bg.Err() != nil:
		// The server is stopping: say so, and how to get back.
		ss.notice(fmt.Sprintf("the server is shutting down; the command goes on in machine %s as pid %d: reattach with `nullspace shell %s --pid %d`",
			t.MachineID, pid, t.MachineID, pid), pty != nil)
		ss.exit(255)
	case ctx.Err() != nil || conn.left():
		// The client left (its connection or its session ended).
		if pty == nil {
			// Nobody reads a plain command's output any more: hang it
			// up, as sshd does. A terminal session is kept to reattach.
			agent.Signal(context.WithoutCancel(ctx), pid, "SIGHUP")
		}
	case running.Err() != nil:
		state := ""
		if now, err := ss.gate.machines.Route(context.WithoutCancel(ctx), ss.lineage); err == nil && now.MachineID == t.MachineID {
			state = now.State
		}
		ss.notice(terminal.Gone(t.MachineID, pid, state, "ssh again (with auto_resume it wakes), and reattach with `nullspace shell --pid`"), pty != nil)
		ss.exit(255)
	case err != nil:
		log.Warn("ssh session", "err", err)
		ss.fail(err)
	}
}

// wake returns the lineage's running execution: at once if it runs,
// after a wake if it is paused or stopped with auto_resume (within the
// edge's window), or a contract error with the edge's stable code.
func (ss *session) wake(ctx context.Context, interactive bool) (edge.Target, error) {
	return edge.Bring(ctx, ss.gate.bg, ss.gate.machines, ss.lineage, ss.gate.cfg.WakeTimeout, func(t edge.Target) {
		if interactive && t.AutoResume && (t.State == api.StatePaused || t.State == api.StateStopped) {
			ss.notice(fmt.Sprintf("machine %s is %s: waking it", ss.lineage, t.State), true)
		}
	})
}

// fail tells the client why its session cannot go on, with the stable
// code first, and ends it with status 255 (ssh's own failures).
func (ss *session) fail(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	p := errdefs.Classify(err)
	level := slog.LevelDebug
	if p.Status >= 500 || p.Hidden {
		level = slog.LevelWarn
	}
	ss.log.Log(context.Background(), level, "ssh session failed", "code", p.Code, "err", err)
	msg := p.Code + ": " + p.Message
	if p.SuggestedAction != "" {
		msg += "; " + p.SuggestedAction
	}
	ss.notice(msg, true)
	ss.exit(255)
}

func (ss *session) notice(msg string, crlf bool) {
	end := "\n"
	if crlf {
		end = "\r\n"
	}
	ss.ch.Stderr().Write([]byte("nullspace: " + msg + end))
}

func (ss *session) exit(code int) {
	ss.ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(code)}))
}

// conn is a terminal.Conn over an SSH session channel.
type conn struct {
	ch     ssh.Channel
	in     chan terminal.Input
	gone   chan struct{} // closed when the client closed the channel
	exited bool
}

func newConn(ch ssh.Channel, reqs <-chan *ssh.Request, pty bool, done <-chan struct{}, signal func(string)) *conn {
	c := &conn{ch: ch, in: make(chan terminal.Input), gone: make(chan struct{})}
	send := func(in terminal.Input) bool {
		select {
		case c.in <- in:
			return true
		case <-done:
			return false
		}
	}
	// The channel's data and its requests come apart (Read, and a Go
	// channel); the client's order between them matters (a window change,
	// then "stty size"). x/crypto queues a request before it buffers the
	// data that followed it, so one goroutine taking requests first keeps
	// the order.
	data := make(chan []byte)
	go func() {
		defer close(data)
		buf := make([]byte, 32<<10)
		for {
			n, err := ch.Read(buf)
			if n > 0 {
				select {
				case data <- append([]byte(nil), buf[:n]...):
				case <-done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	request := func(req *ssh.Request) bool {
		switch req.Type {
		case "window-change":
			var w windowChange
			if ssh.Unmarshal(req.Payload, &w) == nil && pty {
				return send(terminal.Input{Resize: ptySize(w.Rows, w.Cols)})
			}
		case "signal":
			var s signalRequest
			if ssh.Unmarshal(req.Payload, &s) == nil && s.Signal != "" {
				signal("SIG" + s.Signal)
			}
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
		return true
	}
	go func() {
		defer close(c.gone)
		for reqs != nil || data != nil {
			select { // requests first: they came before the data after them
			case req, ok := <-reqs:
				if !ok {
					return // the client closed the channel
				}
				if !request(req) {
					return
				}
				continue
			default:
			}
			select {
			case req, ok := <-reqs:
				if !ok {
					return
				}
				if !request(req) {
					return
				}
			case b, ok := <-data:
				if !ok {
					// The client's input ended (EOF): a terminal has no
					// end of input, a plain command sees one on stdin.
					data = nil
					if !pty && !send(terminal.Input{CloseStdin: true}) {
						return
					}
					continue
				}
				if !send(terminal.Input{Bytes: b}) {
					return
				}
			}
		}
	}()
	return c
}

// left says whether the client closed the session.
func (c *conn) left() bool {
	select {
	case <-c.gone:
		return true
	default:
		return false
	}
}

func (c *conn) write(w io.Writer, b []byte) error {
	t := time.AfterFunc(writeTimeout, func() { c.ch.Close() })
	defer t.Stop()
	_, err := w.Write(b)
	return err
}

func (c *conn) Output(_ context.Context, o terminal.Output) error {
	if o.Stderr {
		return c.write(c.ch.Stderr(), o.Data)
	}
	return c.write(c.ch, o.Data)
}

func (c *conn) Exit(_ context.Context, e terminal.Exit) error {
	c.exited = true
	if e.Signal != "" {
		_, err := c.ch.SendRequest("exit-signal", false, ssh.Marshal(exitSignal{Signal: strings.TrimPrefix(e.Signal, "SIG")}))
		return err
	}
	_, err := c.ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(e.ExitCode)}))
	return err
}

func (c *conn) Notice(_ context.Context, err error) error {
	return c.write(c.ch.Stderr(), []byte("nullspace: "+errdefs.Classify(err).Message+"\r\n"))
}

func (c *conn) Input(ctx context.Context) (terminal.Input, error) {
	select {
	case in := <-c.in:
		return in, nil
	case <-c.gone:
		return terminal.Input{}, io.EOF
	case <-ctx.Done():
		return terminal.Input{}, ctx.Err()
	}
}
