package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// defaultShell is what `nullspace shell` runs without a command: a login
// bash where the template has one, sh otherwise.
const defaultShell = "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"

func (a *app) shellCommand() *cobra.Command {
	var pid int
	cmd := &cobra.Command{
		Use:   "shell ID [-- CMD [ARGS...]]",
		Short: "Open an interactive terminal in a machine",
		Long: `Open an interactive terminal in a machine: a login shell, or CMD, on a
pseudo-terminal of this terminal's size (window changes follow), with this
terminal in raw mode. A paused machine is resumed first and a stopped one
started, like connect; the new id is printed when it changes.

The exit code is the remote command's. Type ~. at the start of a line to
detach: the shell keeps running in the machine, and --pid PID attaches to it
again later (with its scrollback).`,
		Example: `  nullspace shell $ID
  nullspace shell $ID -- python3
  nullspace shell $ID --pid 42      # attach again to a detached session`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			req := api.RunCommandRequest{Shell: defaultShell}
			if len(args) > 1 {
				req = api.RunCommandRequest{Cmd: args[1:]}
			}
			return a.runShell(cmd, c, args[0], req, pid)
		},
	}
	cmd.Flags().IntVar(&pid, "pid", 0, "attach to this running command instead of starting one")
	return cmd
}

// runShell joins this terminal to req (started on a pseudo-terminal of
// this terminal's size) or, with pid, to a command running already.
func (a *app) runShell(cmd *cobra.Command, c *client.Client, id string, req api.RunCommandRequest, pid int) error {
	ctx := cmd.Context()
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	m, err := c.Connect(ctx, id)
	if err != nil {
		return err
	}
	if m.ID != id {
		fmt.Fprintf(stderr, "nullspace: machine %s resumed as %s\r\n", id, m.ID)
	}
	in, isTerm := cmd.InOrStdin(), false
	fd := -1
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd, isTerm = int(f.Fd()), true
	}
	size := api.PTYSize{Rows: 24, Cols: 80}
	if isTerm {
		if cols, rows, err := term.GetSize(fd); err == nil && rows > 0 && cols > 0 {
			size = api.PTYSize{Rows: min(rows, api.MaxPTYRows), Cols: min(cols, api.MaxPTYCols)}
		}
	}
	if pid == 0 {
		req.PTY = &size
		if pid, err = c.StartCommand(ctx, m.ID, req); err != nil {
			return err
		}
	}
	ws, err := c.Attach(ctx, m.ID, pid, client.AttachOptions{})
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	if isTerm {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer term.Restore(fd, old)
		resize(ctx, ws, size) // the size may have changed since the start
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if cols, rows, err := term.GetSize(fd); err == nil {
					resize(ctx, ws, api.PTYSize{Rows: min(rows, api.MaxPTYRows), Cols: min(cols, api.MaxPTYCols)})
				}
			}
		}()
	}
	detached := make(chan struct{})
	go sendKeys(ctx, ws, in, detached)

	for {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			select {
			case <-detached:
				fmt.Fprintf(stderr, "\r\nnullspace: detached; the session runs on: nullspace shell %s --pid %d\r\n", m.ID, pid)
				return nil
			default:
			}
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				return nil
			}
			var ce websocket.CloseError
			if errors.As(err, &ce) && ce.Code == websocket.StatusGoingAway {
				// The machine stopped running, or the server: the
				// reason says how to get back.
				fmt.Fprintf(stderr, "\r\nnullspace: %s\r\n", ce.Reason)
				return &exitCodeError{code: 255}
			}
			return fmt.Errorf("terminal session: %w", err)
		}
		if typ == websocket.MessageBinary {
			stdout.Write(b)
			continue
		}
		var msg struct {
			Type     string `json:"type"`
			ExitCode int    `json:"exit_code"`
			Message  string `json:"message"`
		}
		if json.Unmarshal(b, &msg) != nil {
			continue
		}
		switch msg.Type {
		case "exit":
			if msg.ExitCode != 0 {
				return &exitCodeError{code: msg.ExitCode}
			}
			return nil
		case "error":
			fmt.Fprintf(stderr, "\r\nnullspace: %s\r\n", msg.Message)
		}
	}
}

func resize(ctx context.Context, ws *websocket.Conn, size api.PTYSize) {
	b, _ := json.Marshal(map[string]any{"type": "resize", "rows": size.Rows, "cols": size.Cols})
	ws.Write(ctx, websocket.MessageText, b)
}

// sendKeys forwards keystrokes until in ends or ~. is typed at the start of
// a line (then detached is closed and the socket with it).
func sendKeys(ctx context.Context, ws *websocket.Conn, in io.Reader, detached chan struct{}) {
	buf := make([]byte, 4096)
	lineStart, tilde := true, false
	for {
		n, err := in.Read(buf)
		if n > 0 {
			out := make([]byte, 0, n+1)
			for _, ch := range buf[:n] {
				switch {
				case tilde && ch == '.':
					close(detached)
					ws.Close(websocket.StatusNormalClosure, "detached")
					return
				case tilde:
					tilde = false
					out = append(out, '~', ch)
				case lineStart && ch == '~':
					tilde = true
					continue
				default:
					out = append(out, ch)
				}
				lineStart = ch == '\r' || ch == '\n'
			}
			if len(out) > 0 && ws.Write(ctx, websocket.MessageBinary, out) != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			// Input ended (a pipe): the remote side sees end-of-file.
			ws.Write(ctx, websocket.MessageBinary, []byte{4})
			return
		}
	}
}
