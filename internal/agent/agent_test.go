package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

const testToken = "test-token"

// patience bounds every wait in these tests: generous, so a loaded
// two-core machine does not make them flaky.
const patience = 20 * time.Second

type testAgent struct {
	c   *agentclient.Client
	url string
}

// newAgent runs an agent on 127.0.0.1 and returns a client for it. Every
// command still running at the end of the test is killed.
func newAgent(t *testing.T, mutate ...func(*agent.Config)) testAgent {
	t.Helper()
	cfg := agent.Config{
		Token: testToken,
		Env:   append(os.Environ(), "NULLSPACE_AGENT_TOKEN=secret", "NULLSPACE_AGENT_OTHER=x"),
	}
	for _, m := range mutate {
		m(&cfg)
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	srv := httptest.NewServer(a.Handler())
	c := agentclient.New(srv.URL, testToken, nil)
	t.Cleanup(func() {
		ctx := context.Background()
		if list, err := c.ListProcesses(ctx); err == nil {
			for _, p := range list.Processes {
				c.Kill(ctx, p.PID) // also reaches groups whose leader exited
			}
		}
		c.Close()
		srv.CloseClientConnections()
		srv.Close()
	})
	return testAgent{c: c, url: srv.URL}
}

// waitFor polls cond until it holds or patience runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s after %v", what, patience)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamed is what an event stream delivered.
type streamed struct {
	stdout, stderr []byte
	start          *api.CommandEvent
	exit           *api.CommandEvent
	firstOffset    map[string]int64
}

// drain reads a stream to its end, checking that offsets are contiguous.
func drain(t *testing.T, s *agentclient.EventStream) streamed {
	t.Helper()
	defer s.Close()
	out := streamed{firstOffset: map[string]int64{}}
	next := map[string]int64{}
	for s.Next() {
		ev := s.Event()
		switch ev.Type {
		case api.EventStart:
			out.start = &ev
		case api.EventStdout, api.EventStderr:
			if _, ok := out.firstOffset[ev.Type]; !ok {
				out.firstOffset[ev.Type] = ev.Offset
			} else if ev.Offset != next[ev.Type] {
				t.Errorf("%s event at offset %d, want %d (contiguous)", ev.Type, ev.Offset, next[ev.Type])
			}
			next[ev.Type] = ev.Offset + int64(len(ev.Data))
			if ev.Type == api.EventStdout {
				out.stdout = append(out.stdout, ev.Data...)
			} else {
				out.stderr = append(out.stderr, ev.Data...)
			}
		case api.EventExit:
			out.exit = &ev
		default:
			t.Errorf("unexpected event %+v", ev)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	return out
}

func wantCode(t *testing.T, err error, class error, code string) {
	t.Helper()
	var e *errdefs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want *errdefs.Error with code %s", err, err, code)
	}
	if e.Code != code {
		t.Errorf("got code %q (%v), want %q", e.Code, err, code)
	}
	if !errors.Is(err, class) {
		t.Errorf("got class of %v, want %v", err, class)
	}
}

func TestRunForeground(t *testing.T) {
	ta := newAgent(t)
	tests := []struct {
		name       string
		req        api.RunCommandRequest
		wantStdout string
		wantStderr string
		wantExit   int
		wantSignal string
	}{
		{name: "argv", req: api.RunCommandRequest{Cmd: []string{"echo", "hello", "world"}},
			wantStdout: "hello world\n"},
		{name: "shell", req: api.RunCommandRequest{Shell: "echo out; echo err >&2; exit 3"},
			wantStdout: "out\n", wantStderr: "err\n", wantExit: 3},
		{name: "exit code", req: api.RunCommandRequest{Cmd: []string{"sh", "-c", "exit 42"}}, wantExit: 42},
		{name: "killed by signal", req: api.RunCommandRequest{Shell: "kill -TERM $$; sleep 5"},
			wantExit: 128 + 15, wantSignal: "SIGTERM"},
		{name: "env", req: api.RunCommandRequest{Shell: `echo "$FOO $HOME"`, Env: map[string]string{"FOO": "bar baz"}},
			wantStdout: "bar baz /root\n"},
		{name: "env overrides home", req: api.RunCommandRequest{Shell: `echo $HOME`, Env: map[string]string{"HOME": "/x"}},
			wantStdout: "/x\n"},
		{name: "agent variables hidden", req: api.RunCommandRequest{Shell: `env | grep -c NULLSPACE_AGENT_ || true`},
			wantStdout: "0\n"},
		{name: "cwd", req: api.RunCommandRequest{Cmd: []string{"pwd"}, Cwd: "/tmp"}, wantStdout: "/tmp\n"},
		{name: "default cwd is home", req: api.RunCommandRequest{Cmd: []string{"pwd"}}, wantStdout: "/root\n"},
		{name: "user by name", req: api.RunCommandRequest{Shell: `id -u; id -g; echo $HOME $USER $LOGNAME; pwd`, User: "nobody"},
			wantStdout: "65534\n65534\n/nonexistent nobody nobody\n/\n"},
		{name: "user by uid", req: api.RunCommandRequest{Cmd: []string{"id", "-u"}, User: "65534"}, wantStdout: "65534\n"},
		{name: "stdin", req: api.RunCommandRequest{Cmd: []string{"cat"}, Stdin: "piped\nlines\n"},
			wantStdout: "piped\nlines\n"},
		{name: "no stdin is EOF", req: api.RunCommandRequest{Cmd: []string{"cat"}}},
		{name: "relative argv via PATH", req: api.RunCommandRequest{Cmd: []string{"printf", "%s-%s", "a", "b"}},
			wantStdout: "a-b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := ta.c.Run(t.Context(), tt.req)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Stdout != tt.wantStdout {
				t.Errorf("got stdout %q, want %q", res.Stdout, tt.wantStdout)
			}
			if res.Stderr != tt.wantStderr {
				t.Errorf("got stderr %q, want %q", res.Stderr, tt.wantStderr)
			}
			if res.ExitCode != tt.wantExit {
				t.Errorf("got exit code %d, want %d", res.ExitCode, tt.wantExit)
			}
			if res.Signal != tt.wantSignal {
				t.Errorf("got signal %q, want %q", res.Signal, tt.wantSignal)
			}
			if res.PID <= 0 {
				t.Errorf("got pid %d, want > 0", res.PID)
			}
			if res.TimedOut || res.Truncated {
				t.Errorf("got timed_out=%v truncated=%v, want false", res.TimedOut, res.Truncated)
			}
		})
	}
}

func TestRunWorkdir(t *testing.T) {
	dir := t.TempDir()
	ta := newAgent(t, func(c *agent.Config) { c.Workdir = dir })
	res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Cmd: []string{"pwd"}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := res.Stdout, dir+"\n"; got != want {
		t.Errorf("got cwd %q, want %q", got, want)
	}
}

func TestRunTimeout(t *testing.T) {
	ta := newAgent(t)
	start := time.Now()
	res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Shell: "echo before; sleep 10", TimeoutMS: 200})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 8*time.Second {
		t.Errorf("took %v, want the command killed well before its 10 s sleep", elapsed)
	}
	if !res.TimedOut {
		t.Errorf("got timed_out false, want true")
	}
	if res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Errorf("got exit %d signal %q, want 137 SIGKILL", res.ExitCode, res.Signal)
	}
	if res.Stdout != "before\n" {
		t.Errorf("got stdout %q, want %q", res.Stdout, "before\n")
	}
}

func TestRunErrors(t *testing.T) {
	ta := newAgent(t)
	notExec := t.TempDir() + "/script"
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badInterp := t.TempDir() + "/bad"
	if err := os.WriteFile(badInterp, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		req       api.RunCommandRequest
		wantClass error
		wantCode  string
	}{
		{"missing command", api.RunCommandRequest{Cmd: []string{"no-such-command-nullspace"}},
			errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound},
		{"missing path", api.RunCommandRequest{Cmd: []string{"/no/such/binary"}},
			errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound},
		{"not executable", api.RunCommandRequest{Cmd: []string{notExec}},
			errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound},
		{"directory", api.RunCommandRequest{Cmd: []string{"/tmp"}},
			errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound},
		{"missing interpreter", api.RunCommandRequest{Cmd: []string{badInterp}},
			errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound},
		{"missing cwd", api.RunCommandRequest{Cmd: []string{"true"}, Cwd: "/no/such/dir"},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"relative cwd", api.RunCommandRequest{Cmd: []string{"true"}, Cwd: "tmp"},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"cwd is a file", api.RunCommandRequest{Cmd: []string{"true"}, Cwd: notExec},
			errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory},
		{"unknown user", api.RunCommandRequest{Cmd: []string{"true"}, User: "no-such-user-nullspace"},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"cmd and shell", api.RunCommandRequest{Cmd: []string{"true"}, Shell: "true"},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"nothing", api.RunCommandRequest{}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"negative timeout", api.RunCommandRequest{Cmd: []string{"true"}, TimeoutMS: -1},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"bad env", api.RunCommandRequest{Cmd: []string{"true"}, Env: map[string]string{"A=B": "c"}},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		// Fuzzed requests (issue 21): a NUL anywhere the kernel takes a C
		// string is the caller's mistake, never a 500.
		{"NUL in shell", api.RunCommandRequest{Shell: "echo a\x00b"}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"NUL in cmd", api.RunCommandRequest{Cmd: []string{"echo", "a\x00b"}}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"NUL in env value", api.RunCommandRequest{Cmd: []string{"true"}, Env: map[string]string{"A": "b\x00"}},
			errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"NUL in cwd", api.RunCommandRequest{Cmd: []string{"true"}, Cwd: "/tmp\x00x"}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"NUL in user", api.RunCommandRequest{Cmd: []string{"true"}, User: "root\x00"}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ta.c.Run(t.Context(), tt.req)
			wantCode(t, err, tt.wantClass, tt.wantCode)
			var e *errdefs.Error
			if errors.As(err, &e) && (e.Message == "" || e.SuggestedAction == "") {
				t.Errorf("got message %q action %q, want both set", e.Message, e.SuggestedAction)
			}
		})
	}
}

// A foreground command that leaves a grandchild holding its output pipes
// returns soon after it exits.
func TestForegroundNotHeldByBackgroundGrandchild(t *testing.T) {
	ta := newAgent(t)
	for _, shell := range []string{"sleep 30 & echo started", "nohup sleep 30 >/dev/null 2>&1 & echo started", "(sleep 30 &); echo started"} {
		t.Run(shell, func(t *testing.T) {
			start := time.Now()
			res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Shell: shell})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if elapsed := time.Since(start); elapsed > 10*time.Second {
				t.Errorf("took %v, want it back soon after sh exited", elapsed)
			}
			if res.Stdout != "started\n" || res.ExitCode != 0 {
				t.Errorf("got stdout %q exit %d, want %q 0", res.Stdout, res.ExitCode, "started\n")
			}
			// The grandchild is in the command's group: killing it ends it.
			if err := ta.c.Kill(t.Context(), res.PID); err != nil {
				t.Errorf("Kill: %v", err)
			}
			waitFor(t, "the grandchild to die", func() bool { return len(groupMembers(res.PID)) == 0 })
		})
	}
}

func TestBackgroundReattach(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	started, err := ta.c.Start(ctx, api.RunCommandRequest{
		Shell: "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done; echo done >&2; exit 7",
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	s, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{Follow: true})
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	got := drain(t, s)
	if want := "line1\nline2\nline3\nline4\nline5\n"; string(got.stdout) != want {
		t.Errorf("got stdout %q, want %q", got.stdout, want)
	}
	if string(got.stderr) != "done\n" {
		t.Errorf("got stderr %q, want %q", got.stderr, "done\n")
	}
	if got.exit == nil || got.exit.ExitCode == nil || *got.exit.ExitCode != 7 {
		t.Fatalf("got exit event %+v, want exit code 7", got.exit)
	}

	// Reattach after the exit, from offsets: only the rest, then the exit.
	tests := []struct {
		name             string
		opts             agentclient.OutputOptions
		wantOut, wantErr string
	}{
		{"from start", agentclient.OutputOptions{}, "line1\nline2\nline3\nline4\nline5\n", "done\n"},
		{"from offsets", agentclient.OutputOptions{StdoutOffset: 12, StderrOffset: 5}, "line3\nline4\nline5\n", ""},
		{"follow after exit", agentclient.OutputOptions{Follow: true, StdoutOffset: 24}, "line5\n", "done\n"},
		{"past the end", agentclient.OutputOptions{StdoutOffset: 1000, StderrOffset: 1000}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ta.c.Output(ctx, started.PID, tt.opts)
			if err != nil {
				t.Fatalf("Output: %v", err)
			}
			got := drain(t, s)
			if string(got.stdout) != tt.wantOut || string(got.stderr) != tt.wantErr {
				t.Errorf("got stdout %q stderr %q, want %q %q", got.stdout, got.stderr, tt.wantOut, tt.wantErr)
			}
			if tt.wantOut != "" && got.firstOffset[api.EventStdout] != tt.opts.StdoutOffset {
				t.Errorf("got first stdout offset %d, want %d", got.firstOffset[api.EventStdout], tt.opts.StdoutOffset)
			}
			if got.exit == nil || *got.exit.ExitCode != 7 {
				t.Errorf("got exit event %+v, want exit code 7", got.exit)
			}
		})
	}
}

func TestOutputWithoutFollowWhileRunning(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	started, err := ta.c.Start(ctx, api.RunCommandRequest{Shell: "echo ready; exec sleep 30"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got streamed
	waitFor(t, "output", func() bool {
		s, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{})
		if err != nil {
			t.Fatalf("Output: %v", err)
		}
		got = drain(t, s)
		return len(got.stdout) > 0
	})
	if string(got.stdout) != "ready\n" || got.exit != nil {
		t.Errorf("got stdout %q exit %+v, want %q and no exit event", got.stdout, got.exit, "ready\n")
	}
}

func TestConcurrentFollowers(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	started, err := ta.c.Start(ctx, api.RunCommandRequest{
		Shell: "i=0; while [ $i -lt 20 ]; do echo tick$i; i=$((i+1)); sleep 0.02; done",
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	var want strings.Builder
	for i := range 20 {
		want.WriteString("tick" + strconv.Itoa(i) + "\n")
	}
	const followers = 8
	var wg sync.WaitGroup
	results := make([]streamed, followers)
	for i := range followers {
		wg.Go(func() {
			s, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{Follow: true})
			if err != nil {
				t.Errorf("Output: %v", err)
				return
			}
			results[i] = drain(t, s)
		})
	}
	wg.Wait()
	for i, got := range results {
		if string(got.stdout) != want.String() {
			t.Errorf("follower %d: got stdout %q, want %q", i, got.stdout, want.String())
		}
		if got.exit == nil || *got.exit.ExitCode != 0 {
			t.Errorf("follower %d: got exit %+v, want exit code 0", i, got.exit)
		}
	}
}

func TestStream(t *testing.T) {
	ta := newAgent(t)
	s, err := ta.c.Stream(t.Context(), api.RunCommandRequest{Shell: "echo a; echo b >&2; echo c; exit 2"})
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	got := drain(t, s)
	if got.start == nil || got.start.PID <= 0 {
		t.Errorf("got start event %+v, want one with a pid", got.start)
	}
	if string(got.stdout) != "a\nc\n" || string(got.stderr) != "b\n" {
		t.Errorf("got stdout %q stderr %q, want %q %q", got.stdout, got.stderr, "a\nc\n", "b\n")
	}
	if got.exit == nil || *got.exit.ExitCode != 2 {
		t.Errorf("got exit %+v, want exit code 2", got.exit)
	}
}

func TestClientGoneKillsCommand(t *testing.T) {
	ta := newAgent(t)
	t.Run("stream", func(t *testing.T) {
		s, err := ta.c.Stream(t.Context(), api.RunCommandRequest{Cmd: []string{"sleep", "31"}})
		if err != nil {
			t.Fatalf("Stream: %v", err)
		}
		if !s.Next() || s.Event().Type != api.EventStart {
			t.Fatalf("got %+v (err %v), want a start event", s.Event(), s.Err())
		}
		pid := s.Event().PID
		s.Close()
		waitExit(t, ta.c, pid, 137)
	})
	t.Run("foreground", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := ta.c.Run(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "32"}})
			done <- err
		}()
		var pid int
		waitFor(t, "the command to start", func() bool {
			pid = findProcess(t, ta.c, "32")
			return pid != 0
		})
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
		waitExit(t, ta.c, pid, 137)
	})
}

// findProcess returns the pid of the process whose last argument is arg.
func findProcess(t *testing.T, c *agentclient.Client, arg string) int {
	t.Helper()
	list, err := c.ListProcesses(t.Context())
	if err != nil {
		t.Fatalf("ListProcesses: %v", err)
	}
	for _, p := range list.Processes {
		if p.Cmd[len(p.Cmd)-1] == arg {
			return p.PID
		}
	}
	return 0
}

// waitExit waits until pid is listed as exited and checks its exit code.
func waitExit(t *testing.T, c *agentclient.Client, pid, wantCode int) {
	t.Helper()
	var got api.Process
	waitFor(t, "process "+strconv.Itoa(pid)+" to exit", func() bool {
		list, err := c.ListProcesses(t.Context())
		if err != nil {
			t.Fatalf("ListProcesses: %v", err)
		}
		for _, p := range list.Processes {
			if p.PID == pid {
				got = p
				return !p.Running
			}
		}
		t.Fatalf("process %d not listed", pid)
		return false
	})
	if got.ExitCode == nil || *got.ExitCode != wantCode {
		t.Errorf("got exit code %v, want %d", got.ExitCode, wantCode)
	}
}

func TestStdin(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	started, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"cat"}, Stdin: "first\n", KeepStdinOpen: true})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	for _, req := range []api.StdinRequest{{Data: "second\n"}, {Data: "third\n", Close: true}} {
		if err := ta.c.WriteStdin(ctx, started.PID, req); err != nil {
			t.Fatalf("WriteStdin(%+v): %v", req, err)
		}
	}
	s, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{Follow: true})
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	got := drain(t, s)
	if want := "first\nsecond\nthird\n"; string(got.stdout) != want {
		t.Errorf("got stdout %q, want %q", got.stdout, want)
	}
	if got.exit == nil || *got.exit.ExitCode != 0 {
		t.Errorf("got exit %+v, want exit code 0", got.exit)
	}
	err = ta.c.WriteStdin(ctx, started.PID, api.StdinRequest{Data: "late\n"})
	wantCode(t, err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition)

	closed, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "30"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	err = ta.c.WriteStdin(ctx, closed.PID, api.StdinRequest{Data: "x"})
	wantCode(t, err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition)
}

// TestStdinStream: one open request carries a command's stdin as it is
// written (each write reaches the command before the next), in order with
// the end of input sent after it; a stream to a command whose stdin is
// closed is refused.
func TestStdinStream(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	started, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"cat"}, KeepStdinOpen: true})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	out, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{Follow: true})
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	defer out.Close()
	in := ta.c.OpenStdin(ctx, started.PID)
	var seen []byte
	for _, word := range []string{"one ", "two ", "three"} {
		if _, err := in.Write([]byte(word)); err != nil {
			t.Fatalf("Write: %v", err)
		}
		// cat echoes each write while the request is still open.
		for !strings.HasSuffix(string(seen), word) {
			if !out.Next() {
				t.Fatalf("output ended: %v", out.Err())
			}
			seen = append(seen, out.Event().Data...)
		}
	}
	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ta.c.WriteStdin(ctx, started.PID, api.StdinRequest{Close: true}); err != nil {
		t.Fatalf("close stdin: %v", err)
	}
	for out.Next() {
		if ev := out.Event(); ev.Type == api.EventExit {
			break
		}
	}
	if string(seen) != "one two three" {
		t.Fatalf("stdout %q", seen)
	}
	late := ta.c.OpenStdin(ctx, started.PID)
	late.Write([]byte("x"))
	err = late.Close()
	wantCode(t, err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition)
}

func TestSignalAndKill(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	tests := []struct {
		signal     string
		wantSignal string
	}{
		{"SIGTERM", "SIGTERM"},
		{"TERM", "SIGTERM"},
		{"15", "SIGTERM"},
		{"int", "SIGINT"},
		{"SIGUSR1", "SIGUSR1"},
	}
	for _, tt := range tests {
		t.Run(tt.signal, func(t *testing.T) {
			started, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "30"}})
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if err := ta.c.Signal(ctx, started.PID, tt.signal); err != nil {
				t.Fatalf("Signal: %v", err)
			}
			s, err := ta.c.Output(ctx, started.PID, agentclient.OutputOptions{Follow: true})
			if err != nil {
				t.Fatalf("Output: %v", err)
			}
			got := drain(t, s)
			if got.exit == nil || got.exit.Signal != tt.wantSignal {
				t.Fatalf("got exit %+v, want signal %s", got.exit, tt.wantSignal)
			}
		})
	}

	t.Run("kill reaches the whole group", func(t *testing.T) {
		started, err := ta.c.Start(ctx, api.RunCommandRequest{Shell: "sleep 30 & sleep 30 & wait"})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		waitFor(t, "the group to have 3 members", func() bool { return len(groupMembers(started.PID)) == 3 })
		if err := ta.c.Kill(ctx, started.PID); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		waitExit(t, ta.c, started.PID, 137)
		waitFor(t, "the group to be gone", func() bool { return len(groupMembers(started.PID)) == 0 })
	})

	t.Run("bad signal", func(t *testing.T) {
		started, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "30"}})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		err = ta.c.Signal(ctx, started.PID, "SIGNOPE")
		wantCode(t, err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument)
	})

	t.Run("unknown pid", func(t *testing.T) {
		const pid = 1 << 30
		_, err := ta.c.Output(ctx, pid, agentclient.OutputOptions{})
		wantCode(t, err, errdefs.ErrNotFound, errdefs.CodeProcessNotFound)
		wantCode(t, ta.c.Signal(ctx, pid, "TERM"), errdefs.ErrNotFound, errdefs.CodeProcessNotFound)
		wantCode(t, ta.c.Kill(ctx, pid), errdefs.ErrNotFound, errdefs.CodeProcessNotFound)
		wantCode(t, ta.c.WriteStdin(ctx, pid, api.StdinRequest{Data: "x"}), errdefs.ErrNotFound, errdefs.CodeProcessNotFound)
	})
}

func TestListProcesses(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	bg, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "30"}, Cwd: "/tmp", User: "nobody"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	fg, err := ta.c.Run(ctx, api.RunCommandRequest{Cmd: []string{"true"}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	list, err := ta.c.ListProcesses(ctx)
	if err != nil {
		t.Fatalf("ListProcesses: %v", err)
	}
	byPID := map[int]api.Process{}
	for _, p := range list.Processes {
		byPID[p.PID] = p
	}
	if got := byPID[bg.PID]; !got.Running || got.ExitCode != nil || got.Cwd != "/tmp" || got.User != "nobody" ||
		!slices.Equal(got.Cmd, []string{"sleep", "30"}) {
		t.Errorf("got %+v, want running sleep 30 in /tmp as nobody", got)
	}
	if got := byPID[fg.PID]; got.Running || got.ExitCode == nil || *got.ExitCode != 0 {
		t.Errorf("got %+v, want exited true with code 0", got)
	}
}

// Exited processes are forgotten beyond a bound; running ones never.
func TestListKeepsRecentExited(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	bg, err := ta.c.Start(ctx, api.RunCommandRequest{Cmd: []string{"sleep", "30"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	var last int
	for range 70 {
		res, err := ta.c.Run(ctx, api.RunCommandRequest{Cmd: []string{"true"}})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		last = res.PID
	}
	list, err := ta.c.ListProcesses(ctx)
	if err != nil {
		t.Fatalf("ListProcesses: %v", err)
	}
	if got, want := len(list.Processes), 64+1; got != want {
		t.Errorf("got %d processes, want %d (64 exited + 1 running)", got, want)
	}
	pids := map[int]bool{}
	for _, p := range list.Processes {
		pids[p.PID] = true
	}
	if !pids[bg.PID] || !pids[last] {
		t.Errorf("got pids %v, want the running %d and the last exited %d", pids, bg.PID, last)
	}
}

func TestOutputRingTruncation(t *testing.T) {
	ta := newAgent(t, func(c *agent.Config) { c.OutputBytes = 1000 })
	ctx := t.Context()
	res, err := ta.c.Run(ctx, api.RunCommandRequest{Shell: "i=0; while [ $i -lt 500 ]; do printf '%04d\\n' $i; i=$((i+1)); done"})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !res.Truncated {
		t.Errorf("got truncated false, want true")
	}
	if len(res.Stdout) != 1000 || !strings.HasPrefix(res.Stdout, "0300\n") || !strings.HasSuffix(res.Stdout, "0499\n") {
		t.Errorf("got %d bytes %q...%q, want the last 1000 bytes: 0300..0499",
			len(res.Stdout), res.Stdout[:min(10, len(res.Stdout))], res.Stdout[max(0, len(res.Stdout)-10):])
	}
	// An offset that was dropped starts at the oldest byte kept.
	s, err := ta.c.Output(ctx, res.PID, agentclient.OutputOptions{StdoutOffset: 10})
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	got := drain(t, s)
	if off := got.firstOffset[api.EventStdout]; off != 1500 {
		t.Errorf("got first offset %d, want 1500", off)
	}
	if string(got.stdout) != res.Stdout {
		t.Errorf("got %d bytes, want the %d kept", len(got.stdout), len(res.Stdout))
	}
}

func TestBinaryOutput(t *testing.T) {
	ta := newAgent(t)
	s, err := ta.c.Stream(t.Context(), api.RunCommandRequest{Shell: `printf '\377\000\001\303'`})
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	got := drain(t, s)
	if want := []byte{0xff, 0, 1, 0xc3}; string(got.stdout) != string(want) {
		t.Errorf("got %x, want %x", got.stdout, want)
	}
}

// Many short commands at once: no exit may be lost between fork and
// registration.
func TestConcurrentCommands(t *testing.T) {
	ta := newAgent(t)
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Shell: "exit " + strconv.Itoa(i)})
			if err != nil {
				t.Errorf("Run: %v", err)
				return
			}
			if res.ExitCode != i {
				t.Errorf("got exit %d, want %d", res.ExitCode, i)
			}
		})
	}
	wg.Wait()
}

// Orphans of commands are reparented to the agent (init in a machine, a
// child subreaper here) and reaped: none stays a zombie.
func TestReapsOrphans(t *testing.T) {
	ta := newAgent(t)
	for range 3 {
		res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Shell: "sleep 0.2 & sleep 0.3 & exit 0"})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("got exit %d, want 0", res.ExitCode)
		}
	}
	var sawOrphan bool
	waitFor(t, "orphans to be reaped", func() bool {
		children := childrenOf(os.Getpid())
		for _, c := range children {
			if c.comm == "sleep" {
				sawOrphan = true
			}
		}
		return len(children) == 0
	})
	if !sawOrphan {
		t.Log("the orphaned sleeps were reaped before they were seen as our children")
	}
}

// proc is a line of /proc/<pid>/stat.
type proc struct {
	pid, ppid, pgrp int
	state           byte
	comm            string
}

func readProcs() []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		out = append(out, proc{pid: pid, ppid: ppid, pgrp: pgrp, state: f[0][0], comm: s[open+1 : end]})
	}
	return out
}

// childrenOf lists the processes whose parent is pid, zombies included.
func childrenOf(pid int) []proc {
	var out []proc
	for _, p := range readProcs() {
		if p.ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// groupMembers lists the live processes of a process group.
func groupMembers(pgid int) []proc {
	var out []proc
	for _, p := range readProcs() {
		if p.pgrp == pgid && p.state != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

func TestAuth(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	bad := agentclient.New(ta.url, "wrong", nil)
	defer bad.Close()
	if _, err := bad.Health(ctx); err != nil {
		t.Errorf("Health without a valid token: %v, want it to work", err)
	}
	_, err := bad.Run(ctx, api.RunCommandRequest{Cmd: []string{"true"}})
	wantCode(t, err, errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated)
	_, err = bad.Stat(ctx, "/")
	wantCode(t, err, errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated)

	for _, header := range []string{"", "Bearer", "Bearer wrong", "Basic " + testToken, testToken} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ta.url+"/commands", nil)
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: got status %d, want 401", header, resp.StatusCode)
		}
	}
}

func TestWaitReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens until the agent comes up below

	c := agentclient.New("http://"+addr, testToken, nil)
	defer c.Close()

	short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	err = c.WaitReady(short)
	cancel()
	wantCode(t, err, errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable)
	_, err = c.Stat(t.Context(), "/")
	wantCode(t, err, errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable)

	a, err := agent.New(agent.Config{Token: testToken}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			served <- err
			return
		}
		served <- a.Serve(ctx, ln)
	}()
	readyCtx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	if err := c.WaitReady(readyCtx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	h, err := c.Health(t.Context())
	if err != nil || !h.OK {
		t.Errorf("got health %+v, %v, want ok", h, err)
	}
	stop()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestUnknownRoute(t *testing.T) {
	ta := newAgent(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, ta.url+"/nope", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"code":"not_found"`) {
		t.Errorf("got %d %s, want 404 not_found", resp.StatusCode, body)
	}
}

// On shutdown the agent forwards SIGTERM to its commands' groups, also to
// those whose leader already exited.
func TestShutdownForwardsSIGTERM(t *testing.T) {
	a, err := agent.New(agent.Config{Token: testToken, ShutdownGrace: patience}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, ln) }()
	c := agentclient.New("http://"+ln.Addr().String(), testToken, nil)
	defer c.Close()

	running, err := c.Start(t.Context(), api.RunCommandRequest{Cmd: []string{"sleep", "30"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	leftBehind, err := c.Run(t.Context(), api.RunCommandRequest{Shell: "sleep 30 & echo started"})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitFor(t, "the grandchild", func() bool { return len(groupMembers(leftBehind.PID)) == 1 })

	stop()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	for _, pid := range []int{running.PID, leftBehind.PID} {
		waitFor(t, "group "+strconv.Itoa(pid)+" to be gone", func() bool { return len(groupMembers(pid)) == 0 })
	}
}

// A background command may stream its events (E2B's commands): the stream
// ending leaves it running, and output?live=true follows only what it
// writes from then on.
func TestBackgroundStreamAndLiveOutput(t *testing.T) {
	ta := newAgent(t)
	ctx, cancel := context.WithCancel(t.Context())
	s, err := ta.c.Stream(ctx, api.RunCommandRequest{Cmd: []string{"sh", "-c", "echo one; read x; echo two"},
		Background: true, KeepStdinOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for s.Next() {
		ev := s.Event()
		if ev.Type == api.EventStart {
			pid = ev.PID
		}
		if ev.Type == api.EventStdout && string(ev.Data) == "one\n" {
			break
		}
	}
	cancel() // the stream goes; the command must not
	s.Close()
	time.Sleep(100 * time.Millisecond)
	list, err := ta.c.ListProcesses(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	running := false
	for _, p := range list.Processes {
		running = running || (p.PID == pid && p.Running)
	}
	if !running {
		t.Fatalf("pid %d is not running after its stream ended: %+v", pid, list.Processes)
	}
	live, err := ta.c.Output(t.Context(), pid, agentclient.OutputOptions{Follow: true, Live: true})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := ta.c.WriteStdin(t.Context(), pid, api.StdinRequest{Data: "go\n"}); err != nil {
		t.Fatal(err)
	}
	var out string
	exited := false
	for live.Next() {
		switch ev := live.Event(); ev.Type {
		case api.EventStdout:
			out += string(ev.Data)
		case api.EventExit:
			exited = true
		}
	}
	if out != "two\n" || !exited {
		t.Errorf("live output %q (exit seen: %v), want only \"two\\n\" and the exit", out, exited)
	}
}
