package e2bcompat

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process"
	"nullspace.dev/nullspace/internal/errdefs/leaktest"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/store"
)

// leakyMachines is fakeMachines whose every call fails while all is set,
// whose AgentEndpoint fails while endpoint is set, and whose machines'
// agent is at agentURL.
type leakyMachines struct {
	*fakeMachines
	all, endpoint *leaktest.Fault
	agentURL      string
}

var _ Machines = (*leakyMachines)(nil)

func (l *leakyMachines) Create(ctx context.Context, team string, req api.CreateMachineRequest) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Create(ctx, team, req)
}
func (l *leakyMachines) ListPage(ctx context.Context, team string, f machine.ListFilter, after store.MachineCursor, limit int) ([]*store.Machine, bool, error) {
	if err := l.all.Err(); err != nil {
		return nil, false, err
	}
	return l.fakeMachines.ListPage(ctx, team, f, after, limit)
}
func (l *leakyMachines) Kill(ctx context.Context, team, id string) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Kill(ctx, team, id)
}
func (l *leakyMachines) Pause(ctx context.Context, team, id string) (*store.Snapshot, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Pause(ctx, team, id)
}
func (l *leakyMachines) Stop(ctx context.Context, team, id string, grace time.Duration) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Stop(ctx, team, id, grace)
}
func (l *leakyMachines) Connect(ctx context.Context, team, id string) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Connect(ctx, team, id)
}
func (l *leakyMachines) SetTimeout(ctx context.Context, team, id string, req api.SetTimeoutRequest) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.SetTimeout(ctx, team, id, req)
}
func (l *leakyMachines) Metrics(ctx context.Context, team, id string) ([]api.MetricSample, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Metrics(ctx, team, id)
}
func (l *leakyMachines) Fork(ctx context.Context, team, id string, count int) (*store.Snapshot, []*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, nil, err
	}
	return l.fakeMachines.Fork(ctx, team, id, count)
}
func (l *leakyMachines) CreateSnapshot(ctx context.Context, team, id, name string) (*store.Snapshot, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.CreateSnapshot(ctx, team, id, name)
}
func (l *leakyMachines) GetSnapshot(ctx context.Context, team, idOrName string) (*store.Snapshot, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.GetSnapshot(ctx, team, idOrName)
}
func (l *leakyMachines) ListSnapshots(ctx context.Context, team string, f machine.SnapshotFilter, p machine.SnapshotPage) ([]*store.Snapshot, bool, error) {
	if err := l.all.Err(); err != nil {
		return nil, false, err
	}
	return l.fakeMachines.ListSnapshots(ctx, team, f, p)
}
func (l *leakyMachines) DeleteSnapshot(ctx context.Context, team, id string, force bool) error {
	return l.all.Or(l.fakeMachines.DeleteSnapshot(ctx, team, id, force))
}
func (l *leakyMachines) Template(ctx context.Context, teamID, name string) (api.Template, error) {
	if err := l.all.Err(); err != nil {
		return api.Template{}, err
	}
	return l.fakeMachines.Template(ctx, teamID, name)
}
func (l *leakyMachines) LineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.LineageHead(ctx, lineageID)
}
func (l *leakyMachines) Wake(ctx context.Context, lineageID string, resume bool, cause string, details map[string]any) (*store.Machine, error) {
	if err := l.all.Err(); err != nil {
		return nil, err
	}
	return l.fakeMachines.Wake(ctx, lineageID, resume, cause, details)
}
func (l *leakyMachines) AgentEndpoint(ctx context.Context, team, id string) (machine.Endpoint, error) {
	if err := l.all.Or(l.endpoint.Err()); err != nil {
		return machine.Endpoint{}, err
	}
	return machine.Endpoint{URL: l.agentURL, Token: "agent-token"}, nil
}

// envdProcedures are the procedures of envd's services, from their
// descriptors (a method added to the spec is walked too), and whether
// each streams.
func envdProcedures() map[string]bool {
	out := map[string]bool{}
	for _, fd := range []protoreflect.FileDescriptor{process.File_process_process_proto, filesystem.File_filesystem_filesystem_proto} {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				out["/"+string(svc.FullName())+"/"+string(m.Name())] = m.IsStreamingClient() || m.IsStreamingServer()
			}
		}
	}
	return out
}

// TestErrorBodiesHoldNoInternalDetail walks every route of the control
// plane and every envd procedure with the manager, a machine's agent
// endpoint or the agent itself failing with internal detail (see
// package leaktest), and with bad bodies: no error body may hold any.
func TestErrorBodiesHoldNoInternalDetail(t *testing.T) {
	all, endpoint, agentDown := &leaktest.Fault{}, &leaktest.Fault{}, &leaktest.Fault{}
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if err := agentDown.Err(); err != nil {
			// Not HTTP: the error reading the answer quotes it.
			if c, buf, herr := http.NewResponseController(w).Hijack(); herr == nil {
				buf.WriteString("NOT-HTTP " + strings.ReplaceAll(err.Error(), "\n", " ") + "\r\n\r\n")
				buf.Flush()
				c.Close()
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}\n")
	}))
	t.Cleanup(agent.Close)
	f := newFake()
	running := f.add("team-a", api.StateRunning)
	paused := f.add("team-a", api.StatePaused)
	lm := &leakyMachines{fakeMachines: f, all: all, endpoint: endpoint, agentURL: agent.URL}
	dataDir := t.TempDir()
	s, err := New(t.Context(), Config{DataDir: dataDir, Domain: "localhost:7701", WakeTimeout: 200 * time.Millisecond},
		lm, keys{"key-a": "team-a"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)

	send := func(t *testing.T, what string, req *http.Request) {
		t.Helper()
		// The call before may have killed or paused them.
		running.State, paused.State = api.StateRunning, api.StatePaused
		ctx, cancel := context.WithTimeout(req.Context(), 3*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			return // a stream still going: no error body to check
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		// A stream's error comes in its body with a 200 status: every
		// body is checked.
		leaktest.Check(t, fmt.Sprintf("%s: %d", what, resp.StatusCode), b, dataDir)
	}
	ids := map[string]string{"unknown": "abcdefabcdefabcdef", "running": sandboxID(running), "paused": sandboxID(paused)}

	control := func(t *testing.T, what string) {
		for pattern := range s.controlRoutes() {
			method, path, ok := strings.Cut(pattern, " ")
			if !ok {
				method, path = "GET", "/no/such/route"
			}
			for idName, id := range ids {
				p := strings.NewReplacer("{id}", id, "{alias}", "a").Replace(path)
				for _, body := range []string{"", "{", "{}", `{"templateID":"base","timeout":10}`} {
					req, _ := http.NewRequest(method, srv.URL+p, strings.NewReader(body))
					req.Header.Set("X-API-KEY", "key-a")
					req.Header.Set("Content-Type", "application/json")
					send(t, fmt.Sprintf("%s %s (%s sandbox, body %q, %s)", method, path, idName, body, what), req)
				}
			}
		}
	}
	envd := func(t *testing.T, what string) {
		for proc, streams := range envdProcedures() {
			for idName, id := range ids {
				for _, body := range []string{"{}", "{", `{"path":"/work/x","process":{"cmd":"true"}}`} {
					ct, b := "application/json", []byte(body)
					if streams {
						ct = "application/connect+json"
						b = binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
						b = append(b, body...)
					}
					req, _ := http.NewRequest("POST", srv.URL+proc, strings.NewReader(string(b)))
					req.Header.Set("Content-Type", ct)
					req.Header.Set("Connect-Protocol-Version", "1")
					req.Header.Set("E2b-Sandbox-Id", id)
					req.Header.Set("X-Access-Token", s.accessToken(machineID(id)))
					send(t, fmt.Sprintf("%s (%s sandbox, body %q, %s)", proc, idName, body, what), req)
				}
			}
		}
		for idName, id := range ids {
			for _, method := range []string{"GET", "POST"} {
				req, _ := http.NewRequest(method, srv.URL+"/files?path=/work/x", strings.NewReader("x"))
				req.Header.Set("Content-Type", "application/octet-stream")
				req.Header.Set("E2b-Sandbox-Id", id)
				req.Header.Set("X-Access-Token", s.accessToken(machineID(id)))
				send(t, fmt.Sprintf("%s /files (%s sandbox, %s)", method, idName, what), req)
			}
		}
	}

	control(t, "no fault")
	envd(t, "no fault")
	for name, err := range leaktest.Faults() {
		for faultName, fault := range map[string]*leaktest.Fault{"manager": all, "agent endpoint": endpoint, "agent": agentDown} {
			fault.Set(err)
			what := faultName + " fails, " + name
			control(t, what)
			envd(t, what)
			fault.Set(nil)
		}
	}
}
