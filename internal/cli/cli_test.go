package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// fakeServer implements a few routes of the API with canned answers.
type fakeServer struct {
	*httptest.Server

	mu         sync.Mutex
	lastCreate api.CreateMachineRequest
	lastList   string // raw query
	lastRun    api.RunCommandRequest
	lastBuild  api.BuildTemplateRequest
	// lastTarball is the tarball part of an upload; nil for a JSON build.
	lastTarball []byte
	written     []byte
	killedPIDs  []string
	// lastCalls holds the last "METHOD path?query body" per route pattern.
	lastCalls map[string]string
}

// record notes a request to one of the hibernate routes and returns its body.
func (f *fakeServer) record(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	call := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		call += "?" + r.URL.RawQuery
	}
	if len(b) > 0 {
		call += " " + strings.TrimSpace(string(b))
	}
	f.mu.Lock()
	f.lastCalls[r.Pattern] = call
	f.mu.Unlock()
	return b
}

func (f *fakeServer) lastCall(pattern string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastCalls[pattern]
}

// Canned snapshots of the fake server.
var (
	snapHibernate = api.Snapshot{ID: "snp-h", Kind: api.SnapshotHibernate, MachineID: "m-1", LineageID: "m-1", Template: "base",
		SizeBytes: 14 << 20, CreatedAt: testNow.Add(-2 * time.Minute), Generation: 2, Checksum: "crc32c:0badf00d",
		PauseWindowMS: 85, RuntimeVersion: "release-20250512.0", Kernel: "6.8.0", Name: "web"}
	snapCheckpoint = api.Snapshot{ID: "snp-c", Kind: api.SnapshotCheckpoint, MachineID: "m-1", LineageID: "m-1", Template: "base",
		SizeBytes: 12 << 20, CreatedAt: testNow.Add(-time.Hour), Generation: 1, PauseWindowMS: 1250}
)

func notFoundSnapshot(w http.ResponseWriter, id string) {
	writeJSON(w, 404, api.Error{Code: "snapshot_not_found", Message: "snapshot " + id + " not found",
		SuggestedAction: "list your snapshots with `nullspace snapshot ls`"})
}

// hibernateRoutes adds the pause, snapshot, checkpoint and volume routes.
// Machine m-1 is running, m-p is paused (its lineage's latest is m-1);
// snapshots snp-h and snp-c exist, snp-h is in use.
func (f *fakeServer) hibernateRoutes(mux *http.ServeMux) {
	running := api.Machine{ID: "m-1", State: api.StateRunning, Template: "base", CPUCount: 2, MemoryMB: 512,
		LineageID: "m-1", LatestID: "m-1", CreatedAt: testNow}
	mux.HandleFunc("POST /v1/machines/{id}/pause", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch r.PathValue("id") {
		case "m-1":
			writeJSON(w, 200, snapHibernate)
		case "m-full":
			writeJSON(w, 507, api.Error{Code: "resource_exhausted", Retryable: true,
				Message:         "no space left on the snapshot disk: machine m-full was not checkpointed and keeps running",
				SuggestedAction: "free disk space on the server (delete unused snapshots) and retry"})
		default:
			notFound(w, r.PathValue("id"))
		}
	})
	mux.HandleFunc("POST /v1/snapshots/{id}/resume", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch r.PathValue("id") {
		case "snp-h":
			m := running
			m.ID, m.LatestID, m.RestoredFrom = "m-2", "m-2", "snp-h"
			writeJSON(w, 201, m)
		case "snp-old":
			writeJSON(w, 409, api.Error{Code: "snapshot_superseded",
				Message:         "snapshot snp-old is not the latest state of machine m-p: its latest execution is m-1 (running)",
				SuggestedAction: "use POST /v1/machines/{id}/connect to reach the latest execution"})
		default:
			notFoundSnapshot(w, r.PathValue("id"))
		}
	})
	mux.HandleFunc("POST /v1/machines/{id}/connect", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch r.PathValue("id") {
		case "m-1", "m-p":
			writeJSON(w, 200, running)
		default:
			notFound(w, r.PathValue("id"))
		}
	})
	mux.HandleFunc("POST /v1/machines/{id}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		s := snapCheckpoint
		s.ID, s.Kind = "snp-r", api.SnapshotReusable
		writeJSON(w, 201, s)
	})
	mux.HandleFunc("POST /v1/machines/{id}/fork", func(w http.ResponseWriter, r *http.Request) {
		var req api.ForkRequest
		json.Unmarshal(f.record(r), &req)
		res := api.ForkResult{Snapshot: api.Snapshot{ID: "snp-f", Kind: api.SnapshotReusable, PauseWindowMS: 40}}
		for i := range req.Count {
			res.Machines = append(res.Machines, api.Machine{ID: "m-c" + strconv.Itoa(i+1), State: api.StateRunning})
		}
		writeJSON(w, 201, res)
	})
	mux.HandleFunc("GET /v1/machines/{id}/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		writeJSON(w, 200, api.SnapshotList{Snapshots: []api.Snapshot{snapCheckpoint, snapHibernate}})
	})
	mux.HandleFunc("POST /v1/machines/{id}/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		writeJSON(w, 201, snapCheckpoint)
	})
	mux.HandleFunc("POST /v1/machines/{id}/checkpoints/{snapshot_id}/restore", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		m := running
		m.RestoredFrom = r.PathValue("snapshot_id")
		writeJSON(w, 200, m)
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		list := api.SnapshotList{Snapshots: []api.Snapshot{}}
		if r.URL.Query().Get("kind") != api.SnapshotReusable {
			list.Snapshots = append(list.Snapshots, snapCheckpoint, snapHibernate)
		}
		writeJSON(w, 200, list)
	})
	mux.HandleFunc("GET /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "snp-h" {
			notFoundSnapshot(w, r.PathValue("id"))
			return
		}
		writeJSON(w, 200, snapHibernate)
	})
	mux.HandleFunc("DELETE /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch id := r.PathValue("id"); {
		case id == "snp-h" && r.URL.Query().Get("force") != "true":
			writeJSON(w, 409, api.Error{Code: "snapshot_in_use", Message: "snapshot snp-h is in use: it holds the paused state of m-p",
				SuggestedAction: "kill those machines first, or delete with force=true"})
		case id == "snp-h" || id == "snp-c":
			w.WriteHeader(204)
		default:
			notFoundSnapshot(w, id)
		}
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateVolumeRequest
		json.Unmarshal(f.record(r), &req)
		writeJSON(w, 201, api.Volume{Name: req.Name, CreatedAt: testNow})
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.VolumeList{Volumes: []api.Volume{
			{Name: "data", SizeBytes: 3 << 20, Machines: 2, CreatedAt: testNow.Add(-3 * time.Hour)},
			{Name: "empty", CreatedAt: testNow.Add(-5 * time.Second)},
		}})
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch name := r.PathValue("name"); name {
		case "data":
			writeJSON(w, 409, api.Error{Code: "volume_in_use", Message: "volume data is in use by machines [m-1] and snapshots []",
				SuggestedAction: "kill those machines and delete those snapshots first"})
		case "empty":
			w.WriteHeader(204)
		default:
			writeJSON(w, 404, api.Error{Code: "volume_not_found", Message: "volume " + name + " not found"})
		}
	})
}

// Canned machine with a main process, stopped: its files are in snp-d and
// the stop ended its main process with SIGTERM.
var stoppedWithCommand = api.Machine{ID: "m-s", State: api.StateStopped, Template: "base", CPUCount: 2, MemoryMB: 512,
	SnapshotID: "snp-d", LineageID: "m-s", LatestID: "m-s", CreatedAt: testNow.Add(-time.Hour),
	Command:   []string{"python3", "-m", "http.server", "--directory", "/srv/my site"},
	Exit:      &api.MainExit{ExitCode: 143, Signal: "SIGTERM", At: testNow.Add(-2 * time.Minute)},
	TimeoutMS: 600000, RemainingMS: 600000, TimeoutAction: api.TimeoutDestroy, Persistence: api.PersistencePersistent}

// lifecycleRoutes adds the stop, start and wait routes. Machine m-1 is
// running without a main process, m-s is stopped (stoppedWithCommand) and
// m-e is ephemeral. The main process of m-0 exits 0, of m-3 exits 3, of
// m-term is ended by SIGTERM, of m-slow runs past any timeout_ms; m-bare
// has none.
func (f *fakeServer) lifecycleRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/machines/{id}/stop", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch r.PathValue("id") {
		case "m-1":
			writeJSON(w, 200, api.Machine{ID: "m-1", State: api.StateStopped, SnapshotID: "snp-d", LineageID: "m-1", LatestID: "m-1"})
		case "m-s":
			writeJSON(w, 200, stoppedWithCommand)
		case "m-e":
			writeJSON(w, 409, api.Error{Code: "machine_ephemeral", Message: "machine m-e is ephemeral: a stop would keep its disk, and it keeps nothing",
				SuggestedAction: `kill it, or create machines to stop with persistence "sticky" or "persistent"`})
		default:
			notFound(w, r.PathValue("id"))
		}
	})
	mux.HandleFunc("POST /v1/machines/{id}/urls", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		if r.PathValue("id") != "m-1" {
			notFound(w, r.PathValue("id"))
			return
		}
		writeJSON(w, 200, api.MachineURL{URL: "http://127.0.0.1:7701/m/8080-x-sig", WSURL: "ws://127.0.0.1:7701/m/8080-x-sig",
			OriginURL: "http://8080-x-sig.localhost:7701", PathURL: "http://127.0.0.1:7701/m/8080-x-sig", Port: 8080, LineageID: "m-1"})
	})
	mux.HandleFunc("POST /v1/machines/{id}/start", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		switch r.PathValue("id") {
		case "m-1":
			writeJSON(w, 200, api.Machine{ID: "m-1", State: api.StateRunning, LineageID: "m-1", LatestID: "m-1"})
		case "m-s":
			m := stoppedWithCommand
			m.State, m.SnapshotID, m.MainPID, m.Exit = api.StateRunning, "", 12, nil
			writeJSON(w, 200, m)
		default:
			notFound(w, r.PathValue("id"))
		}
	})
	mux.HandleFunc("GET /v1/machines/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		at := testNow.Add(-time.Second)
		switch id := r.PathValue("id"); id {
		case "m-0":
			writeJSON(w, 200, api.MainExit{ExitCode: 0, At: at})
		case "m-3":
			writeJSON(w, 200, api.MainExit{ExitCode: 3, At: at})
		case "m-term", "m-s":
			writeJSON(w, 200, api.MainExit{ExitCode: 143, Signal: "SIGTERM", At: at})
		case "m-slow":
			writeJSON(w, 504, api.Error{Code: "deadline_exceeded", Retryable: true, SuggestedAction: "wait again",
				Message: "the main process of machine m-slow was still running after " + r.URL.Query().Get("timeout_ms") + " ms"})
		case "m-bare":
			writeJSON(w, 409, api.Error{Code: "machine_has_no_command", Message: "machine m-bare has no main process: it was created without a command",
				SuggestedAction: "create machines with a command to wait for"})
		default:
			notFound(w, id)
		}
	})
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	f := &fakeServer{lastCalls: map[string]string{}}
	mux := http.NewServeMux()
	f.hibernateRoutes(mux)
	f.lifecycleRoutes(mux)
	mux.HandleFunc("POST /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateMachineRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.lastCreate = req
		f.mu.Unlock()
		writeJSON(w, 201, api.Machine{ID: "m-new", State: api.StateRunning, Template: req.Template, CPUCount: 2, MemoryMB: 512, CreatedAt: testNow,
			LineageID: "m-new", LatestID: "m-new"})
	})
	mux.HandleFunc("GET /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.lastList = r.URL.RawQuery
		f.mu.Unlock()
		writeJSON(w, 200, api.MachineList{Machines: []api.Machine{
			{ID: "m-1", State: api.StateRunning, Template: "base", CPUCount: 2, MemoryMB: 512, IP: "10.11.0.2", CreatedAt: testNow.Add(-90 * time.Second)},
			{ID: "m-2", State: api.StateKilled, Template: "py", CPUCount: 1, MemoryMB: 256, CreatedAt: testNow.Add(-50 * time.Hour)},
			{ID: "m-p", State: api.StatePaused, Template: "base", CPUCount: 2, MemoryMB: 512, SnapshotID: "snp-h", CreatedAt: testNow.Add(-3 * time.Minute)},
		}})
	})
	mux.HandleFunc("GET /v1/machines/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		switch id {
		case "m-s":
			writeJSON(w, 200, stoppedWithCommand)
			return
		case "m-main":
			writeJSON(w, 200, api.Machine{ID: "m-main", State: api.StateRunning, Template: "base", CPUCount: 2, MemoryMB: 512,
				Command: []string{"sleep", "infinity"}, MainPID: 12, CreatedAt: testNow.Add(-time.Minute)})
			return
		}
		if id == "m-p" {
			writeJSON(w, 200, api.Machine{ID: "m-p", State: api.StatePaused, Template: "base", CPUCount: 2, MemoryMB: 512,
				SnapshotID: "snp-h", LineageID: "m-p", LatestID: "m-3", CreatedAt: testNow.Add(-time.Minute),
				Volumes: []api.VolumeMount{{Name: "data", Path: "/data"}, {Name: "cache", Path: "/cache", ReadOnly: true}},
				Hooks:   &api.Hooks{OnPause: []string{"sync"}, OnResume: []string{"date", "true"}}})
			return
		}
		if id != "m-1" {
			notFound(w, id)
			return
		}
		writeJSON(w, 200, api.Machine{ID: "m-1", State: api.StateRunning, Template: "base", CPUCount: 2, MemoryMB: 512,
			Metadata: map[string]string{"owner": "me"}, CreatedAt: testNow.Add(-time.Minute)})
	})
	mux.HandleFunc("DELETE /v1/machines/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if !strings.HasPrefix(id, "m-") {
			notFound(w, id)
			return
		}
		writeJSON(w, 200, api.Machine{ID: id, State: api.StateKilled})
	})
	mux.HandleFunc("POST /v1/machines/{id}/commands", f.commands)
	mux.HandleFunc("DELETE /v1/machines/{id}/commands/{pid}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.killedPIDs = append(f.killedPIDs, r.PathValue("pid"))
		f.mu.Unlock()
		w.WriteHeader(204)
	})
	mux.HandleFunc("GET /v1/machines/{id}/files", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("path") != "/etc/hostname" {
			writeJSON(w, 404, api.Error{Code: "file_not_found", Message: "no such file " + r.URL.Query().Get("path")})
			return
		}
		io.WriteString(w, "m-1\n")
	})
	mux.HandleFunc("PUT /v1/machines/{id}/files", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.written = b
		f.mu.Unlock()
		writeJSON(w, 200, api.WriteResult{Path: r.URL.Query().Get("path"), Size: int64(len(b))})
	})
	mux.HandleFunc("GET /v1/machines/{id}/files/list", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.FileList{Entries: []api.FileInfo{
			{Name: "etc", Path: "/etc", Type: "dir", Size: 4096, Mode: "0755", ModTime: testNow},
			{Name: "sh", Path: "/sh", Type: "symlink", Size: 4, Mode: "0777", ModTime: testNow, Target: "/bin/sh"},
		}})
	})
	mux.HandleFunc("POST /v1/templates", func(w http.ResponseWriter, r *http.Request) {
		var req api.BuildTemplateRequest
		var tarball []byte
		if mr, err := r.MultipartReader(); err == nil {
			p, _ := mr.NextPart()
			json.NewDecoder(p).Decode(&req)
			if p, err := mr.NextPart(); err == nil && p.FormName() == "tarball" {
				tarball, _ = io.ReadAll(p)
			}
		} else {
			json.NewDecoder(r.Body).Decode(&req)
		}
		f.mu.Lock()
		f.lastBuild, f.lastTarball = req, tarball
		f.mu.Unlock()
		state, msg := api.TemplateReady, ""
		if len(req.Steps) > 0 && req.Steps[0] == "false" {
			state, msg = api.TemplateFailed, "step 1 exited with 1"
		}
		writeJSON(w, 201, api.Template{Name: req.Name, State: state, Error: msg, SizeBytes: 3 << 20})
	})
	f.Server = httptest.NewServer(auth(mux))
	t.Cleanup(f.Close)
	return f
}

func auth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer test-key" {
			writeJSON(w, 401, api.Error{Code: "unauthenticated", Message: "missing or invalid API key",
				SuggestedAction: "send Authorization: Bearer <api key>"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func notFound(w http.ResponseWriter, id string) {
	writeJSON(w, 404, api.Error{Code: "machine_not_found", Message: "machine " + id + " not found",
		SuggestedAction: "list machines with 'nullspace machine list'"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// commands runs fake commands named by argv[0]:
//
//	exit N   writes "out" and "err", exits N
//	kill     killed by SIGKILL
//	slow     times out
//	missing  command_not_found before the stream
//	cut      stream ends without an exit event
//	hang     sends start and "ready" then waits for the client to go away
func (f *fakeServer) commands(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != "m-1" {
		notFound(w, id)
		return
	}
	var req api.RunCommandRequest
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	f.lastRun = req
	f.mu.Unlock()
	argv := req.Cmd
	if req.Shell != "" {
		argv = []string{"exit", "0"}
	}
	if len(argv) == 0 {
		writeJSON(w, 400, api.Error{Code: "invalid_argument", Message: "cmd or shell is required"})
		return
	}
	if argv[0] == "missing" {
		writeJSON(w, 404, api.Error{Code: "command_not_found", Message: "command missing not found"})
		return
	}
	if req.Background {
		writeJSON(w, 202, api.CommandStarted{PID: 42})
		return
	}
	code, sig, timedOut := 0, "", false
	switch argv[0] {
	case "exit":
		code, _ = strconv.Atoi(argv[1])
	case "kill":
		code, sig = -1, "SIGKILL"
	case "slow":
		code, sig, timedOut = -1, "SIGKILL", true
	}
	if !req.Stream {
		writeJSON(w, 200, api.CommandResult{PID: 7, ExitCode: code, Stdout: "out\n", Stderr: "err\n", Signal: sig, TimedOut: timedOut})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	send := func(ev api.CommandEvent) {
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
	send(api.CommandEvent{Type: api.EventStart, PID: 7})
	if argv[0] == "hang" {
		send(api.CommandEvent{Type: api.EventStdout, PID: 7, Data: []byte("ready\n")})
		<-r.Context().Done()
		return
	}
	send(api.CommandEvent{Type: api.EventStdout, PID: 7, Data: []byte("out\n")})
	send(api.CommandEvent{Type: api.EventStderr, PID: 7, Data: []byte("err\n")})
	if req.Stdin != "" {
		send(api.CommandEvent{Type: api.EventStdout, PID: 7, Data: []byte(req.Stdin)})
	}
	if argv[0] == "cut" {
		return
	}
	var exitCode *int
	if code >= 0 {
		exitCode = &code
	}
	send(api.CommandEvent{Type: api.EventExit, PID: 7, ExitCode: exitCode, Signal: sig, TimedOut: timedOut})
}

// run executes the CLI against f with the given args and stdin.
func run(t *testing.T, ctx context.Context, f *fakeServer, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	a := &app{version: "test", now: func() time.Time { return testNow }}
	root := newRootCommand(a)
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--api-url", f.URL, "--api-key", "test-key"}, args...))
	code = Execute(ctx, root)
	return out.String(), errb.String(), code
}

func TestCLI(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "machine create prints id",
			args:       []string{"machine", "create", "--env", "A=1", "--metadata", "owner=me"},
			wantStdout: "m-new\n",
		},
		{
			name: "machine create --json",
			args: []string{"--json", "machine", "create"},
			wantStdout: `{
  "id": "m-new",
  "state": "running",
  "template": "base",
  "cpu_count": 2,
  "memory_mb": 512,
  "disk_mb": 0,
  "allow_internet": false,
  "created_at": "2025-06-01T12:00:00Z",
  "lineage_id": "m-new",
  "latest_id": "m-new",
  "checkpoint_retention": 0
}
`,
		},
		{
			name: "machine list table",
			args: []string{"machine", "list"},
			wantStdout: "" +
				"ID    STATE     TEMPLATE   CPU   MEM      IP          SNAPSHOT   AGE\n" +
				"m-1   running   base       2     512MiB   10.11.0.2   -          1m\n" +
				"m-2   killed    py         1     256MiB   -           -          2d\n" +
				"m-p   paused    base       2     512MiB   -           snp-h      3m\n",
		},
		{
			name: "machine info of a paused alias",
			args: []string{"machine", "info", "m-p"},
			wantStdout: "" +
				"ID:         m-p\n" +
				"State:      paused\n" +
				"Snapshot:   snp-h\n" +
				"Latest:     m-3\n" +
				"Template:   base\n" +
				"CPU:        2\n" +
				"Memory:     512 MiB\n" +
				"Internet:   false\n" +
				"Volumes:    data:/data, cache:/cache:ro\n" +
				"On pause:   sync\n" +
				"On resume:  date; true\n" +
				"Created:    " + testNow.Add(-time.Minute).Local().Format(time.RFC3339) + " (1m ago)\n",
		},
		{
			name:       "machine pause prints the snapshot id",
			args:       []string{"machine", "pause", "m-1"},
			wantStdout: "snp-h\n",
			wantStderr: "machine m-1 paused (14.0MiB, frozen 85ms); resume it with 'nullspace machine connect m-1'\n",
		},
		{
			name:     "machine pause with a full snapshot disk",
			args:     []string{"machine", "pause", "m-full"},
			wantCode: 1,
			wantStderr: "error: no space left on the snapshot disk: machine m-full was not checkpointed and keeps running (resource_exhausted)\n" +
				"hint: free disk space on the server (delete unused snapshots) and retry\n",
		},
		{
			name:       "machine resume prints the new id",
			args:       []string{"machine", "resume", "snp-h"},
			wantStdout: "m-2\n",
		},
		{
			name:     "machine resume of a superseded snapshot",
			args:     []string{"machine", "resume", "snp-old"},
			wantCode: 1,
			wantStderr: "error: snapshot snp-old is not the latest state of machine m-p: its latest execution is m-1 (running) (snapshot_superseded)\n" +
				"hint: use POST /v1/machines/{id}/connect to reach the latest execution\n",
		},
		{
			name:       "machine connect follows an alias",
			args:       []string{"machine", "connect", "m-p"},
			wantStdout: "m-1\n",
			wantStderr: "machine m-p continues as m-1\n",
		},
		{
			name:       "machine connect to the latest says nothing more",
			args:       []string{"machine", "connect", "m-1"},
			wantStdout: "m-1\n",
		},
		{
			name:       "machine stop prints the id",
			args:       []string{"machine", "stop", "m-1"},
			wantStdout: "m-1\n",
			wantStderr: "machine m-1 stopped, its files kept in snp-d; start it with 'nullspace machine start m-1'\n",
		},
		{
			name:       "machine stop says how the main process ended",
			args:       []string{"machine", "stop", "m-s", "--grace", "0"},
			wantStdout: "m-s\n",
			wantStderr: "machine m-s stopped, its files kept in snp-d; start it with 'nullspace machine start m-s'\n" +
				"main process: exit code 143 (SIGTERM)\n",
		},
		{
			name:     "machine stop of an ephemeral machine",
			args:     []string{"machine", "stop", "m-e"},
			wantCode: 1,
			wantStderr: "error: machine m-e is ephemeral: a stop would keep its disk, and it keeps nothing (machine_ephemeral)\n" +
				"hint: kill it, or create machines to stop with persistence \"sticky\" or \"persistent\"\n",
		},
		{
			name:       "machine stop with a negative grace is a usage error",
			args:       []string{"machine", "stop", "m-1", "--grace", "-1s"},
			wantCode:   2,
			wantStderr: "error: invalid --grace -1s: must not be negative\nRun 'nullspace machine stop --help' for usage.\n",
		},
		{
			name:       "machine start prints the id and the main pid",
			args:       []string{"machine", "start", "m-s"},
			wantStdout: "m-s\n",
			wantStderr: "machine m-s is running; main process pid 12\n",
		},
		{
			name:       "machine start without a main process",
			args:       []string{"machine", "start", "m-1"},
			wantStdout: "m-1\n",
		},
		{
			name:       "machine wait exits 0 with the main process",
			args:       []string{"machine", "wait", "m-0"},
			wantStdout: "exit code 0\n",
		},
		{
			name:       "machine wait exits with the main process's code",
			args:       []string{"machine", "wait", "m-3"},
			wantCode:   3,
			wantStdout: "exit code 3\n",
		},
		{
			name:       "machine wait on a signal exits 128+N",
			args:       []string{"machine", "wait", "m-term"},
			wantCode:   143,
			wantStdout: "exit code 143 (SIGTERM)\n",
		},
		{
			name:       "machine wait --json prints the exit and keeps the code",
			args:       []string{"--json", "machine", "wait", "m-3"},
			wantCode:   3,
			wantStdout: "{\n  \"exit_code\": 3,\n  \"at\": \"2025-06-01T11:59:59Z\"\n}\n",
		},
		{
			name:       "machine wait past --timeout exits 124",
			args:       []string{"machine", "wait", "m-slow", "--timeout", "1.5s"},
			wantCode:   124,
			wantStderr: "error: the main process of machine m-slow was still running after 1.5s\n",
		},
		{
			name:     "machine wait without a main process",
			args:     []string{"machine", "wait", "m-bare"},
			wantCode: 1,
			wantStderr: "error: machine m-bare has no main process: it was created without a command (machine_has_no_command)\n" +
				"hint: create machines with a command to wait for\n",
		},
		{
			name:       "machine url prints the url",
			args:       []string{"machine", "url", "m-1", "8080"},
			wantStdout: "http://127.0.0.1:7701/m/8080-x-sig\n",
		},
		{
			name:       "machine url with a bad port is a usage error",
			args:       []string{"machine", "url", "m-1", "80x"},
			wantCode:   2,
			wantStderr: "error: invalid PORT \"80x\": give a port number from 1 to 65535\nRun 'nullspace machine url --help' for usage.\n",
		},
		{
			name:       "machine wait with a negative timeout is a usage error",
			args:       []string{"machine", "wait", "m-0", "--timeout", "-1s"},
			wantCode:   2,
			wantStderr: "error: invalid --timeout -1s: must not be negative\nRun 'nullspace machine wait --help' for usage.\n",
		},
		{
			name: "machine info of a stopped machine with a main process",
			args: []string{"machine", "info", "m-s"},
			wantStdout: "" +
				"ID:           m-s\n" +
				"State:        stopped\n" +
				"Snapshot:     snp-d\n" +
				"Template:     base\n" +
				"CPU:          2\n" +
				"Memory:       512 MiB\n" +
				"Internet:     false\n" +
				"Command:      python3 -m http.server --directory '/srv/my site'\n" +
				"Exit:         exit code 143 (SIGTERM) at " + testNow.Add(-2*time.Minute).Local().Format(time.RFC3339) + " (2m ago)\n" +
				"Lease:        10m0s, then destroy (stopped: the window starts again at 'machine start')\n" +
				"Persistence:  persistent\n" +
				"Created:      " + testNow.Add(-time.Hour).Local().Format(time.RFC3339) + " (1h ago)\n",
		},
		{
			name: "machine info of a running machine shows its main pid",
			args: []string{"machine", "info", "m-main"},
			wantStdout: "" +
				"ID:        m-main\n" +
				"State:     running\n" +
				"Template:  base\n" +
				"CPU:       2\n" +
				"Memory:    512 MiB\n" +
				"Internet:  false\n" +
				"Command:   sleep infinity\n" +
				"Main PID:  12\n" +
				"Created:   " + testNow.Add(-time.Minute).Local().Format(time.RFC3339) + " (1m ago)\n",
		},
		{
			name:       "machine create takes the main process after --",
			args:       []string{"machine", "create", "--template", "base", "--", "python3", "-m", "http.server"},
			wantStdout: "m-new\n",
		},
		{
			name:     "machine create without -- is a usage error",
			args:     []string{"machine", "create", "python3"},
			wantCode: 2,
			wantStderr: "error: unexpected arguments [\"python3\"]: put the main process after --: nullspace machine create [flags] -- CMD [ARGS...]\n" +
				"Run 'nullspace machine create --help' for usage.\n",
		},
		{
			name:     "machine create --snapshot refuses a command",
			args:     []string{"machine", "create", "--snapshot", "snp-r", "--", "sleep", "1"},
			wantCode: 2,
			wantStderr: "error: --snapshot cannot be combined with a command: a machine created from a snapshot has the snapshot's main process\n" +
				"Run 'nullspace machine create --help' for usage.\n",
		},
		{
			name:       "machine snapshot prints the snapshot id",
			args:       []string{"machine", "snapshot", "m-1"},
			wantStdout: "snp-r\n",
		},
		{
			name:       "machine fork prints the children",
			args:       []string{"machine", "fork", "m-1", "--count", "3"},
			wantStdout: "m-c1\nm-c2\nm-c3\n",
			wantStderr: "forked m-1 into 3 machines from snapshot snp-f (m-1 stopped 40ms)\n",
		},
		{
			name:       "machine fork --count 0 is a usage error",
			args:       []string{"machine", "fork", "m-1", "--count", "0"},
			wantCode:   2,
			wantStderr: "error: invalid --count 0: want 1 to 16\nRun 'nullspace machine fork --help' for usage.\n",
		},
		{
			name:       "machine create --snapshot refuses template flags",
			args:       []string{"machine", "create", "--snapshot", "snp-r", "--cpu", "4"},
			wantCode:   2,
			wantStderr: "error: --snapshot cannot be combined with --cpu: a machine created from a snapshot has the snapshot's\nRun 'nullspace machine create --help' for usage.\n",
		},
		{
			name:       "machine create bad --volume",
			args:       []string{"machine", "create", "--volume", "data"},
			wantCode:   2,
			wantStderr: "error: invalid --volume \"data\": want NAME:/PATH or NAME:/PATH:ro\nRun 'nullspace machine create --help' for usage.\n",
		},
		{
			name: "snapshot ls table",
			args: []string{"snapshot", "ls"},
			wantStdout: "" +
				"ID      NAME   KIND         MACHINE   SIZE      GEN   AGE   WINDOW\n" +
				"snp-c   -      checkpoint   m-1       12.0MiB   1     1h    1.25s\n" +
				"snp-h   web    hibernate    m-1       14.0MiB   2     2m    85ms\n",
		},
		{
			name:       "snapshot ls --json with nothing to list prints []",
			args:       []string{"--json", "snapshot", "ls", "--kind", "snapshot"},
			wantStdout: "[]\n",
		},
		{
			name: "snapshot info",
			args: []string{"snapshot", "info", "snp-h"},
			wantStdout: "" +
				"ID:          snp-h\n" +
				"Name:        web\n" +
				"Kind:        hibernate\n" +
				"Machine:     m-1\n" +
				"Generation:  2\n" +
				"Template:    base\n" +
				"Size:        14.0MiB\n" +
				"Window:      85ms\n" +
				"Children:    0\n" +
				"Checksum:    crc32c:0badf00d\n" +
				"Runtime:     release-20250512.0\n" +
				"Kernel:      6.8.0\n" +
				"Created:     " + testNow.Add(-2*time.Minute).Local().Format(time.RFC3339) + " (2m ago)\n",
		},
		{
			name:       "snapshot info of an unknown id",
			args:       []string{"snapshot", "info", "snp-x"},
			wantCode:   1,
			wantStderr: "error: snapshot snp-x not found (snapshot_not_found)\nhint: list your snapshots with `nullspace snapshot ls`\n",
		},
		{
			name:       "snapshot rm continues past a snapshot in use",
			args:       []string{"snapshot", "rm", "snp-h", "snp-c"},
			wantCode:   1,
			wantStdout: "snp-c\n",
			wantStderr: "error: snapshot snp-h is in use: it holds the paused state of m-p (snapshot_in_use)\nhint: kill those machines first, or delete with force=true\n",
		},
		{
			name:       "snapshot rm --force",
			args:       []string{"snapshot", "rm", "--force", "snp-h"},
			wantStdout: "snp-h\n",
		},
		{
			name:       "snapshot rm --json prints the deleted ids",
			args:       []string{"--json", "snapshot", "rm", "snp-c"},
			wantStdout: "[\n  \"snp-c\"\n]\n",
		},
		{
			name: "checkpoint ls",
			args: []string{"checkpoint", "ls", "m-1"},
			wantStdout: "" +
				"ID      NAME   KIND         MACHINE   SIZE      GEN   AGE   WINDOW\n" +
				"snp-c   -      checkpoint   m-1       12.0MiB   1     1h    1.25s\n" +
				"snp-h   web    hibernate    m-1       14.0MiB   2     2m    85ms\n",
		},
		{
			name:       "checkpoint create prints the id",
			args:       []string{"checkpoint", "create", "m-1"},
			wantStdout: "snp-c\n",
		},
		{
			name:       "checkpoint restore prints the machine id",
			args:       []string{"checkpoint", "restore", "m-1", "snp-c"},
			wantStdout: "m-1\n",
		},
		{
			name:       "checkpoint restore needs both ids",
			args:       []string{"checkpoint", "restore", "m-1"},
			wantCode:   2,
			wantStderr: "error: want arguments MACHINE SNAPSHOT, got 1\nRun 'nullspace checkpoint restore --help' for usage.\n",
		},
		{
			name:       "volume create",
			args:       []string{"volume", "create", "data"},
			wantStdout: "data\n",
		},
		{
			name: "volume ls",
			args: []string{"volume", "ls"},
			wantStdout: "" +
				"NAME    SIZE     MACHINES   AGE\n" +
				"data    3.0MiB   2          3h\n" +
				"empty   0B       0          5s\n",
		},
		{
			name:       "volume rm in use",
			args:       []string{"volume", "rm", "data", "empty"},
			wantCode:   1,
			wantStdout: "empty\n",
			wantStderr: "error: volume data is in use by machines [m-1] and snapshots [] (volume_in_use)\nhint: kill those machines and delete those snapshots first\n",
		},
		{
			name:       "machine info",
			args:       []string{"machine", "info", "m-1"},
			wantStdout: "ID:        m-1\nState:     running\nTemplate:  base\nCPU:       2\nMemory:    512 MiB\nInternet:  false\nMetadata:  owner=me\nCreated:   " + testNow.Add(-time.Minute).Local().Format(time.RFC3339) + " (1m ago)\n",
		},
		{
			name:       "api error is formatted with code and hint",
			args:       []string{"machine", "info", "nope"},
			wantCode:   1,
			wantStderr: "error: machine nope not found (machine_not_found)\nhint: list machines with 'nullspace machine list'\n",
		},
		{
			name:       "kill continues past failures and exits 1",
			args:       []string{"machine", "kill", "m-1", "x-9", "m-2"},
			wantCode:   1,
			wantStdout: "m-1\nm-2\n",
			wantStderr: "error: machine x-9 not found (machine_not_found)\nhint: list machines with 'nullspace machine list'\n",
		},
		{
			name:       "usage error: missing argument",
			args:       []string{"machine", "info"},
			wantCode:   2,
			wantStderr: "error: want arguments ID, got 0\nRun 'nullspace machine info --help' for usage.\n",
		},
		{
			name:       "usage error: unknown flag",
			args:       []string{"machine", "create", "--cpus", "2"},
			wantCode:   2,
			wantStderr: "error: unknown flag: --cpus\nRun 'nullspace machine create --help' for usage.\n",
		},
		{
			name:       "usage error: unknown command",
			args:       []string{"machine", "lst"},
			wantCode:   2,
			wantStderr: "error: unknown command \"lst\" for \"nullspace machine\"; did you mean \"list\"?\nRun 'nullspace machine --help' for usage.\n",
		},
		{
			name:       "usage error: bad pair",
			args:       []string{"machine", "create", "--env", "NOEQUALS"},
			wantCode:   2,
			wantStderr: "error: invalid --env \"NOEQUALS\": want KEY=VALUE\nRun 'nullspace machine create --help' for usage.\n",
		},
		{
			name:       "exec success streams output",
			args:       []string{"exec", "m-1", "--", "exit", "0"},
			wantStdout: "out\n",
			wantStderr: "err\n",
		},
		{
			name:       "exec propagates exit code",
			args:       []string{"exec", "m-1", "--", "exit", "3"},
			wantCode:   3,
			wantStdout: "out\n",
			wantStderr: "err\n",
		},
		{
			name:       "exec killed by signal exits 128+N",
			args:       []string{"exec", "m-1", "--", "kill"},
			wantCode:   137,
			wantStdout: "out\n",
			wantStderr: "err\n",
		},
		{
			name:       "exec timeout exits 124",
			args:       []string{"exec", "m-1", "--timeout", "2s", "--", "slow"},
			wantCode:   124,
			wantStdout: "out\n",
			wantStderr: "err\nerror: command timed out after 2s\n",
		},
		{
			name:       "exec command not found exits 127",
			args:       []string{"exec", "m-1", "--", "missing"},
			wantCode:   127,
			wantStderr: "error: command missing not found (command_not_found)\n",
		},
		{
			name:       "exec stream cut exits 1",
			args:       []string{"exec", "m-1", "--", "cut"},
			wantCode:   1,
			wantStdout: "out\n",
			wantStderr: "err\nerror: command stream of machine m-1 ended before the command exited\n",
		},
		{
			name:       "exec unknown machine",
			args:       []string{"exec", "m-9", "--", "exit", "0"},
			wantCode:   1,
			wantStderr: "error: machine m-9 not found (machine_not_found)\nhint: list machines with 'nullspace machine list'\n",
		},
		{
			name:       "exec sends stdin",
			args:       []string{"exec", "--stdin", "m-1", "--", "exit", "0"},
			stdin:      "typed\n",
			wantStdout: "out\ntyped\n",
			wantStderr: "err\n",
		},
		{
			name:       "exec --background prints pid",
			args:       []string{"exec", "m-1", "--background", "--", "exit", "0"},
			wantStdout: "42\n",
		},
		{
			name:       "exec --json prints result and keeps the exit code",
			args:       []string{"--json", "exec", "m-1", "--", "exit", "5"},
			wantCode:   5,
			wantStdout: "{\n  \"pid\": 7,\n  \"exit_code\": 5,\n  \"stdout\": \"out\\n\",\n  \"stderr\": \"err\\n\"\n}\n",
		},
		{
			name:       "exec without a command is a usage error",
			args:       []string{"exec", "m-1"},
			wantCode:   2,
			wantStderr: "error: want arguments ID CMD [ARGS...], got 1\nRun 'nullspace exec --help' for usage.\n",
		},
		{
			name:       "files read",
			args:       []string{"files", "read", "m-1", "/etc/hostname"},
			wantStdout: "m-1\n",
		},
		{
			name:       "files read missing",
			args:       []string{"files", "read", "m-1", "/nope"},
			wantCode:   1,
			wantStderr: "error: no such file /nope (file_not_found)\n",
		},
		{
			name:       "files write from stdin",
			args:       []string{"files", "write", "m-1", "/tmp/x", "-"},
			stdin:      "hello",
			wantStdout: "wrote 5 bytes to /tmp/x\n",
		},
		{
			name:       "files write bad mode",
			args:       []string{"files", "write", "m-1", "/tmp/x", "--mode", "999"},
			wantCode:   2,
			wantStderr: "error: invalid --mode \"999\": want octal permission bits such as 0644\nRun 'nullspace files write --help' for usage.\n",
		},
		{
			name: "files ls",
			args: []string{"files", "ls", "m-1", "/"},
			wantStdout: "" +
				"TYPE      MODE   SIZE   MODIFIED           NAME\n" +
				"dir       0755   4096   " + testNow.Local().Format("2006-01-02 15:04") + "   etc\n" +
				"symlink   0777   4      " + testNow.Local().Format("2006-01-02 15:04") + "   sh -> /bin/sh\n",
		},
		{
			name:       "template build",
			args:       []string{"template", "build", "py", "--from-template", "base", "--step", "true"},
			wantStdout: "template py is ready (3.0MiB)\n",
			wantStderr: "building template py...\n",
		},
		{
			name:       "template build failure exits 1",
			args:       []string{"template", "build", "py", "--from-template", "base", "--step", "false"},
			wantCode:   1,
			wantStderr: "building template py...\nerror: template py failed to build: step 1 exited with 1\n",
		},
		{
			name:       "template build needs one source",
			args:       []string{"template", "build", "py", "--from-template", "base", "--from-dir", "/srv"},
			wantCode:   2,
			wantStderr: "error: want exactly one of --from-template, --from-dir, --from-tarball, got 2\nRun 'nullspace template build --help' for usage.\n",
		},
	}
	f := newFakeServer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := run(t, t.Context(), f, tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Errorf("got exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("got stdout\n%s\nwant\n%s", stdout, tt.wantStdout)
			}
			if stderr != tt.wantStderr {
				t.Errorf("got stderr %q, want %q", stderr, tt.wantStderr)
			}
		})
	}
}

func TestCLIRequests(t *testing.T) {
	f := newFakeServer(t)

	run(t, t.Context(), f, "", "machine", "create", "--template", "py", "--cpu", "1", "--memory", "256",
		"--env", "A=1=2", "--env", "B=", "--metadata", "owner=me", "--allow-internet")
	wantCreate := `{"template":"py","cpu_count":1,"memory_mb":256,"env":{"A":"1=2","B":""},"metadata":{"owner":"me"},"allow_internet":true}`
	if got := mustJSON(t, f.lastCreate); got != wantCreate {
		t.Errorf("got create request %s, want %s", got, wantCreate)
	}

	run(t, t.Context(), f, "", "machine", "list", "--state", "running", "--metadata", "b=2", "--metadata", "a=1")
	if want := "metadata=a%3D1&metadata=b%3D2&state=running"; f.lastList != want {
		t.Errorf("got list query %q, want %q", f.lastList, want)
	}

	run(t, t.Context(), f, "", "exec", "m-1", "--cwd", "/w", "--user", "app", "--env", "X=y", "--timeout", "1500ms", "--shell", "--", "echo", "$HOME", "|", "wc")
	wantRun := `{"shell":"echo $HOME | wc","cwd":"/w","env":{"X":"y"},"user":"app","timeout_ms":1500,"stream":true}`
	if got := mustJSON(t, f.lastRun); got != wantRun {
		t.Errorf("got run request %s, want %s", got, wantRun)
	}

	run(t, t.Context(), f, "", "template", "build", "t", "--from-dir", "rootfs", "--server-path", "--workdir", "/w", "--step", "a", "--step", "b c")
	if !filepath.IsAbs(f.lastBuild.FromDir) || filepath.Base(f.lastBuild.FromDir) != "rootfs" || f.lastTarball != nil {
		t.Errorf("got from_dir %q, want an absolute path ending in rootfs and no upload", f.lastBuild.FromDir)
	}
	if got, want := strings.Join(f.lastBuild.Steps, ";"), "a;b c"; got != want {
		t.Errorf("got steps %q, want %q", got, want)
	}

	// Without --server-path, a directory and a tarball are uploaded.
	rootfs := t.TempDir()
	if err := os.WriteFile(filepath.Join(rootfs, "marker"), []byte("here"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, t.Context(), f, "", "template", "build", "up", "--from-dir", rootfs, "--step", "a")
	if f.lastBuild.FromDir != "" || f.lastBuild.Name != "up" || !bytes.Contains(f.lastTarball, []byte("./marker")) {
		t.Errorf("got request %+v with a %d-byte tarball, want the directory uploaded as a tar stream", f.lastBuild, len(f.lastTarball))
	}
	tarball := filepath.Join(t.TempDir(), "rootfs.tar.gz")
	if err := os.WriteFile(tarball, []byte("tarball bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, t.Context(), f, "", "template", "build", "up2", "--from-tarball", tarball)
	if f.lastBuild.FromTarball != "" || string(f.lastTarball) != "tarball bytes" {
		t.Errorf("got request %+v with tarball %q, want the file uploaded", f.lastBuild, f.lastTarball)
	}

	run(t, t.Context(), f, "", "machine", "create", "--volume", "data:/data", "--volume", "cache:/var/cache:ro",
		"--volume", "logs:/logs:rw", "--on-pause", "sync", "--on-resume", "date", "--on-resume", "true")
	wantCreate = `{"template":"base","volumes":[{"name":"data","path":"/data"},{"name":"cache","path":"/var/cache","read_only":true},` +
		`{"name":"logs","path":"/logs"}],"hooks":{"on_pause":["sync"],"on_resume":["date","true"]}}`
	if got := mustJSON(t, f.lastCreate); got != wantCreate {
		t.Errorf("got create request %s, want %s", got, wantCreate)
	}

	run(t, t.Context(), f, "", "machine", "create", "--snapshot", "snp-r", "--metadata", "k=v")
	wantCreate = `{"metadata":{"k":"v"},"snapshot_id":"snp-r"}`
	if got := mustJSON(t, f.lastCreate); got != wantCreate {
		t.Errorf("got create request %s, want %s", got, wantCreate)
	}

	// Flags after -- belong to the main process, not to create.
	run(t, t.Context(), f, "", "machine", "create", "--cpu", "1", "--", "python3", "-m", "http.server", "--bind", "0.0.0.0")
	wantCreate = `{"template":"base","cpu_count":1,"command":["python3","-m","http.server","--bind","0.0.0.0"]}`
	if got := mustJSON(t, f.lastCreate); got != wantCreate {
		t.Errorf("got create request %s, want %s", got, wantCreate)
	}

	calls := []struct {
		args    []string
		pattern string
		want    string
	}{
		{[]string{"machine", "pause", "m-1"}, "POST /v1/machines/{id}/pause", "POST /v1/machines/m-1/pause"},
		{[]string{"machine", "resume", "snp-h"}, "POST /v1/snapshots/{id}/resume", "POST /v1/snapshots/snp-h/resume"},
		{[]string{"machine", "connect", "m-p"}, "POST /v1/machines/{id}/connect", "POST /v1/machines/m-p/connect"},
		{[]string{"machine", "snapshot", "m-1"}, "POST /v1/machines/{id}/snapshots", "POST /v1/machines/m-1/snapshots"},
		{[]string{"machine", "snapshot", "m-1", "--name", "web"}, "POST /v1/machines/{id}/snapshots", `POST /v1/machines/m-1/snapshots {"name":"web"}`},
		{[]string{"snapshot", "create", "m-1", "--name", "db"}, "POST /v1/machines/{id}/snapshots", `POST /v1/machines/m-1/snapshots {"name":"db"}`},
		{[]string{"snapshot", "ls", "--name", "web"}, "GET /v1/snapshots", "GET /v1/snapshots?name=web"},
		{[]string{"machine", "fork", "m-1"}, "POST /v1/machines/{id}/fork", `POST /v1/machines/m-1/fork {"count":1}`},
		{[]string{"machine", "fork", "m-1", "-n", "4"}, "POST /v1/machines/{id}/fork", `POST /v1/machines/m-1/fork {"count":4}`},
		{[]string{"snapshot", "ls", "--machine", "m-1", "--kind", "checkpoint"}, "GET /v1/snapshots", "GET /v1/snapshots?kind=checkpoint&machine_id=m-1"},
		{[]string{"snapshot", "rm", "--force", "snp-h"}, "DELETE /v1/snapshots/{id}", "DELETE /v1/snapshots/snp-h?force=true"},
		{[]string{"checkpoint", "ls", "m-p"}, "GET /v1/machines/{id}/checkpoints", "GET /v1/machines/m-p/checkpoints"},
		{[]string{"checkpoint", "create", "m-1"}, "POST /v1/machines/{id}/checkpoints", "POST /v1/machines/m-1/checkpoints"},
		{[]string{"checkpoint", "restore", "m-p", "snp-c"}, "POST /v1/machines/{id}/checkpoints/{snapshot_id}/restore",
			"POST /v1/machines/m-p/checkpoints/snp-c/restore"},
		{[]string{"volume", "create", "data"}, "POST /v1/volumes", `POST /v1/volumes {"name":"data"}`},
		{[]string{"volume", "rm", "empty"}, "DELETE /v1/volumes/{name}", "DELETE /v1/volumes/empty"},
		// Without --grace the server's default applies: no body.
		{[]string{"machine", "stop", "m-1"}, "POST /v1/machines/{id}/stop", "POST /v1/machines/m-1/stop"},
		{[]string{"machine", "stop", "m-1", "--grace", "2s"}, "POST /v1/machines/{id}/stop", `POST /v1/machines/m-1/stop {"grace_ms":2000}`},
		{[]string{"machine", "stop", "m-1", "--grace", "0"}, "POST /v1/machines/{id}/stop", `POST /v1/machines/m-1/stop {"grace_ms":0}`},
		{[]string{"machine", "start", "m-s"}, "POST /v1/machines/{id}/start", "POST /v1/machines/m-s/start"},
		{[]string{"machine", "wait", "m-0"}, "GET /v1/machines/{id}/wait", "GET /v1/machines/m-0/wait"},
		{[]string{"machine", "wait", "m-0", "--timeout", "10m"}, "GET /v1/machines/{id}/wait", "GET /v1/machines/m-0/wait?timeout_ms=600000"},
		{[]string{"machine", "url", "m-1", "8080"}, "POST /v1/machines/{id}/urls", `POST /v1/machines/m-1/urls {"port":8080}`},
		{[]string{"machine", "url", "m-1", "3000", "--expires", "1h"}, "POST /v1/machines/{id}/urls", `POST /v1/machines/m-1/urls {"port":3000,"expires_in_ms":3600000}`},
	}
	for _, c := range calls {
		run(t, t.Context(), f, "", c.args...)
		if got := f.lastCall(c.pattern); got != c.want {
			t.Errorf("%s: got request %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	local := filepath.Join(t.TempDir(), "in.bin")
	writeFile(t, local, "\x00binary\xff")
	run(t, t.Context(), f, "", "files", "write", "m-1", "/x", local)
	if got := string(f.written); got != "\x00binary\xff" {
		t.Errorf("got written %q, want the local file's bytes", got)
	}
}

func TestExecInterruptKillsRemoteCommand(t *testing.T) {
	f := newFakeServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	root := newRootCommand(&app{version: "test", now: time.Now})
	var errb bytes.Buffer
	// Interrupt once the command's output arrives, as a user pressing Ctrl-C.
	root.SetOut(writerFunc(func(p []byte) (int, error) {
		cancel()
		return len(p), nil
	}))
	root.SetErr(&errb)
	root.SetArgs([]string{"--api-url", f.URL, "--api-key", "test-key", "exec", "m-1", "--", "hang"})
	if code := Execute(ctx, root); code != exitInterrupted {
		t.Errorf("got exit code %d, want %d", code, exitInterrupted)
	}
	if want := "error: interrupted; killed command 7 in machine m-1\n"; errb.String() != want {
		t.Errorf("got stderr %q, want %q", errb.String(), want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := strings.Join(f.killedPIDs, ","); got != "7" {
		t.Errorf("got killed pids %q, want 7", got)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestUnauthenticated(t *testing.T) {
	f := newFakeServer(t)
	a := &app{version: "test", now: time.Now}
	root := newRootCommand(a)
	var errb bytes.Buffer
	root.SetOut(io.Discard)
	root.SetErr(&errb)
	t.Setenv("NULLSPACE_API_KEY", "")
	t.Setenv("NULLSPACE_DATA_DIR", t.TempDir()) // no key file
	root.SetArgs([]string{"--api-url", f.URL, "machine", "list"})
	if code := Execute(t.Context(), root); code != exitError {
		t.Errorf("got exit code %d, want %d", code, exitError)
	}
	want := "error: missing or invalid API key (unauthenticated)\nhint: send Authorization: Bearer <api key>\n"
	if errb.String() != want {
		t.Errorf("got stderr %q, want %q", errb.String(), want)
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		code     int
		signal   string
		timedOut bool
		want     int
	}{
		{0, "", false, 0},
		{1, "", false, 1},
		{255, "", false, 255},
		{-1, "SIGKILL", false, 137},
		{-1, "TERM", false, 143},
		{-1, "15", false, 143},
		{137, "SIGKILL", false, 137},
		{-1, "SIGKILL", true, 124},
		{2, "SIGWHAT", false, 2},
		{-1, "", false, 1},
	}
	for _, tt := range tests {
		err := exitStatus(tt.code, tt.signal, tt.timedOut, 0)
		got := 0
		if err != nil {
			got = err.(*exitCodeError).code
		}
		if got != tt.want {
			t.Errorf("exitStatus(%d, %q, %v): got %d, want %d", tt.code, tt.signal, tt.timedOut, got, tt.want)
		}
	}
}

func TestFormatArgv(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"python3", "-m", "http.server", "8080"}, "python3 -m http.server 8080"},
		{[]string{"/bin/sh", "-c", "make test > /tmp/log"}, "/bin/sh -c 'make test > /tmp/log'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"printf", ""}, "printf ''"},
		{[]string{"env", "A=1", "--opt=x,y:z@host"}, "env A=1 --opt=x,y:z@host"},
	}
	for _, tt := range tests {
		if got := formatArgv(tt.argv); got != tt.want {
			t.Errorf("formatArgv(%q): got %s, want %s", tt.argv, got, tt.want)
		}
	}
}

func TestFormatAge(t *testing.T) {
	tests := []struct {
		ago  time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{59 * time.Second, "59s"},
		{61 * time.Minute, "1h"},
		{47 * time.Hour, "47h"},
		{72 * time.Hour, "3d"},
	}
	for _, tt := range tests {
		if got := formatAge(testNow, testNow.Add(-tt.ago)); got != tt.want {
			t.Errorf("formatAge(%s): got %q, want %q", tt.ago, got, tt.want)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFormatEventDetails(t *testing.T) {
	tests := []struct {
		details map[string]any
		want    string
	}{
		{map[string]any{"size_bytes": 3538569.0}, "size_bytes=3538569"},
		{map[string]any{"pct": 12.5}, "pct=12.5"},
		{map[string]any{"main_exit": map[string]any{"exit_code": 3.0, "signal": "SIGTERM"}}, `main_exit={"exit_code":3,"signal":"SIGTERM"}`},
		{map[string]any{"main_exit": nil, "snapshot_id": "snp_1"}, "main_exit=null snapshot_id=snp_1"},
	}
	for _, tt := range tests {
		line := formatEvent(api.Event{Seq: 1, Type: api.EventMachineStopped, MachineID: "mch_1", Cause: "api", Details: tt.details})
		if !strings.HasSuffix(line, " "+tt.want) {
			t.Errorf("formatEvent(%v) = %q, want it to end with %q", tt.details, line, tt.want)
		}
	}
}
