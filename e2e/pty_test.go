package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// terminal follows the output of a command on a PTY from offset 0 until it
// shows want, and returns all of it.
func terminal(t *testing.T, id string, pid int, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := env.client.StreamOutput(ctx, id, pid, client.StreamOutputOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out bytes.Buffer
	for {
		ev, err := s.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Logf("stream: %v", err)
			}
			break
		}
		out.Write(ev.Data)
		if strings.Contains(out.String(), want) {
			return out.String()
		}
	}
	t.Fatalf("terminal of %d in %s never showed %q: %q", pid, id, want, out.String())
	return ""
}

// startBash starts an interactive bash (no rc files, prompt "$ ") on a
// 24x80 terminal in machine id and returns its pid.
func startBash(t *testing.T, id string) int {
	t.Helper()
	pid, err := env.client.StartCommand(t.Context(), id, api.RunCommandRequest{Cmd: []string{"bash", "--norc", "-i"},
		PTY: &api.PTYSize{Rows: 24, Cols: 80}, Env: map[string]string{"PS1": "$ "}})
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestPTY: bash on a terminal in a real machine: the size asked for, a
// resize stty sees, TERM, ^C interrupting the foreground sleep, the exit
// code; then a shell with a variable set survives a pause and resume and is
// reattached by pid with its scrollback.
func TestPTY(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	pid := startBash(t, m.ID)
	keys := func(id, s string) {
		t.Helper()
		if err := env.client.WriteStdin(ctx, id, pid, api.StdinRequest{Bytes: []byte(s)}); err != nil {
			t.Fatal(err)
		}
	}
	keys(m.ID, "stty size; echo term=$TERM\n")
	terminal(t, m.ID, pid, "24 80")
	terminal(t, m.ID, pid, "term=xterm-256color")
	if err := env.client.Resize(ctx, m.ID, pid, 50, 132); err != nil {
		t.Fatal(err)
	}
	keys(m.ID, "stty size\n")
	terminal(t, m.ID, pid, "50 132")
	keys(m.ID, "sleep 100\n")
	time.Sleep(500 * time.Millisecond)
	keys(m.ID, "\x03")
	keys(m.ID, "echo after=$?\n")
	terminal(t, m.ID, pid, "after=130")

	// Bad sizes are refused before anything runs.
	for _, size := range []api.PTYSize{{Rows: 0, Cols: 0}, {Rows: 100000, Cols: 100000}} {
		if err := env.client.Resize(ctx, m.ID, pid, size.Rows, size.Cols); !client.IsCode(err, "invalid_argument") {
			t.Fatalf("resize to %+v: %v, want invalid_argument", size, err)
		}
	}

	// The shell lives through a pause: its variable and its scrollback.
	keys(m.ID, "secret=kept-across-pause; echo set\n")
	terminal(t, m.ID, pid, "set")
	pause(t, m.ID)
	r, err := env.client.Connect(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.WithoutCancel(ctx), r.ID) })
	scroll := terminal(t, r.ID, pid, "after=130") // reattached: the scrollback from before the pause
	if !strings.Contains(scroll, "50 132") {
		t.Fatalf("scrollback after resume lacks earlier output: %q", scroll)
	}
	keys(r.ID, "echo $secret; exit 3\n")
	terminal(t, r.ID, pid, "kept-across-pause")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := env.client.StreamOutput(wctx, r.ID, pid, client.StreamOutputOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for {
		ev, err := s.Next()
		if err != nil {
			t.Fatalf("stream ended before the exit: %v", err)
		}
		if ev.Type == api.EventExit {
			if ev.ExitCode == nil || *ev.ExitCode != 3 {
				t.Fatalf("exit %+v, want code 3", ev)
			}
			break
		}
	}

	// A terminal on a killed machine is refused, like any command.
	if _, err := env.client.KillMachine(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	_, err = env.client.StartCommand(ctx, r.ID, api.RunCommandRequest{Cmd: []string{"sh"}, PTY: &api.PTYSize{Rows: 24, Cols: 80}})
	wantCode(t, err, "machine_not_running")
	_, err = env.client.Attach(ctx, r.ID, pid, client.AttachOptions{})
	wantCode(t, err, "machine_not_running")
}
