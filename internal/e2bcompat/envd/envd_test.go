package envd_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"

	"nullspace.dev/nullspace/internal/agent"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/e2bcompat/envd"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem/filesystemconnect"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process/processconnect"
	"nullspace.dev/nullspace/internal/errdefs"
)

const accessToken = "sandbox-token"

// fixture is envd over a real agent running on this host (as the agent's
// own tests run it), reached through the generated Connect clients the
// way E2B's SDKs reach it.
type fixture struct {
	url   string
	proc  processconnect.ProcessClient
	files filesystemconnect.FilesystemClient
	agent *agentclient.Client

	mu      sync.Mutex
	running []context.CancelFunc // the calls' machine contexts
	gone    atomic.Bool          // what Sandbox.Gone says
}

// filesCall sends method /files?query with contentType and h's headers
// only, and returns the answer with its body read.
func (f *fixture) filesCall(t *testing.T, method, query string, body io.Reader, contentType string, h http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.url+"/files?"+query, body)
	req.Header.Set("Content-Type", contentType)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// stopMachine ends the calls in flight as the machine's leaving running
// does; gone says whether it was killed (or paused).
func (f *fixture) stopMachine(gone bool) {
	f.gone.Store(gone)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, cancel := range f.running {
		cancel()
	}
	f.running = nil
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the envd tests run commands as root through a real agent: run them as root (make test does)")
	}
	a, err := agent.New(agent.Config{Token: "agent-token", Env: os.Environ()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	agentSrv := httptest.NewServer(a.Handler())
	ac := agentclient.New(agentSrv.URL, "agent-token", nil)
	f := &fixture{agent: ac}
	open := func(ctx context.Context, r envd.Request) (*envd.Sandbox, error) {
		if r.SandboxID != "sbx1" {
			return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound, "sandbox "+r.SandboxID+" not found", "")
		}
		if r.AccessToken != accessToken {
			if r.Signature == "" {
				return nil, errdefs.New(errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated, "wrong token", "")
			}
			if err := r.CheckSignature(accessToken); err != nil {
				return nil, err
			}
		}
		runCtx, cancel := context.WithCancel(ctx)
		f.mu.Lock()
		f.running = append(f.running, cancel)
		f.mu.Unlock()
		return &envd.Sandbox{Ctx: runCtx, Done: cancel, MachineID: "mch_1", Lineage: "mch_1", Agent: ac, Touch: func() {},
			Gone: func(context.Context) bool { return f.gone.Load() }}, nil
	}
	srv := httptest.NewServer(envd.New(open, slog.New(slog.DiscardHandler)))
	t.Cleanup(func() {
		ctx := context.Background()
		if list, err := ac.ListProcesses(ctx); err == nil {
			for _, p := range list.Processes {
				ac.Kill(ctx, p.PID)
			}
		}
		srv.Close()
		agentSrv.Close()
	})
	headers := connect.WithInterceptors(headerInterceptor{})
	f.url = srv.URL
	f.proc = processconnect.NewProcessClient(http.DefaultClient, srv.URL, connect.WithProtoJSON(), headers)
	f.files = filesystemconnect.NewFilesystemClient(http.DefaultClient, srv.URL, connect.WithProtoJSON(), headers)
	return f
}

// headerInterceptor sends what the SDKs send: the sandbox id, its access
// token, and the user (root here, where no "user" account may exist).
type headerInterceptor struct{}

func sdkHeaders(h http.Header) {
	h.Set("E2b-Sandbox-Id", "sbx1")
	h.Set("X-Access-Token", accessToken)
	if h.Get("Authorization") == "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
	}
}

func (headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		sdkHeaders(req.Header())
		return next(ctx, req)
	}
}

func (headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		sdkHeaders(conn.RequestHeader())
		return conn
	}
}

func (headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// collect reads a Start or Connect stream to its end.
type event interface{ GetEvent() *process.ProcessEvent }

func collect[T event](t *testing.T, s interface {
	Receive() bool
	Msg() T
	Err() error
}) (pid uint32, stdout, stderr, pty string, end *process.ProcessEvent_EndEvent, err error) {
	t.Helper()
	for s.Receive() {
		ev := s.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			pid = ev.GetStart().GetPid()
		case ev.GetData() != nil:
			stdout += string(ev.GetData().GetStdout())
			stderr += string(ev.GetData().GetStderr())
			pty += string(ev.GetData().GetPty())
		case ev.GetEnd() != nil:
			end = ev.GetEnd()
		}
	}
	return pid, stdout, stderr, pty, end, s.Err()
}

func start(ctx context.Context, f *fixture, cmd string, mutate ...func(*process.StartRequest)) (*connect.ServerStreamForClient[process.StartResponse], error) {
	req := &process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}}}
	for _, m := range mutate {
		m(req)
	}
	return f.proc.Start(ctx, connect.NewRequest(req))
}

func TestStartStreamsOutputAndExit(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	tests := []struct {
		name, cmd            string
		stdout, stderr       string
		exitCode             int32
		exited               bool
		status               string
		envs                 map[string]string
		cwd                  string
		wantStdoutSubstrings []string
	}{
		{name: "exit 0", cmd: "echo out; echo err >&2", stdout: "out\n", stderr: "err\n", exited: true, status: "exit status 0"},
		{name: "exit 3", cmd: "exit 3", exitCode: 3, exited: true, status: "exit status 3"},
		{name: "killed", cmd: "kill -9 $$", exitCode: -1, status: "signal: killed"},
		{name: "env and cwd", cmd: "echo $GREETING; pwd", envs: map[string]string{"GREETING": "hi"}, cwd: "/tmp",
			stdout: "hi\n/tmp\n", exited: true, status: "exit status 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := start(ctx, f, tc.cmd, func(r *process.StartRequest) {
				r.Process.Envs = tc.envs
				if tc.cwd != "" {
					r.Process.Cwd = &tc.cwd
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			pid, stdout, stderr, _, end, err := collect(t, s)
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if pid == 0 || end == nil {
				t.Fatalf("pid %d, end %v: want a start event and an end event", pid, end)
			}
			if stdout != tc.stdout || stderr != tc.stderr {
				t.Errorf("stdout %q stderr %q, want %q %q", stdout, stderr, tc.stdout, tc.stderr)
			}
			if end.ExitCode != tc.exitCode || end.Exited != tc.exited || end.Status != tc.status {
				t.Errorf("end %+v, want exit code %d, exited %v, status %q", end, tc.exitCode, tc.exited, tc.status)
			}
		})
	}
}

func TestProcessControl(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()

	// A tagged process, selected by its tag; stdin written, then closed.
	tag := "cat-1"
	stdin := true
	s, err := start(ctx, f, "cat", func(r *process.StartRequest) { r.Tag, r.Stdin = &tag, &stdin })
	if err != nil {
		t.Fatal(err)
	}
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("first event %v, %v: want start", s.Msg(), s.Err())
	}
	pid := s.Msg().GetEvent().GetStart().GetPid()
	byTag := &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: tag}}
	list, err := f.proc.List(ctx, connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range list.Msg.GetProcesses() {
		if p.GetPid() == pid {
			found = p.GetTag() == tag && p.GetConfig().GetCmd() == "/bin/bash"
		}
	}
	if !found {
		t.Fatalf("List %v: want pid %d with tag %q", list.Msg, pid, tag)
	}
	if _, err := f.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: byTag,
		Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("hello\n")}}})); err != nil {
		t.Fatal(err)
	}
	if _, err := f.proc.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: byTag})); err != nil {
		t.Fatal(err)
	}
	_, stdout, _, _, end, err := collect(t, s)
	if err != nil || stdout != "hello\n" || end.GetExitCode() != 0 {
		t.Fatalf("cat: stdout %q, end %v, err %v; want hello and exit 0", stdout, end, err)
	}

	// Connect sees what is written from then on, and the end; a signal
	// ends the process.
	s2, err := start(ctx, f, "echo before; read x; echo after; sleep 100")
	if err != nil {
		t.Fatal(err)
	}
	s2.Receive()
	pid2 := s2.Msg().GetEvent().GetStart().GetPid()
	waitOutput(t, f, int(pid2), "before\n")
	conn, err := f.proc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid2}}}))
	if err != nil {
		t.Fatal(err)
	}
	byPid := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid2}}
	if _, err := f.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: byPid,
		Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("go\n")}}})); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, f, int(pid2), "before\nafter\n")
	if _, err := f.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: byPid, Signal: process.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	got, stdout, _, _, end, err := collect(t, conn)
	if err != nil || got != pid2 || stdout != "after\n" || end.GetStatus() != "signal: killed" {
		t.Fatalf("connect: pid %d stdout %q end %v err %v; want pid %d, only \"after\", killed", got, stdout, end, err, pid2)
	}

	// Unknown pids and tags are not_found; an unknown signal is invalid.
	missing := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: 999999}}
	_, err = f.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: missing, Signal: process.Signal_SIGNAL_SIGTERM}))
	wantCode(t, "signal to a missing pid", err, connect.CodeNotFound)
	_, err = f.proc.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: "nope"}}}))
	wantCode(t, "a missing tag", err, connect.CodeNotFound)
	_, err = f.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: byPid}))
	wantCode(t, "no signal", err, connect.CodeInvalidArgument)
}

func TestPTYProcess(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	s, err := start(ctx, f, "", func(r *process.StartRequest) {
		r.Process = &process.ProcessConfig{Cmd: "/bin/sh"}
		r.Pty = &process.PTY{Size: &process.PTY_Size{Rows: 24, Cols: 80}}
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	pid := s.Msg().GetEvent().GetStart().GetPid()
	sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
	if _, err := f.proc.Update(ctx, connect.NewRequest(&process.UpdateRequest{Process: sel, Pty: &process.PTY{Size: &process.PTY_Size{Rows: 30, Cols: 100}}})); err != nil {
		t.Fatal(err)
	}
	if _, err := f.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel,
		Input: &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte("stty size; exit 5\n")}}})); err != nil {
		t.Fatal(err)
	}
	_, stdout, _, pty, end, err := collect(t, s)
	if err != nil || stdout != "" || !strings.Contains(pty, "30 100") || end.GetExitCode() != 5 {
		t.Fatalf("pty output %q (stdout %q), end %v, err %v: want the terminal's output as pty data with 30 100, exit 5", pty, stdout, end, err)
	}
}

func TestStreamTimeoutAndKeepalive(t *testing.T) {
	f := newFixture(t)
	req := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "sleep 2; echo done > " + filepath.Join(t.TempDir(), "x")}}})
	req.Header().Set("Keepalive-Ping-Interval", "1")
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond) // Connect-Timeout-Ms
	defer cancel()
	s, err := f.proc.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	keepalives := 0
	for s.Receive() {
		if s.Msg().GetEvent().GetKeepalive() != nil {
			keepalives++
		}
	}
	wantCode(t, "a stream past its timeout", s.Err(), connect.CodeDeadlineExceeded)
	if keepalives == 0 {
		t.Error("no keepalive event on a quiet stream with Keepalive-Ping-Interval: 1")
	}
	list, err := f.proc.List(t.Context(), connect.NewRequest(&process.ListRequest{}))
	if err != nil || len(list.Msg.GetProcesses()) == 0 {
		t.Fatalf("List after the timeout: %v, %v: the process should run on", list, err)
	}
}

// TestMachineGoneUnderStream: a command's stream whose machine stops
// running ends unavailable (a TimeoutError in every SDK release), in E2B's
// words when the machine was killed, and saying how to follow the process
// again when it was paused.
func TestMachineGoneUnderStream(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone bool
		want string
	}{
		{"killed", true, "the sandbox was killed or reached its end of life"},
		{"paused", false, "connect to the sandbox, then to the process by pid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			s, err := start(t.Context(), f, "sleep 60")
			if err != nil {
				t.Fatal(err)
			}
			if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
				t.Fatalf("no start event: %v", s.Err())
			}
			f.stopMachine(tc.gone)
			for s.Receive() {
			}
			wantCode(t, "the stream of a machine that stopped", s.Err(), connect.CodeUnavailable)
			if err := s.Err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("the stream's error %v does not say %q", err, tc.want)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	// A wrong token is unauthenticated; an unknown sandbox not found.
	bad := processconnect.NewProcessClient(http.DefaultClient, f.url, connect.WithProtoJSON(),
		connect.WithInterceptors(fixedHeaders{"E2b-Sandbox-Id": "sbx1", "X-Access-Token": "wrong"}))
	_, err := bad.List(ctx, connect.NewRequest(&process.ListRequest{}))
	wantCode(t, "a wrong access token", err, connect.CodeUnauthenticated)
	other := processconnect.NewProcessClient(http.DefaultClient, f.url, connect.WithProtoJSON(),
		connect.WithInterceptors(fixedHeaders{"E2b-Sandbox-Id": "sbx2", "X-Access-Token": accessToken}))
	_, err = other.List(ctx, connect.NewRequest(&process.ListRequest{}))
	wantCode(t, "another sandbox", err, connect.CodeNotFound)
	if err != nil && !strings.Contains(err.Error(), "machine_not_found") {
		t.Errorf("error %q does not carry the stable code", err)
	}

	// An unknown method is Connect's unimplemented, at once.
	for _, path := range []string{"/process.Process/NoSuchMethod", "/filesystem.Filesystem/NoSuchMethod", "/nosuch.Service/Call"} {
		c := connect.NewClient[emptypb.Empty, emptypb.Empty](http.DefaultClient, f.url+path, connect.WithProtoJSON(),
			connect.WithInterceptors(fixedHeaders{"E2b-Sandbox-Id": "sbx1", "X-Access-Token": accessToken}))
		_, err := c.CallUnary(ctx, connect.NewRequest(&emptypb.Empty{}))
		wantCode(t, "unknown method "+path, err, connect.CodeUnimplemented)
	}
	empty, err := f.proc.Start(ctx, connect.NewRequest(&process.StartRequest{}))
	if err == nil {
		empty.Receive() // a stream's error comes with its first read
		err = empty.Err()
	}
	wantCode(t, "an empty command", err, connect.CodeInvalidArgument)
}

type fixedHeaders map[string]string

func (h fixedHeaders) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		for k, v := range h {
			req.Header().Set(k, v)
		}
		return next(ctx, req)
	}
}
func (h fixedHeaders) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (h fixedHeaders) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func TestFilesystem(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("aaa"), 0o640)

	st, err := f.files.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(dir, "a.txt")}))
	if err != nil {
		t.Fatal(err)
	}
	if e := st.Msg.GetEntry(); e.GetName() != "a.txt" || e.GetType() != filesystem.FileType_FILE_TYPE_FILE || e.GetSize() != 3 || e.GetPermissions() != "-rw-r-----" {
		t.Errorf("Stat: %v", e)
	}
	_, err = f.files.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(dir, "none")}))
	wantCode(t, "stat of a missing file", err, connect.CodeNotFound)

	sub := filepath.Join(dir, "sub", "deeper")
	if _, err := f.files.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: sub})); err != nil {
		t.Fatal(err)
	}
	_, err = f.files.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: sub}))
	wantCode(t, "an existing directory", err, connect.CodeAlreadyExists)

	mv, err := f.files.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: filepath.Join(dir, "a.txt"), Destination: filepath.Join(dir, "sub", "b.txt")}))
	if err != nil || mv.Msg.GetEntry().GetName() != "b.txt" {
		t.Fatalf("Move: %v, %v", mv, err)
	}
	ls, err := f.files.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: filepath.Join(dir, "sub")}))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ls.Msg.GetEntries() {
		names = append(names, e.GetName()+":"+e.GetType().String())
	}
	if strings.Join(names, ",") != "b.txt:FILE_TYPE_FILE,deeper:FILE_TYPE_DIRECTORY" {
		t.Errorf("ListDir: %v", names)
	}
	if _, err := f.files.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: filepath.Join(dir, "sub")})); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Remove left %s: %v", filepath.Join(dir, "sub"), err)
	}
}

// TestEntryInfo checks entries against what E2B's envd answers: mode is
// the permission bits alone, a symlink's target is absolute, owner and
// group are names, and removing what does not exist succeeds.
func TestEntryInfo(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "d"), 0o755) // past the umask
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a"), 0o644)
	os.Chmod(filepath.Join(dir, "a.txt"), 0o644)
	os.Symlink("a.txt", filepath.Join(dir, "rel"))
	os.Symlink("../d/../a.txt", filepath.Join(dir, "d", "up"))
	os.Symlink("/etc/hostname", filepath.Join(dir, "abs"))

	for _, tc := range []struct {
		path         string
		mode         uint32
		perms        string
		target       string // "" for none
		owner, group string
		typ          filesystem.FileType
	}{
		{path: "d", mode: 0o755, perms: "drwxr-xr-x", owner: "root", group: "root", typ: filesystem.FileType_FILE_TYPE_DIRECTORY},
		{path: "a.txt", mode: 0o644, perms: "-rw-r--r--", owner: "root", group: "root", typ: filesystem.FileType_FILE_TYPE_FILE},
		// A symlink's mode and type are left out: envd reports its
		// target's, which we do not (yet).
		{path: "rel", perms: "Lrwxrwxrwx", target: filepath.Join(dir, "a.txt"), owner: "root", group: "root"},
		{path: "d/up", perms: "Lrwxrwxrwx", target: filepath.Join(dir, "a.txt"), owner: "root", group: "root"},
		{path: "abs", perms: "Lrwxrwxrwx", target: "/etc/hostname", owner: "root", group: "root"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			p := filepath.Join(dir, tc.path)
			st, err := f.files.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: p}))
			if err != nil {
				t.Fatal(err)
			}
			ls, err := f.files.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: filepath.Dir(p)}))
			if err != nil {
				t.Fatal(err)
			}
			var listed *filesystem.EntryInfo
			for _, e := range ls.Msg.GetEntries() {
				if e.GetPath() == p {
					listed = e
				}
			}
			if listed == nil {
				t.Fatalf("ListDir of %s did not list %s", filepath.Dir(p), p)
			}
			for name, e := range map[string]*filesystem.EntryInfo{"Stat": st.Msg.GetEntry(), "ListDir": listed} {
				if tc.mode != 0 && e.GetMode() != tc.mode {
					t.Errorf("%s mode: got %d (%o), want %d (%o)", name, e.GetMode(), e.GetMode(), tc.mode, tc.mode)
				}
				if e.GetPermissions() != tc.perms {
					t.Errorf("%s permissions: got %q, want %q", name, e.GetPermissions(), tc.perms)
				}
				if tc.typ != filesystem.FileType_FILE_TYPE_UNSPECIFIED && e.GetType() != tc.typ {
					t.Errorf("%s type: got %v, want %v", name, e.GetType(), tc.typ)
				}
				if got := e.GetSymlinkTarget(); got != tc.target || (tc.target == "") != (e.SymlinkTarget == nil) {
					t.Errorf("%s symlink target: got %q (set %v), want %q", name, got, e.SymlinkTarget != nil, tc.target)
				}
				if e.GetOwner() != tc.owner || e.GetGroup() != tc.group {
					t.Errorf("%s owner:group: got %q:%q, want %q:%q", name, e.GetOwner(), e.GetGroup(), tc.owner, tc.group)
				}
			}
		})
	}

	for _, p := range []string{filepath.Join(dir, "none"), filepath.Join(dir, "none", "deeper")} {
		if _, err := f.files.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: p})); err != nil {
			t.Errorf("Remove of missing %s: got %v, want success as envd answers", p, err)
		}
	}
}

func TestWatchers(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w, err := f.files.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Receive() || w.Msg().GetStart() == nil {
		t.Fatalf("first watch event %v, %v: want start", w.Msg(), w.Err())
	}
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("x"), 0o644)
	os.Rename(filepath.Join(dir, "new.txt"), filepath.Join(dir, "moved.txt"))
	var got []string
	for len(got) < 3 && w.Receive() {
		if fe := w.Msg().GetFilesystem(); fe != nil {
			got = append(got, fe.GetType().String()+" "+fe.GetName())
		}
	}
	want := []string{"EVENT_TYPE_CREATE new.txt", "EVENT_TYPE_WRITE new.txt", "EVENT_TYPE_RENAME new.txt"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("streamed events %v, want %v (then a create of the new name)", got, want)
	}
	cancel()

	// The non-streaming trio: events since the previous read.
	c, err := f.files.CreateWatcher(t.Context(), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	id := c.Msg.GetWatcherId()
	os.WriteFile(filepath.Join(dir, "polled.txt"), []byte("y"), 0o644)
	var events []string
	for i := 0; i < 50 && len(events) == 0; i++ {
		g, err := f.files.GetWatcherEvents(t.Context(), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range g.Msg.GetEvents() {
			events = append(events, e.GetType().String()+" "+e.GetName())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(events) == 0 || events[0] != "EVENT_TYPE_CREATE polled.txt" {
		t.Errorf("polled events %v, want a create of polled.txt first", events)
	}
	again, err := f.files.GetWatcherEvents(t.Context(), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil || len(again.Msg.GetEvents()) != 0 {
		t.Errorf("a second read: %v, %v; want nothing new", again, err)
	}
	if _, err := f.files.RemoveWatcher(t.Context(), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	_, err = f.files.GetWatcherEvents(t.Context(), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
	wantCode(t, "a removed watcher", err, connect.CodeNotFound)
}

func TestFilesRoutes(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	do := func(method, query string, body io.Reader, contentType string, h http.Header) (*http.Response, string) {
		return f.filesCall(t, method, query, body, contentType, h)
	}
	// As root: the host has no account "user", envd's default.
	asRoot := "Basic " + base64.StdEncoding.EncodeToString([]byte("root:"))
	auth := http.Header{"E2b-Sandbox-Id": {"sbx1"}, "X-Access-Token": {accessToken}, "Authorization": {asRoot}}

	// Multipart: each part to its own path, named by the whole path.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, name := range []string{"one.txt", "nested/two.txt"} {
		w, _ := mw.CreateFormFile("file", filepath.Join(dir, name))
		w.Write([]byte("content of " + name))
	}
	mw.Close()
	resp, body := do("POST", "username=root", &buf, mw.FormDataContentType(), auth)
	if resp.StatusCode != 200 || !strings.Contains(body, `"path":"`+filepath.Join(dir, "nested/two.txt")+`"`) {
		t.Fatalf("multipart upload: %d %s", resp.StatusCode, body)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "nested/two.txt")); string(b) != "content of nested/two.txt" {
		t.Errorf("nested/two.txt holds %q", b)
	}

	// Octet-stream, gzip-encoded.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("unzipped"))
	zw.Close()
	h := auth.Clone()
	h.Set("Content-Encoding", "gzip")
	resp, body = do("POST", "path="+filepath.Join(dir, "z.txt"), &gz, "application/octet-stream", h)
	if b, _ := os.ReadFile(filepath.Join(dir, "z.txt")); resp.StatusCode != 200 || string(b) != "unzipped" {
		t.Fatalf("gzip upload: %d %s, file %q", resp.StatusCode, body, b)
	}

	// Download with the token; with a signature instead; a forged one.
	p := filepath.Join(dir, "one.txt")
	if resp, body = do("GET", "path="+p, nil, "", auth); resp.StatusCode != 200 || body != "content of one.txt" {
		t.Errorf("download: %d %q", resp.StatusCode, body)
	}
	sig := sign(p, "read", "", accessToken, 0)
	idOnly := http.Header{"E2b-Sandbox-Id": {"sbx1"}, "Authorization": {asRoot}}
	if resp, body = do("GET", "path="+p+"&signature="+url.QueryEscape(sig), nil, "", idOnly); resp.StatusCode != 200 {
		t.Errorf("signed download: %d %s", resp.StatusCode, body)
	}
	if resp, _ = do("GET", "path="+filepath.Join(dir, "z.txt")+"&signature="+url.QueryEscape(sig), nil, "", idOnly); resp.StatusCode != 401 {
		t.Errorf("a signature of another path: %d, want 401", resp.StatusCode)
	}
	exp := time.Now().Add(-time.Minute).Unix()
	old := sign(p, "read", "", accessToken, exp)
	// E2B's envd's bodies, which code written for E2B compares whole.
	if resp, body = do("GET", "path="+p+"&signature="+url.QueryEscape(old)+"&signature_expiration="+itoa(exp), nil, "", idOnly); resp.StatusCode != 401 ||
		body != `{"code":401,"message":"signature is already expired"}`+"\n" {
		t.Errorf("an expired signature: %d %s, want 401 and E2B's body", resp.StatusCode, body)
	}
	if resp, body = do("GET", "path="+p+"&signature=v1_forged", nil, "", idOnly); resp.StatusCode != 401 ||
		body != `{"code":401,"message":"invalid signature"}`+"\n" {
		t.Errorf("a forged signature: %d %s, want 401 and E2B's body", resp.StatusCode, body)
	}

	// Errors are E2B's body: the status as a number, and a message.
	resp, body = do("GET", "path="+filepath.Join(dir, "missing"), nil, "", auth)
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != 404 || e.Code != 404 || !strings.Contains(e.Message, "file_not_found") {
		t.Errorf("a missing file: %d %s", resp.StatusCode, body)
	}
}

func TestCheckSignature(t *testing.T) {
	future := time.Now().Add(time.Hour).Unix()
	past := time.Now().Add(-time.Hour).Unix()
	tests := []struct {
		name string
		req  envd.Request
		want error
	}{
		{"valid", envd.Request{Path: "/a", Operation: "read", Signature: sign("/a", "read", "", "tok", 0)}, nil},
		{"valid with user and expiry", envd.Request{Path: "/a", Operation: "write", User: "root", Expiration: future,
			Signature: sign("/a", "write", "root", "tok", future)}, nil},
		{"expired", envd.Request{Path: "/a", Operation: "read", Expiration: past, Signature: sign("/a", "read", "", "tok", past)}, envd.ErrSignatureExpired},
		{"forged and expired: invalid first", envd.Request{Path: "/a", Operation: "read", Expiration: past, Signature: "v1_forged"}, envd.ErrSignatureInvalid},
		{"other operation", envd.Request{Path: "/a", Operation: "write", Signature: sign("/a", "read", "", "tok", 0)}, envd.ErrSignatureInvalid},
		{"other token", envd.Request{Path: "/a", Operation: "read", Signature: sign("/a", "read", "", "other", 0)}, envd.ErrSignatureInvalid},
		{"none", envd.Request{Path: "/a", Operation: "read"}, envd.ErrSignatureInvalid},
	}
	for _, tc := range tests {
		if got := tc.req.CheckSignature("tok"); got != tc.want {
			t.Errorf("%s: CheckSignature = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// sign is E2B's SDK's getSignature.
func sign(path, op, user, token string, exp int64) string {
	raw := path + ":" + op + ":" + user + ":" + token
	if exp != 0 {
		raw += ":" + itoa(exp)
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func waitOutput(t *testing.T, f *fixture, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := f.agent.Output(t.Context(), pid, agentclient.OutputOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for s.Next() {
			got += string(s.Event().Data)
		}
		s.Close()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d's output %q, want %q", pid, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantCode(t *testing.T, what string, err error, want connect.Code) {
	t.Helper()
	if got := connect.CodeOf(err); err == nil || got != want {
		t.Errorf("%s: error %v (code %v), want code %v", what, err, got, want)
	}
}

// TestUserWritesMakeParents: as E2B's envd (root) does, a user's upload or
// MakeDir makes the directories on the way that the user could not, and
// gives them to the user.
func TestUserWritesMakeParents(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755) // root's: uid 1000 may not make anything in it
	as1000 := "Basic " + base64.StdEncoding.EncodeToString([]byte("1000:"))
	if status, b := upload(t, f, "path="+url.QueryEscape(dir+"/new/f.txt"), "application/octet-stream", strings.NewReader("x"),
		http.Header{"Authorization": {as1000}}); status != 200 {
		t.Fatalf("upload as 1000 into a new directory of root's: %d %s", status, b)
	}
	mk := connect.NewRequest(&filesystem.MakeDirRequest{Path: dir + "/made/deep"})
	mk.Header().Set("Authorization", as1000)
	if _, err := f.files.MakeDir(t.Context(), mk); err != nil {
		t.Fatalf("MakeDir as 1000: %v", err)
	}
	for _, p := range []string{dir + "/new", dir + "/new/f.txt", dir + "/made", dir + "/made/deep"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil || st.Uid != 1000 {
			t.Errorf("%s: uid %d (%v), want 1000", p, st.Uid, err)
		}
	}
}
