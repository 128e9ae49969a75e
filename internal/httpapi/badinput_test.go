package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
	"nullspace.dev/nullspace/internal/telemetry"
)

// The API in front of a real manager whose sandboxes are stand-ins: one
// running machine (runningID) whose agent is a stub that answers 200 to
// everything, so that requests reach the agent the way they do in
// production; every other machine id is unknown.

const (
	testKey   = "test-key"
	testTeam  = "team"
	runningID = "mch_00000000000000000001"
)

// stubDriver reports every container running and does nothing else.
type stubDriver struct{}

var _ runtime.Driver = stubDriver{}

var errNoSandboxes = errors.New("no sandboxes in these tests")

func (stubDriver) Start(context.Context, runtime.Spec) error        { return errNoSandboxes }
func (stubDriver) Create(context.Context, runtime.Spec) error       { return errNoSandboxes }
func (stubDriver) Delete(context.Context, string, string) error     { return nil }
func (stubDriver) List(context.Context) ([]string, error)           { return nil, nil }
func (stubDriver) Freeze(context.Context, string) error             { return errNoSandboxes }
func (stubDriver) Thaw(context.Context, string) error               { return errNoSandboxes }
func (stubDriver) Checkpoint(context.Context, string, string) error { return errNoSandboxes }
func (stubDriver) Restore(context.Context, runtime.Spec, string) error {
	return errNoSandboxes
}
func (stubDriver) State(_ context.Context, id string) (runtime.State, error) {
	return runtime.State{ID: id, Status: runtime.StatusRunning, Pid: 1}, nil
}

// stubNetwork puts every slot at agentIP.
type stubNetwork struct{ agentIP netip.Addr }

func (stubNetwork) Setup(context.Context, int) (machine.NetInfo, error) {
	return machine.NetInfo{}, errNoSandboxes
}
func (stubNetwork) Teardown(context.Context, int) error          { return nil }
func (stubNetwork) SetInternet(netip.Addr, bool) error           { return nil }
func (stubNetwork) Slots() int                                   { return 16 }
func (n stubNetwork) GuestIP(int) (netip.Addr, error)            { return n.agentIP, nil }
func (stubNetwork) Existing() ([]int, error)                     { return nil, nil }
func (noTemplates) RootfsDir(string) (string, error)             { return "", errNoSandboxes }
func (noTemplates) List(context.Context) ([]api.Template, error) { return nil, nil }
func (noTemplates) Delete(context.Context, string) error         { return templateNotFound }
func (noTemplates) CheckDelete(context.Context, string) error    { return templateNotFound }
func (noTemplates) Get(context.Context, string) (api.Template, error) {
	return api.Template{}, templateNotFound
}
func (noTemplates) Build(context.Context, string, api.BuildTemplateRequest) (api.Template, error) {
	return api.Template{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, "no builds in these tests", "")
}
func (noTemplates) BuildUpload(_ context.Context, _ string, _ api.BuildTemplateRequest, tarball io.Reader) (api.Template, error) {
	io.Copy(io.Discard, tarball)
	return api.Template{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, "no builds in these tests", "")
}

// noTemplates is a template store without templates, and a builder that
// builds none.
type noTemplates struct{}

var templateNotFound = errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound, "no templates in these tests", "")

func (noTemplates) Digest(context.Context, string) (string, error) { return "", templateNotFound }
func (noTemplates) Upload(context.Context, string, string) error   { return templateNotFound }
func (noTemplates) RootfsByDigest(context.Context, string, string) (string, error) {
	return "", templateNotFound
}

type keyAuth struct{}

func (keyAuth) Authenticate(_ context.Context, key string) (*access.Principal, error) {
	if key == testKey {
		return &access.Principal{TeamID: testTeam, Scopes: access.Scopes{access.Operator}}, nil
	}
	return nil, errdefs.ErrUnauthenticated
}

type noSSH struct{}

var sshOff = errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSSHDisabled, "no ssh in these tests", "")

func (noSSH) Add(context.Context, string, api.AddSSHKeyRequest) (api.SSHKey, error) {
	return api.SSHKey{}, sshOff
}
func (noSSH) List(context.Context, string) ([]api.SSHKey, error) { return nil, sshOff }
func (noSSH) Delete(context.Context, string, string) error       { return sshOff }
func (noSSH) Token(context.Context, string, string, time.Duration) (api.SSHToken, error) {
	return api.SSHToken{}, sshOff
}

// newTestAPI serves the API on loopback and returns its base URL.
func newTestAPI(t testing.TB) string {
	t.Helper()
	base, _ := newTestAPIStore(t)
	return base
}

// newTestAPIStore is newTestAPI, and the store behind it.
func newTestAPIStore(t testing.TB) (string, *sqlstore.DB) {
	t.Helper()
	// The stub agent listens on the agent's fixed port at an address of
	// 127/8 of its own, so that tests running beside this one never meet.
	var agentIP netip.Addr
	var ln net.Listener
	for range 20 {
		agentIP = netip.AddrFrom4([4]byte{127, 91, byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(agentIP, machine.AgentPort).String()); err == nil {
			break
		}
	}
	if ln == nil {
		t.Fatal("no loopback address free for the stub agent")
	}
	agent := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}\n")
	})}}
	agent.Start()
	t.Cleanup(agent.Close)

	dir := t.TempDir()
	db, err := sqlstore.Open(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	logger := slog.New(slog.DiscardHandler)
	mgr, err := machine.New(machine.Config{DataDir: dir, AgentDir: dir, MaxCPU: 2, MaxMemoryMB: 1024}, db, stubDriver{},
		stubNetwork{agentIP: agentIP}, noTemplates{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := db.CreateMachine(context.Background(), &store.Machine{ID: runningID, LineageID: runningID, TeamID: testTeam,
		State: api.StateRunning, Template: "base", CPUCount: 1, MemoryMB: 128, ContainerID: "ctr_0001", AgentToken: "agent-token",
		CreatedAt: now, StartedAt: now, Persistence: "persistent"}, 16); err != nil {
		t.Fatal(err)
	}
	s := New(mgr, noTemplates{}, noTemplates{}, keyAuth{}, events.New(db, logger), telemetry.New(db), nil, logger, "test").WithSSH(noSSH{})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv.URL, db
}

// call sends a request with the test key and returns the status and body.
func call(t testing.TB, method, u string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// rawCall sends raw bytes as a request (framing that http.Client never
// writes) and returns the status and body of the answer.
func rawCall(t testing.TB, base, raw string) (int, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestBadRequests are the fuzzed requests of issue 21 that answered 500
// (or a misleading status): each is a 4xx with the JSON error body. The
// NUL byte in a command's shell is refused by the agent (TestRunErrors in
// internal/agent).
func TestBadRequests(t *testing.T) {
	base := newTestAPI(t)
	m := base + "/v1/machines/" + runningID
	chunkedHead := func(path string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testKey +
			"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
	}
	tests := []struct {
		name   string
		method string
		url    string
		body   []byte
		raw    string // sent as is instead of method, url and body
		status int
		code   string
	}{
		{name: "NUL pid: output", method: "GET", url: m + "/commands/%00/output", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "NUL pid: stdin", method: "POST", url: m + "/commands/%00/stdin", body: []byte(`{"data":"x"}`), status: 400, code: errdefs.CodeInvalidArgument},
		{name: "NUL pid: signal", method: "POST", url: m + "/commands/%00/signal", body: []byte(`{"signal":"TERM"}`), status: 400, code: errdefs.CodeInvalidArgument},
		{name: "NUL pid: resize", method: "POST", url: m + "/commands/%00/resize", body: []byte(`{"cols":80,"rows":24}`), status: 400, code: errdefs.CodeInvalidArgument},
		{name: "NUL pid: attach", method: "GET", url: m + "/commands/%00/attach", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "NUL pid: kill", method: "DELETE", url: m + "/commands/%00", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "pid with a sign", method: "GET", url: m + "/commands/+1/output", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "pid with a newline", method: "DELETE", url: m + "/commands/1%0A", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "10 MB JSON body", method: "POST", url: base + "/v1/machines",
			body: append(append([]byte(`{"metadata":{"a":"`), bytes.Repeat([]byte("x"), 10<<20)...), `"}}`...), status: 413, code: errdefs.CodeBodyTooLarge},
		{name: "malformed chunk, decoded body", raw: chunkedHead("/v1/machines") + "zz\r\n{}\r\n0\r\n\r\n", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "malformed chunk, body to the agent", raw: chunkedHead("/v1/machines/"+runningID+"/commands") + "5\r\n{\"cmd\r\nzz\r\n", status: 400, code: errdefs.CodeInvalidArgument},
		{name: "control check: a good pid reaches the agent", method: "DELETE", url: m + "/commands/12", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var status int
			var b []byte
			if tt.raw != "" {
				status, b = rawCall(t, base, tt.raw)
			} else {
				status, b = call(t, tt.method, tt.url, bytes.NewReader(tt.body))
			}
			if status != tt.status {
				t.Fatalf("got %d %.200s, want %d %s", status, b, tt.status, tt.code)
			}
			if tt.code == "" {
				return
			}
			var e api.Error
			if err := json.Unmarshal(b, &e); err != nil || e.Code != tt.code || e.Message == "" || e.SuggestedAction == "" {
				t.Fatalf("got body %.200s, want the JSON error with code %s, a message and a suggested action", b, tt.code)
			}
		})
	}
}

// FuzzDecode sends arbitrary path parameters, query strings and bodies to
// every route: no answer may be a 5xx (the server's fault) or a panic, and
// every refusal is the JSON error. `make test` runs it briefly with -fuzz;
// plain `go test` runs the seeds.
func FuzzDecode(f *testing.F) {
	seeds := []struct {
		route       string
		param, q    string
		body        []byte
		realMachine bool
	}{
		{"GET /v1/health", "", "", nil, false},
		{"POST /v1/machines", "", "", []byte(`{"template":"base","timeout_ms":1000,"metadata":{"a":"b"}}`), false},
		{"POST /v1/machines", "", "", []byte(`{"template":"base","cpu_count":-1,"memory_mb":1e99}`), false},
		{"POST /v1/machines", "", "", []byte(`{"template":"base","unknown":1}`), false},
		{"GET /v1/machines", "", "state=running&metadata=a=b&limit=5&next_token=x", nil, false},
		{"GET /v1/machines", "", "include_aliases=maybe&limit=-1&metadata==", nil, false},
		{"GET /v1/machines/{id}/wait", "x", "timeout_ms=-5", nil, false},
		{"POST /v1/machines/{id}/timeout", "x", "", []byte(`{"timeout_ms":"x"}`), false},
		{"POST /v1/machines/{id}/stop", "x", "", []byte(`{"grace_ms":-1}`), false},
		{"POST /v1/machines/{id}/urls", "x", "", []byte(`{"port":0}`), false},
		{"GET /v1/events", "", "machine_id=%00&since=yesterday", nil, false},
		{"POST /v1/machines/{id}/commands", "", "", []byte("\x00\xff{"), true},
		{"POST /v1/machines/{id}/commands", "", "", []byte(`{"shell":"a\u0000b"}`), true},
		{"GET /v1/machines/{id}/commands/{pid}/output", "\x00", "", nil, true},
		{"GET /v1/machines/{id}/commands/{pid}/output", "12", "follow=true&stdout_offset=-1", nil, true},
		{"POST /v1/machines/{id}/commands/{pid}/stdin", "%00", "", []byte(`{"data":"x"}`), true},
		{"POST /v1/machines/{id}/commands/{pid}/signal", "1", "", []byte(`{"signal":"\u0000"}`), true},
		{"DELETE /v1/machines/{id}/commands/{pid}", "-1", "", nil, true},
		{"PUT /v1/machines/{id}/files", "", "path=/tmp/x", []byte("data"), true},
		{"POST /v1/templates", "", "", []byte(`{"name":"../x"}`), false},
		{"GET /v1/templates", "", "next_token=%ff&limit=1000000", nil, false},
		{"POST /v1/ssh-keys", "", "", []byte(`{"public_key":"\x00"}`), false},
		{"POST /v1/volumes", "", "", []byte(`{"name":"../../etc"}`), false},
	}
	for _, s := range seeds {
		method, path, _ := strings.Cut(s.route, " ")
		f.Add(routeIndex(f, method, path), s.param, s.q, s.body, s.realMachine)
	}
	base := newTestAPI(f)
	routes := (&Server{}).Routes()
	f.Fuzz(func(t *testing.T, route uint8, param, query string, body []byte, realMachine bool) {
		rt := routes[int(route)%len(routes)]
		if rt.Method == "GET" && strings.HasSuffix(rt.Path, "/attach") && realMachine {
			realMachine = false // a WebSocket upgrade is not what this checks
		}
		if !realMachine || !strings.Contains(rt.Path, "/commands") && !strings.Contains(rt.Path, "/files") {
			realMachine = false // lifecycle calls on the stub machine would fail for the stub's sake
		}
		path := rt.Path
		for _, name := range []string{"{id}", "{pid}", "{snapshot_id}", "{name}", "{watch_id}"} {
			v := param
			if name == "{id}" {
				v = "mch_" + param
				if realMachine {
					v = runningID
				}
			}
			path = strings.ReplaceAll(path, name, url.PathEscape(v))
		}
		u := base + path
		if query != "" {
			u += "?" + query
		}
		req, err := http.NewRequest(rt.Method, u, bytes.NewReader(body))
		if err != nil {
			t.Skip("not a URL a client can send")
		}
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", rt.Method, u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %q with body %q: %d %s, want no 5xx", rt.Method, u, body, resp.StatusCode, b)
		}
		if resp.StatusCode == http.StatusBadRequest && string(b) == "400 Bad Request" {
			return // net/http's own answer to a request line it cannot parse: no handler saw it
		}
		if resp.StatusCode >= 400 {
			var e api.Error
			if err := json.Unmarshal(b, &e); err != nil || e.Code == "" {
				t.Fatalf("%s %q: %d with body %q, want the JSON error", rt.Method, u, resp.StatusCode, b)
			}
		}
	})
}

// routeIndex is the index of a route in Routes, for the fuzz seeds.
func routeIndex(t testing.TB, method, path string) uint8 {
	for i, r := range (&Server{}).Routes() {
		if r.Method == method && r.Path == path {
			return uint8(i)
		}
	}
	t.Fatalf("no route %s %s", method, path)
	return 0
}
