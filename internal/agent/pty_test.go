package agent_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

// screen follows a PTY command's output until it holds want.
func screen(t *testing.T, c *agentclient.Client, pid int, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	s, err := c.Output(ctx, pid, agentclient.OutputOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out bytes.Buffer
	for s.Next() {
		out.Write(s.Event().Data)
		if strings.Contains(out.String(), want) {
			return out.String()
		}
	}
	t.Fatalf("terminal output never showed %q: %q (%v)", want, out.String(), s.Err())
	return ""
}

// TestPTY: a shell on a terminal of the size asked, resized later (stty
// sees it), with TERM set; ^C from stdin interrupts the foreground sleep
// (job control through the terminal); the exit code comes back.
func TestPTY(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	st, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"/bin/sh"}, Background: true, PTY: &api.PTYSize{Rows: 24, Cols: 80}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(b string) {
		t.Helper()
		if err := ta.c.WriteStdin(ctx, st.PID, api.StdinRequest{Bytes: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	write("stty size; echo TERM=$TERM\n")
	screen(t, ta.c, st.PID, "24 80")
	screen(t, ta.c, st.PID, "TERM=xterm") // the agent's own TERM here; xterm-256color in a machine
	if err := ta.c.Resize(ctx, st.PID, api.PTYSize{Rows: 50, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	write("stty size\n")
	screen(t, ta.c, st.PID, "50 132")
	list, err := ta.c.ListProcesses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Processes {
		if p.PID == st.PID && (p.PTY == nil || *p.PTY != (api.PTYSize{Rows: 50, Cols: 132})) {
			t.Fatalf("process list shows pty %+v, want 50x132", p.PTY)
		}
	}
	start := time.Now()
	write("sleep 100\n")
	time.Sleep(300 * time.Millisecond)
	write("\x03") // ^C: the shell drops the rest of the line, so ask after
	write("echo after=$?\n")
	screen(t, ta.c, st.PID, "after=130")
	if time.Since(start) > 50*time.Second {
		t.Fatal("^C did not interrupt the sleep")
	}
	write("exit 7\n")
	wctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	exit, err := ta.c.Wait(wctx, st.PID)
	if err != nil || exit.ExitCode != 7 {
		t.Fatalf("wait: %+v, %v; want exit code 7", exit, err)
	}
}

// TestPTYBadInput: out-of-range sizes, a resize of a command without a
// terminal, closing a terminal's input.
func TestPTYBadInput(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	for _, size := range []api.PTYSize{{Rows: 0, Cols: 0}, {Rows: 100000, Cols: 100000}, {Rows: 24, Cols: 0}, {Rows: -1, Cols: 80}} {
		_, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"true"}, Background: true, PTY: &size})
		wantCode(t, err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
	}
	plain, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "10"}, Background: true})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, ta.c.Resize(ctx, plain.PID, api.PTYSize{Rows: 10, Cols: 10}), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
	term, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"cat"}, Background: true, PTY: &api.PTYSize{Rows: 10, Cols: 10}})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, ta.c.Resize(ctx, term.PID, api.PTYSize{Rows: 0, Cols: 10}), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
	wantCode(t, ta.c.WriteStdin(ctx, term.PID, api.StdinRequest{Close: true}), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
}
