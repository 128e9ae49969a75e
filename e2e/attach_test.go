package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// attached is a WebSocket session on a command, as a client sees it.
type attached struct {
	t      *testing.T
	ws     *websocket.Conn
	screen strings.Builder
}

func attach(t *testing.T, id string, pid int, opts client.AttachOptions) *attached {
	t.Helper()
	ws, err := env.client.Attach(t.Context(), id, pid, opts)
	if err != nil {
		t.Fatalf("attach to %d in %s: %v", pid, id, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return &attached{t: t, ws: ws}
}

func (a *attached) keys(s string) {
	a.t.Helper()
	if err := a.ws.Write(a.t.Context(), websocket.MessageBinary, []byte(s)); err != nil {
		a.t.Fatal(err)
	}
}

func (a *attached) resize(rows, cols int) {
	a.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": "resize", "rows": rows, "cols": cols})
	if err := a.ws.Write(a.t.Context(), websocket.MessageText, b); err != nil {
		a.t.Fatal(err)
	}
}

// until reads frames until the screen shows want (or, with want "", the
// exit message comes); it returns the last text frame.
func (a *attached) until(want string) map[string]any {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(a.t.Context(), 30*time.Second)
	defer cancel()
	for {
		typ, b, err := a.ws.Read(ctx)
		if err != nil {
			a.t.Fatalf("waiting for %q: %v; screen %q", want, err, a.screen.String())
		}
		if typ == websocket.MessageBinary {
			a.screen.Write(b)
			if want != "" && strings.Contains(a.screen.String(), want) {
				return nil
			}
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			a.t.Fatalf("text frame %q: %v", b, err)
		}
		if m["type"] == "exit" || want == "" {
			return m
		}
	}
}

// TestAttach: a shell on a terminal through the WebSocket attach: resize
// and keystrokes in, output out, a refused resize that does not end the
// session, a client that drops mid-session (the shell runs on and is
// attached again with its scrollback), a paused machine woken by connect,
// and the exit message last.
func TestAttach(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	pid := startBash(t, m.ID)
	a := attach(t, m.ID, pid, client.AttachOptions{})
	a.resize(30, 100)
	a.keys("stty size\n")
	a.until("30 100")
	a.resize(0, 0)
	if msg := a.until(""); msg == nil || msg["code"] != "invalid_argument" {
		t.Fatalf("a resize to 0x0: %v, want an error notice", msg)
	}
	a.keys("x=still-here; echo ready\n")
	a.until("ready")
	a.ws.CloseNow() // the client drops

	b := attach(t, m.ID, pid, client.AttachOptions{})
	b.until("30 100") // scrollback from offset 0
	pause(t, m.ID)
	// The session open during the pause ends with a reason, at once.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	for {
		if _, _, err := b.ws.Read(rctx); err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "connect=true") {
				t.Fatalf("the attach open during a pause ended with %v, want 1001 and a reason", err)
			}
			break
		}
	}
	cancel()
	c := attach(t, m.ID, pid, client.AttachOptions{Connect: true}) // wakes the machine: a new execution
	c.keys("echo $x\n")
	c.until("still-here")
	c.keys("exit 5\n")
	exit := c.until("")
	if exit["type"] != "exit" || exit["exit_code"] != float64(5) {
		t.Fatalf("last message %v, want exit code 5", exit)
	}
	latest, err := env.client.GetMachine(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.WithoutCancel(ctx), latest.LatestID) })

	// A plain command (no terminal) over the same socket: stdin in, stdout
	// and stderr out, an eof message closing its stdin.
	ppid, err := env.client.StartCommand(ctx, latest.LatestID, api.RunCommandRequest{
		Shell: "cat; echo stdin-closed >&2", KeepStdinOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	p := attach(t, latest.LatestID, ppid, client.AttachOptions{})
	p.keys("through a socket\n")
	p.until("through a socket")
	if err := p.ws.Write(ctx, websocket.MessageText, []byte(`{"type":"eof"}`)); err != nil {
		t.Fatal(err)
	}
	p.until("stdin-closed")
	if exit := p.until(""); exit["type"] != "exit" || exit["exit_code"] != float64(0) {
		t.Fatalf("plain command's last message %v", exit)
	}

	// A client that never reads does not hold the command up: 4 MiB of
	// terminal output runs to its end while the socket is not read.
	npid, err := env.client.StartCommand(ctx, latest.LatestID, api.RunCommandRequest{
		Shell: "yes | head -n 2000000", PTY: &api.PTYSize{Rows: 24, Cols: 80}})
	if err != nil {
		t.Fatal(err)
	}
	attach(t, latest.LatestID, npid, client.AttachOptions{}) // never read
	deadline := time.Now().Add(60 * time.Second)
	for {
		procs, err := env.client.ListProcesses(ctx, latest.LatestID)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(procs, func(p api.Process) bool { return p.PID == npid }); i >= 0 && !procs[i].Running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a command whose only reader never reads did not finish")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A machine with auto_resume wakes for an attach without connect=true.
	auto := newMachine(t, api.CreateMachineRequest{Template: "base", OnTimeout: "pause", AutoResume: true})
	apid := startBash(t, auto.ID)
	pause(t, auto.ID)
	d := attach(t, auto.ID, apid, client.AttachOptions{})
	d.keys("echo woken-by-attach\n")
	d.until("woken-by-attach")
	d.ws.CloseNow()
	if got := getMachine(t, auto.ID); got.LatestID == auto.ID {
		t.Fatalf("attach did not resume %s: %+v", auto.ID, got)
	} else {
		t.Cleanup(func() { env.client.KillMachine(context.WithoutCancel(ctx), got.LatestID) })
	}

	// Refusals before the upgrade are API errors.
	for _, tc := range []struct {
		id   string
		pid  int
		code string
	}{
		{latest.LatestID, 99999, "process_not_found"},
		{latest.LatestID, pid, "failed_precondition"},
		{m.ID, pid, "failed_precondition"}, // a paused alias names its latest execution
	} {
		if ws, err := env.client.Attach(ctx, tc.id, tc.pid, client.AttachOptions{}); !client.IsCode(err, tc.code) {
			if ws != nil {
				ws.CloseNow()
			}
			t.Fatalf("attach to %d in %s: %v, want %s", tc.pid, tc.id, err, tc.code)
		}
	}
}

// TestShellCLI drives `nullspace shell` on a pseudo-terminal of the host,
// as a person would: it opens a shell in a paused machine (resuming it and
// saying so), stty there sees this terminal's size, a command runs, and
// the remote exit code is the CLI's; then ~. detaches from a second
// session, which runs on and is attached again with --pid.
func TestShellCLI(t *testing.T) {
	bin := repoPath("bin/nullspace")
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	pause(t, m.ID)
	t.Cleanup(func() {
		if got, err := env.client.GetMachine(context.WithoutCancel(t.Context()), m.ID); err == nil {
			env.client.KillMachine(context.WithoutCancel(t.Context()), got.LatestID)
		}
	})
	onTerminal := func(args ...string) (*exec.Cmd, *os.File, *lockedBuffer, chan struct{}) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, append([]string{"--api-url", "http://" + env.inst.Addr, "--api-key", env.key}, args...)...)
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 111})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		out := &lockedBuffer{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.Copy(out, f)
		}()
		return cmd, f, out, done
	}
	shell := func(args ...string) (*exec.Cmd, *os.File, *lockedBuffer, chan struct{}) {
		t.Helper()
		return onTerminal(append([]string{"shell"}, args...)...)
	}
	waitScreen := func(out *lockedBuffer, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("screen never showed %q: %q", want, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	cmd, f, out, done := shell(m.ID)
	waitScreen(out, "resumed as")
	waitScreen(out, "/workspace#")
	f.Write([]byte("stty size; echo sum=$((6*7))\r"))
	waitScreen(out, "33 111")
	waitScreen(out, "sum=42")
	f.Write([]byte("exit 3\r"))
	<-done
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("nullspace shell exited %v, want exit code 3; screen %q", err, out.String())
	}

	// Detach with ~. and attach again to the same shell.
	latest, err := env.client.GetMachine(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	cmd, f, out, done = shell(latest.LatestID)
	waitScreen(out, "/workspace#") // the prompt: bash is reading
	f.Write([]byte("kept=yes; echo set\r"))
	waitScreen(out, "set\r\n")
	f.Write([]byte("\r~."))
	<-done
	if err := cmd.Wait(); err != nil {
		t.Fatalf("detach: %v; screen %q", err, out.String())
	}
	var detachedPID int
	if i := strings.Index(out.String(), "--pid "); i < 0 {
		t.Fatalf("detach did not say how to attach again: %q", out.String())
	} else {
		fmt.Sscan(out.String()[i+len("--pid "):], &detachedPID)
	}
	cmd, f, out, done = shell(latest.LatestID, "--pid", fmt.Sprint(detachedPID))
	waitScreen(out, "set\r\n") // the scrollback of the session
	f.Write([]byte("echo kept=$kept; exit\r"))
	waitScreen(out, "kept=yes")
	<-done
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reattached shell: %v; screen %q", err, out.String())
	}

	// exec -it: an interactive command on a terminal, with exec's flags.
	cmd, f, out, done = onTerminal("exec", "-it", "--cwd", "/tmp", "--env", "X=42", latest.LatestID, "--",
		"sh", "-c", `stty size; read line; echo "got $line in $(pwd) x=$X"; exit 4`)
	waitScreen(out, "33 111")
	f.Write([]byte("typed\r"))
	waitScreen(out, "got typed in /tmp x=42")
	<-done
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Fatalf("exec -it exited %v, want 4; screen %q", err, out.String())
	}
}

// lockedBuffer is a bytes.Buffer one goroutine writes while another reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
