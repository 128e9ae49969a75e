package e2bcompat

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/store"
)

// fakeMachines is the manager for the control plane's translation tests:
// records in memory, and what was asked of it. The real manager is driven
// by e2e TestE2BSDK.
type fakeMachines struct {
	recs     map[string]*store.Machine // by lineage id (one execution each)
	created  []api.CreateMachineRequest
	timeouts []int64
	n        int
	err      error // returned by Create when set
	// templates, when set, are the only templates Create finds.
	templates map[string]bool
	snaps     map[string]*store.Snapshot // by id
}

var _ Machines = (*fakeMachines)(nil)

func newFake() *fakeMachines {
	return &fakeMachines{recs: map[string]*store.Machine{}, snaps: map[string]*store.Snapshot{}}
}

func (f *fakeMachines) add(team, state string) *store.Machine {
	f.n++
	id := fmt.Sprintf("mch_%020x", f.n)
	rec := &store.Machine{ID: id, LineageID: id, TeamID: team, State: state, Template: "base", CPUCount: 2, MemoryMB: 512,
		LineageCreated: time.Unix(int64(1000+f.n), 0), Deadline: time.Now().Add(time.Minute), TimeoutMS: 60000}
	f.recs[id] = rec
	return rec
}

func (f *fakeMachines) Create(ctx context.Context, team string, req api.CreateMachineRequest) (*store.Machine, error) {
	if f.err != nil {
		return nil, f.err
	}
	if req.Template != "" && f.templates != nil && !f.templates[req.Template] {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound, "template "+req.Template+" not found", "")
	}
	f.created = append(f.created, req)
	rec := f.add(team, api.StateRunning)
	rec.PublicPorts, rec.Origin = req.PublicPorts, req.Origin
	return rec, nil
}

func (f *fakeMachines) LineageHead(ctx context.Context, id string) (*store.Machine, error) {
	if rec, ok := f.recs[id]; ok {
		return rec, nil
	}
	return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound, "no", "")
}

func (f *fakeMachines) ListPage(ctx context.Context, team string, fl machine.ListFilter, after store.MachineCursor, limit int) ([]*store.Machine, bool, error) {
	// The store's order: (lineage created, lineage id), either way.
	cmp := func(a, b *store.Machine) int {
		c := a.LineageCreated.Compare(b.LineageCreated)
		if c == 0 {
			c = strings.Compare(a.LineageID, b.LineageID)
		}
		if fl.Desc {
			c = -c
		}
		return c
	}
	pos := &store.Machine{LineageCreated: after.Time, LineageID: after.ID}
	var all []*store.Machine
	for _, r := range f.recs {
		if r.TeamID != team || (fl.State == "" && r.State == api.StateKilled) || (fl.State != "" && r.State != fl.State) {
			continue
		}
		if (!fl.CreatedFrom.IsZero() && r.LineageCreated.Before(fl.CreatedFrom)) ||
			(!fl.CreatedBefore.IsZero() && !r.LineageCreated.Before(fl.CreatedBefore)) {
			continue
		}
		ok := true
		for k, v := range fl.Metadata {
			ok = ok && r.Metadata[k] == v
		}
		if ok && (after.IsZero() || cmp(r, pos) > 0) {
			all = append(all, r)
		}
	}
	slices.SortFunc(all, cmp)
	if len(all) > limit {
		return all[:limit], true, nil
	}
	return all, false, nil
}

func (f *fakeMachines) Kill(ctx context.Context, team, id string) (*store.Machine, error) {
	f.recs[id].State = api.StateKilled
	return f.recs[id], nil
}

func (f *fakeMachines) Pause(ctx context.Context, team, id string) (*store.Snapshot, error) {
	f.recs[id].State = api.StatePaused
	return &store.Snapshot{ID: "snp_1"}, nil
}

func (f *fakeMachines) Stop(ctx context.Context, team, id string, grace time.Duration) (*store.Machine, error) {
	f.recs[id].State = api.StateStopped
	return f.recs[id], nil
}

func (f *fakeMachines) Connect(ctx context.Context, team, id string) (*store.Machine, error) {
	f.recs[id].State = api.StateRunning
	return f.recs[id], nil
}

func (f *fakeMachines) SetTimeout(ctx context.Context, team, id string, req api.SetTimeoutRequest) (*store.Machine, error) {
	f.timeouts = append(f.timeouts, req.TimeoutMS)
	f.recs[id].Deadline = time.Now().Add(time.Duration(req.TimeoutMS) * time.Millisecond)
	return f.recs[id], nil
}

func (f *fakeMachines) Metrics(ctx context.Context, team, id string) ([]api.MetricSample, error) {
	return []api.MetricSample{{Timestamp: time.Unix(5000, 0), CPUCount: 2, MemTotal: 512 << 20}}, nil
}

func (f *fakeMachines) Fork(ctx context.Context, team, id string, count int) (*store.Snapshot, []*store.Machine, error) {
	var out []*store.Machine
	for range count {
		out = append(out, f.add(team, api.StateRunning))
	}
	return &store.Snapshot{ID: "snp_f"}, out, nil
}

func (f *fakeMachines) CreateSnapshot(ctx context.Context, team, id, name string) (*store.Snapshot, error) {
	f.n++
	sn := &store.Snapshot{ID: fmt.Sprintf("snp_%d", f.n), TeamID: team, MachineID: id, Name: name, CreatedAt: time.Now()}
	f.snaps[sn.ID] = sn
	return sn, nil
}

// GetSnapshot finds a team's snapshot by id or name, as the manager does.
func (f *fakeMachines) GetSnapshot(ctx context.Context, team, idOrName string) (*store.Snapshot, error) {
	for _, sn := range f.snaps {
		if sn.TeamID == team && (sn.ID == idOrName || sn.Name != "" && sn.Name == idOrName) {
			return sn, nil
		}
	}
	return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeSnapshotNotFound, "snapshot "+idOrName+" not found", "")
}

func (f *fakeMachines) ListSnapshots(ctx context.Context, team string, fl machine.SnapshotFilter, p machine.SnapshotPage) ([]*store.Snapshot, bool, error) {
	return nil, false, nil
}

func (f *fakeMachines) Template(ctx context.Context, teamID, name string) (api.Template, error) {
	if f.templates[name] {
		return api.Template{Name: name}, nil
	}
	return api.Template{}, errdefs.New(errdefs.ErrNotFound, errdefs.CodeTemplateNotFound, "no template "+name, "")
}

func (f *fakeMachines) DeleteSnapshot(ctx context.Context, team, id string, force bool) error {
	sn, err := f.GetSnapshot(ctx, team, id)
	if err != nil {
		return err
	}
	delete(f.snaps, sn.ID)
	return nil
}

func (f *fakeMachines) Wake(ctx context.Context, lineageID string, resume bool, cause string, details map[string]any) (*store.Machine, error) {
	return f.recs[lineageID], nil
}

func (f *fakeMachines) AgentEndpoint(ctx context.Context, team, id string) (machine.Endpoint, error) {
	return machine.Endpoint{}, fmt.Errorf("no agents here")
}

func (f *fakeMachines) WhileRunning(ctx context.Context, id string) (context.Context, func()) {
	return ctx, func() {}
}

func (f *fakeMachines) Touch(string) {}

type keys map[string]string

func (k keys) Authenticate(ctx context.Context, key string) (*access.Principal, error) {
	if t, ok := k[key]; ok {
		return &access.Principal{TeamID: t, KeyID: "id-" + key, Scopes: access.Scopes{access.MachinesWrite}}, nil
	}
	return nil, errdefs.ErrUnauthenticated
}

func newTestServer(t *testing.T, f *fakeMachines) *httptest.Server {
	t.Helper()
	s, err := New(t.Context(), Config{DataDir: t.TempDir(), Domain: "localhost:7701", WakeTimeout: time.Second},
		f, keys{"key-a": "team-a", "key-b": "team-b"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv
}

// call sends an E2B API call as the SDKs do (X-API-KEY) and decodes the
// answer into out when it is JSON.
func call(t *testing.T, srv *httptest.Server, key, method, path, body string, out any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %q is not JSON: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp
}

func TestErrorsAreE2BBodies(t *testing.T) {
	f := newFake()
	other := f.add("team-b", api.StateRunning)
	killed := f.add("team-a", api.StateKilled)
	srv := newTestServer(t, f)
	tests := []struct {
		name, key, method, path string
		status                  int
		message                 string
	}{
		{"no key", "", "GET", "/v2/sandboxes", 401, "E2B_API_KEY"},
		{"bad key", "nope", "GET", "/v2/sandboxes", 401, "not valid"},
		{"another team's sandbox", "key-a", "GET", "/sandboxes/" + sandboxID(other), 404, "not found"},
		{"a killed sandbox", "key-a", "GET", "/sandboxes/" + sandboxID(killed), 404, "not found"},
		{"an id E2B cannot have", "key-a", "GET", "/sandboxes/mch_" + sandboxID(other), 404, "not found"},
		{"an id with a hyphen", "key-a", "DELETE", "/sandboxes/abc-def", 404, "not found"},
		{"an unsupported call", "key-a", "POST", "/v3/templates", 404, "not supported"},
		{"envd without a sandbox header", "", "POST", "/process.Process/Start", 400, "E2b-Sandbox-Id"},
		{"a bad state filter", "key-a", "GET", "/v2/sandboxes?state=stopped", 400, "running or paused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e errorBody
			resp := call(t, srv, tc.key, tc.method, tc.path, "", &e)
			if resp.StatusCode != tc.status || e.Code != tc.status || !strings.Contains(e.Message, tc.message) {
				t.Errorf("%d %+v; want %d with code %d and a message with %q", resp.StatusCode, e, tc.status, tc.status, tc.message)
			}
		})
	}
	// A retryable refusal says when to retry.
	f.err = errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted, "full", "")
	resp := call(t, srv, "key-a", "POST", "/sandboxes", `{"templateID":"base"}`, nil)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a full host: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestCreateMapsE2BFields(t *testing.T) {
	tests := []struct {
		name, body string
		want       api.CreateMachineRequest
	}{
		{"defaults", `{}`, api.CreateMachineRequest{Template: "base", PublicPorts: true}},
		{"the SDK's defaults", `{"templateID":"base","timeout":300,"secure":true,"allow_internet_access":true}`,
			api.CreateMachineRequest{Template: "base", TimeoutMS: ptr(int64(300000)), PublicPorts: true}},
		{"lifecycle", `{"templateID":"py","autoPause":true,"autoResume":{"enabled":true},"metadata":{"a":"1"},"envVars":{"K":"V"}}`,
			api.CreateMachineRequest{Template: "py", OnTimeout: "pause", AutoResume: true, Metadata: map[string]string{"a": "1"},
				Env: map[string]string{"K": "V"}, PublicPorts: true}},
		{"a bare autoResume", `{"autoResume":true}`, api.CreateMachineRequest{Template: "base", OnTimeout: "pause", AutoResume: true, PublicPorts: true}},
		// lifecycle {onTimeout: {action: 'pause', keepMemory: false}}, as
		// the SDK (2.45.0, 2.51.0) sends it: a filesystem-only pause,
		// which is our stop.
		{"a pause without memory", `{"autoPause":true,"autoPauseMemory":false}`, api.CreateMachineRequest{Template: "base", OnTimeout: "stop", PublicPorts: true}},
		{"a pause without memory, auto-resume off", `{"autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":false}}`,
			api.CreateMachineRequest{Template: "base", OnTimeout: "stop", PublicPorts: true}},
		{"a pause with memory", `{"autoPause":true,"autoPauseMemory":true}`, api.CreateMachineRequest{Template: "base", OnTimeout: "pause", PublicPorts: true}},
		{"private traffic", `{"network":{"allowPublicTraffic":false}}`, api.CreateMachineRequest{Template: "base"}},
		{"from a snapshot", `{"templateID":"snp_0123"}`, api.CreateMachineRequest{SnapshotID: "snp_0123", PublicPorts: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			srv := newTestServer(t, f)
			var sb sandbox
			resp := call(t, srv, "key-a", "POST", "/v2/sandboxes", tc.body, &sb)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("status %d, want 201", resp.StatusCode)
			}
			got, _ := json.Marshal(f.created[0])
			want, _ := json.Marshal(tc.want)
			if string(got) != string(want) {
				t.Errorf("create request %s, want %s", got, want)
			}
			if f.created[0].Origin != store.OriginE2B {
				t.Errorf("create request's origin %q, want %q: the edge answers E2B sandboxes in E2B's shape", f.created[0].Origin, store.OriginE2B)
			}
			if len(sb.SandboxID) != 20 || strings.ContainsAny(sb.SandboxID, "-_") || sb.EnvdAccessToken == "" ||
				sb.EnvdVersion != EnvdVersion || sb.Domain == nil || *sb.Domain != "localhost:7701" || sb.ClientID == "" {
				t.Errorf("answer %+v", sb)
			}
			// A private sandbox's ports open to its traffic access token.
			if private := !tc.want.PublicPorts; private != (sb.TrafficAccessToken != nil && len(*sb.TrafficAccessToken) == 48) {
				t.Errorf("trafficAccessToken %v for a sandbox with public ports %v", sb.TrafficAccessToken, tc.want.PublicPorts)
			}
		})
	}
}

// TestCreateRefusesPauseWithoutMemory: autoPauseMemory false is refused
// with autoResume (traffic cannot wake a sandbox that must boot afresh) and
// without autoPause (it says what the timeout's pause keeps), as E2B's API
// refuses them, with what to do; nothing is created.
func TestCreateRefusesPauseWithoutMemory(t *testing.T) {
	for _, tc := range []struct{ name, body, message, action string }{
		{"with autoResume", `{"autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}}`, "cannot be woken by traffic", "Sandbox.connect()"},
		{"with a bare autoResume", `{"autoPause":true,"autoPauseMemory":false,"autoResume":true}`, "cannot be woken by traffic", "Sandbox.connect()"},
		{"without autoPause", `{"autoPauseMemory":false}`, "only applies when autoPause is true", "keepMemory"},
		{"with autoPause false", `{"autoPause":false,"autoPauseMemory":false}`, "only applies when autoPause is true", "keepMemory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			srv := newTestServer(t, f)
			var e errorBody
			resp := call(t, srv, "key-a", "POST", "/sandboxes", tc.body, &e)
			if resp.StatusCode != 400 || e.Code != 400 || e.ErrorCode != errdefs.CodeInvalidArgument ||
				!strings.Contains(e.Message, tc.message) || !strings.Contains(e.Message, tc.action) {
				t.Errorf("%d %+v; want 400 invalid_argument saying %q and %q", resp.StatusCode, e, tc.message, tc.action)
			}
			if len(f.created) != 0 {
				t.Errorf("a refused create made %+v", f.created)
			}
		})
	}
}

// TestInfoLifecycle: getInfo's lifecycle is E2B's: onTimeout pause for a
// pause with or without memory (a stopped sandbox shows state paused),
// kill otherwise.
func TestInfoLifecycle(t *testing.T) {
	for _, tc := range []struct {
		onTimeout, state  string
		autoResume        bool
		wantOn, wantState string
	}{
		{api.TimeoutDestroy, api.StateRunning, false, "kill", "running"},
		{api.TimeoutPause, api.StatePaused, true, "pause", "paused"},
		{api.TimeoutStop, api.StateRunning, false, "pause", "running"},
		{api.TimeoutStop, api.StateStopped, false, "pause", "paused"},
	} {
		t.Run(tc.onTimeout+"/"+tc.state, func(t *testing.T) {
			f := newFake()
			srv := newTestServer(t, f)
			rec := f.add("team-a", tc.state)
			rec.OnTimeout, rec.AutoResume = tc.onTimeout, tc.autoResume
			var d sandboxDetail
			call(t, srv, "key-a", "GET", "/sandboxes/"+sandboxID(rec), "", &d)
			if d.State != tc.wantState || d.Lifecycle != (lifecycle{AutoResume: tc.autoResume, OnTimeout: tc.wantOn}) {
				t.Errorf("state %q, lifecycle %+v; want %q, onTimeout %q autoResume %v", d.State, d.Lifecycle, tc.wantState, tc.wantOn, tc.autoResume)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestLifecycleStatuses(t *testing.T) {
	f := newFake()
	srv := newTestServer(t, f)
	rec := f.add("team-a", api.StateRunning)
	id := sandboxID(rec)

	var d sandboxDetail
	if resp := call(t, srv, "key-a", "GET", "/sandboxes/"+id, "", &d); resp.StatusCode != 200 || d.State != "running" || d.SandboxID != id {
		t.Fatalf("get: %d %+v", resp.StatusCode, d)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/connect", `{"timeout":10}`, nil); resp.StatusCode != 200 {
		t.Errorf("connect to a running sandbox: %d, want 200", resp.StatusCode)
	}
	if len(f.timeouts) != 0 {
		t.Errorf("connect with a shorter timeout set the lease to %v: it must never shorten it", f.timeouts)
	}
	if resp := call(t, srv, "key-a", "POST", "/v2/sandboxes/"+id+"/connect", `{"timeout":600}`, nil); resp.StatusCode != 200 || len(f.timeouts) != 1 || f.timeouts[0] != 600000 {
		t.Errorf("connect with a longer timeout: %d, lease set to %v; want 200 and 600000", resp.StatusCode, f.timeouts)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/pause", "", nil); resp.StatusCode != 204 {
		t.Errorf("pause: %d, want 204", resp.StatusCode)
	}
	var e errorBody
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/pause", "", &e); resp.StatusCode != 409 || e.Code != 409 {
		t.Errorf("pause of a paused sandbox: %d %+v, want 409", resp.StatusCode, e)
	}
	if call(t, srv, "key-a", "GET", "/sandboxes/"+id, "", &d); d.State != "paused" {
		t.Errorf("state %q after pause, want paused", d.State)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/connect", "", nil); resp.StatusCode != 201 {
		t.Errorf("connect to a paused sandbox: %d, want 201 (resumed)", resp.StatusCode)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/resume", "", nil); resp.StatusCode != 409 {
		t.Errorf("resume of a running sandbox: %d, want 409", resp.StatusCode)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/pause", `{"memory":false}`, nil); resp.StatusCode != 204 || rec.State != api.StateStopped {
		t.Errorf("pause without memory: %d, state %s; want 204 and a stopped machine", resp.StatusCode, rec.State)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/timeout", `{"timeout":30}`, nil); resp.StatusCode != 204 {
		t.Errorf("timeout: %d, want 204", resp.StatusCode)
	}
	var metrics []sandboxMetric
	if resp := call(t, srv, "key-a", "GET", "/sandboxes/"+id+"/metrics", "", &metrics); resp.StatusCode != 200 || len(metrics) != 1 || metrics[0].TimestampUnix != 5000 {
		t.Errorf("metrics: %d %+v", resp.StatusCode, metrics)
	}
	var forks []forkResult
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+id+"/fork", `{"count":2,"timeout":60}`, &forks); resp.StatusCode != 200 || len(forks) != 2 || forks[0].Sandbox == nil {
		t.Errorf("fork: %d %+v", resp.StatusCode, forks)
	}
	if resp := call(t, srv, "key-a", "DELETE", "/sandboxes/"+id, "", nil); resp.StatusCode != 204 {
		t.Errorf("kill: %d, want 204", resp.StatusCode)
	}
	if resp := call(t, srv, "key-a", "DELETE", "/sandboxes/"+id, "", nil); resp.StatusCode != 404 {
		t.Errorf("kill of a killed sandbox: %d, want 404 (the SDK answers false)", resp.StatusCode)
	}
}

func TestListPages(t *testing.T) {
	f := newFake()
	srv := newTestServer(t, f)
	want := map[string]bool{}
	for i := range 5 {
		rec := f.add("team-a", api.StateRunning)
		rec.Metadata = map[string]string{"group": "g"}
		if i == 4 {
			rec.State = api.StatePaused
		}
		want[sandboxID(rec)] = true
	}
	f.add("team-a", api.StateRunning) // not in the group
	f.add("team-b", api.StateRunning) // another team's

	seen := map[string]bool{}
	token, pages := "", 0
	for {
		var page []listedSandbox
		q := "/v2/sandboxes?limit=2&metadata=group%3Dg"
		if token != "" {
			q += "&nextToken=" + token
		}
		resp := call(t, srv, "key-a", "GET", q, "", &page)
		if resp.StatusCode != 200 || len(page) > 2 {
			t.Fatalf("page %d: %d, %d items", pages, resp.StatusCode, len(page))
		}
		for _, s := range page {
			seen[s.SandboxID] = true
		}
		pages++
		if token = resp.Header.Get("X-Next-Token"); token == "" {
			break
		}
	}
	if len(seen) != 5 || pages != 3 {
		t.Errorf("saw %d sandboxes in %d pages, want the group's 5 in 3", len(seen), pages)
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("sandbox %s not listed", id)
		}
	}
	var paused []listedSandbox
	call(t, srv, "key-a", "GET", "/v2/sandboxes?state=paused", "", &paused)
	if len(paused) != 1 || paused[0].State != "paused" {
		t.Errorf("state=paused: %+v", paused)
	}
	var both []listedSandbox
	call(t, srv, "key-a", "GET", "/v2/sandboxes?state=running,paused&metadata=group%3Dg", "", &both)
	if len(both) != 5 {
		t.Errorf("state=running,paused: %d sandboxes, want 5", len(both))
	}
	var e errorBody
	if resp := call(t, srv, "key-b", "GET", "/v2/sandboxes?nextToken="+token+"x", "", &e); resp.StatusCode != 400 {
		t.Errorf("a token this server did not make: %d %+v, want 400", resp.StatusCode, e)
	}
}

// TestListOrder: E2B lists newest first by start time unless order=asc,
// filters by startedAfter (inclusive; startedBefore, exclusive, is ours),
// and pages without skips or repeats in either order.
func TestListOrder(t *testing.T) {
	f := newFake()
	srv := newTestServer(t, f)
	var ids []string // oldest first: started at 1001s, 1002s, ...
	for range 5 {
		ids = append(ids, sandboxID(f.add("team-a", api.StateRunning)))
	}
	f.add("team-b", api.StateRunning) // another team's
	newestFirst := slices.Clone(ids)
	slices.Reverse(newestFirst)

	at := func(i int) string { return time.Unix(int64(1000+i), 0).UTC().Format(time.RFC3339) }
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", newestFirst},
		{"&order=desc", newestFirst},
		{"&order=asc", ids},
		{"&startedAfter=" + at(3), []string{ids[4], ids[3], ids[2]}},
		{"&startedAfter=" + at(3) + "&order=asc", []string{ids[2], ids[3], ids[4]}},
		{"&startedAfter=" + at(2) + "&startedBefore=" + at(4), []string{ids[2], ids[1]}},
		{"&startedBefore=" + strings.Replace(time.Unix(1003, 0).In(time.FixedZone("", 3600)).Format(time.RFC3339), "+", "%2B", 1), []string{ids[1], ids[0]}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var got []string
			token := ""
			for {
				path := "/v2/sandboxes?limit=2" + tc.query
				if token != "" {
					path += "&nextToken=" + token
				}
				var page []listedSandbox
				resp := call(t, srv, "key-a", "GET", path, "", &page)
				if resp.StatusCode != 200 || len(page) > 2 {
					t.Fatalf("%s: %d, %d items", path, resp.StatusCode, len(page))
				}
				for _, s := range page {
					got = append(got, s.SandboxID)
				}
				if token = resp.Header.Get("X-Next-Token"); token == "" {
					break
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	// A sandbox started while paging newest first is newer than the
	// position: it is not listed, and nothing is listed twice.
	var first []listedSandbox
	resp := call(t, srv, "key-a", "GET", "/v2/sandboxes?limit=2", "", &first)
	late := sandboxID(f.add("team-a", api.StateRunning))
	var rest []listedSandbox
	call(t, srv, "key-a", "GET", "/v2/sandboxes?limit=10&nextToken="+resp.Header.Get("X-Next-Token"), "", &rest)
	if len(first) != 2 || len(rest) != 3 || rest[0].SandboxID != ids[2] {
		t.Errorf("pages across a new sandbox: %d then %d (first %v), want 2 then 3 from %s", len(first), len(rest), rest, ids[2])
	}
	for _, s := range rest {
		if s.SandboxID == late {
			t.Errorf("the sandbox started after the first page is listed on the second")
		}
	}

	// v1 lists newest first too.
	var v1 []listedSandbox
	call(t, srv, "key-a", "GET", "/sandboxes?order=asc", "", &v1)
	if len(v1) != 6 || v1[0].SandboxID != late {
		t.Errorf("v1: %d sandboxes, first %+v; want 6, newest (%s) first", len(v1), v1, late)
	}

	// Bad values, and a token of another order, answer 400 in E2B's shape.
	for _, path := range []string{
		"/v2/sandboxes?order=newest",
		"/v2/sandboxes?startedAfter=yesterday",
		"/v2/sandboxes?startedBefore=2026-01-01",
		"/v2/sandboxes?order=asc&nextToken=" + resp.Header.Get("X-Next-Token"),
	} {
		var e errorBody
		if resp := call(t, srv, "key-a", "GET", path, "", &e); resp.StatusCode != 400 || e.Code != 400 || e.Message == "" {
			t.Errorf("%s: %d %+v, want 400 with a message", path, resp.StatusCode, e)
		}
	}
}

func TestIDs(t *testing.T) {
	for in, want := range map[string]string{
		"0123456789abcdef0123":     "mch_0123456789abcdef0123",
		"0123456789ABCDEF0123":     "",
		"mch_0123456789abcdef0123": "",
		"0123-456789abcdef0123":    "",
		"":                         "",
		"0123456789abcdef012g":     "",
	} {
		if got := machineID(in); got != want {
			t.Errorf("machineID(%q) = %q, want %q", in, got, want)
		}
	}
	for host, want := range map[string]string{
		"49983-0123456789abcdef0123.localhost:7703": "0123456789abcdef0123",
		"8000-0123456789abcdef0123.localhost":       "",
		"127.0.0.1:7703":                            "",
	} {
		r := httptest.NewRequest("GET", "/health", nil)
		r.Host = host
		if got := sandboxOf(r); got != want {
			t.Errorf("sandboxOf(host %q) = %q, want %q", host, got, want)
		}
	}
}

// TestNamedSnapshots: a snapshot's name is stored (as E2B takes it:
// trimmed, lower-case) and is its names; listSnapshots filters by it;
// Sandbox.create(name) starts from it when no template has the name;
// deleteSnapshot(name) deletes it.
func TestNamedSnapshots(t *testing.T) {
	f := newFake()
	f.templates = map[string]bool{"base": true, "web": true}
	srv := newTestServer(t, f)
	a, b := f.add("team-a", api.StateRunning), f.add("team-a", api.StateRunning)

	var named, unnamed snapshotInfo
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+sandboxID(a)+"/snapshots", `{"name":" My-Snap "}`, &named); resp.StatusCode != 201 {
		t.Fatalf("create a named snapshot: %d", resp.StatusCode)
	}
	if sn := f.snaps[named.SnapshotID]; sn == nil || sn.Name != "my-snap" || !slices.Equal(named.Names, []string{"my-snap"}) {
		t.Fatalf("named snapshot %+v stored as %+v, want the name my-snap stored and as its names", named, sn)
	}
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+sandboxID(a)+"/snapshots", `{}`, &unnamed); resp.StatusCode != 201 ||
		f.snaps[unnamed.SnapshotID].Name != "" || !slices.Equal(unnamed.Names, []string{unnamed.SnapshotID}) {
		t.Fatalf("unnamed snapshot: %d %+v", resp.StatusCode, unnamed)
	}

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?name=my-snap", []string{named.SnapshotID}},
		{"?name=MY-SNAP", []string{named.SnapshotID}},
		{"?name=" + unnamed.SnapshotID, []string{unnamed.SnapshotID}},
		{"?name=nope", []string{}},
		{"?name=my-snap&sandboxID=" + sandboxID(a), []string{named.SnapshotID}},
		{"?name=my-snap&sandboxID=" + sandboxID(b), []string{}},
	} {
		var got []snapshotInfo
		if resp := call(t, srv, "key-a", "GET", "/snapshots"+tc.query, "", &got); resp.StatusCode != 200 {
			t.Fatalf("list %s: %d", tc.query, resp.StatusCode)
		}
		ids := []string{}
		for _, i := range got {
			ids = append(ids, i.SnapshotID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("list %s: %v, want %v", tc.query, ids, tc.want)
		}
	}
	// Another team's name is not this team's.
	var other []snapshotInfo
	if call(t, srv, "key-b", "GET", "/snapshots?name=my-snap", "", &other); len(other) != 0 {
		t.Errorf("team b lists team a's snapshot by name: %v", other)
	}

	// Sandbox.create(name): a template of the name first, then the
	// team's snapshot of that name.
	for _, tc := range []struct {
		template string
		status   int
		want     api.CreateMachineRequest
	}{
		{"my-snap", 201, api.CreateMachineRequest{SnapshotID: named.SnapshotID, PublicPorts: true}},
		{"web", 201, api.CreateMachineRequest{Template: "web", PublicPorts: true}},
		{"nope", 404, api.CreateMachineRequest{}},
	} {
		f.created = nil
		resp := call(t, srv, "key-a", "POST", "/sandboxes", `{"templateID":"`+tc.template+`"}`, nil)
		if resp.StatusCode != tc.status {
			t.Fatalf("create from %s: %d, want %d", tc.template, resp.StatusCode, tc.status)
		}
		if tc.status != 201 {
			continue
		}
		got, _ := json.Marshal(f.created[len(f.created)-1])
		want, _ := json.Marshal(tc.want)
		if string(got) != string(want) {
			t.Errorf("create from %s: %s, want %s", tc.template, got, want)
		}
	}

	// deleteSnapshot(name) deletes it; then the name is not found (the SDK's false).
	if resp := call(t, srv, "key-b", "DELETE", "/templates/my-snap", "", nil); resp.StatusCode != 404 || f.snaps[named.SnapshotID] == nil {
		t.Fatalf("team b deletes team a's snapshot by name: %d", resp.StatusCode)
	}
	if resp := call(t, srv, "key-a", "DELETE", "/templates/my-snap", "", nil); resp.StatusCode != 204 || f.snaps[named.SnapshotID] != nil {
		t.Fatalf("delete by name: %d, snapshot left: %v", resp.StatusCode, f.snaps[named.SnapshotID] != nil)
	}
	var e errorBody
	if resp := call(t, srv, "key-a", "DELETE", "/templates/my-snap", "", &e); resp.StatusCode != 404 || e.ErrorCode != errdefs.CodeSnapshotNotFound {
		t.Fatalf("delete a deleted name: %d %+v, want 404 snapshot_not_found", resp.StatusCode, e)
	}
	// A template's name deletes no snapshot of that name (Template.delete).
	var web snapshotInfo
	if resp := call(t, srv, "key-a", "POST", "/sandboxes/"+sandboxID(a)+"/snapshots", `{"name":"web"}`, &web); resp.StatusCode != 201 {
		t.Fatalf("create a snapshot named like a template: %d", resp.StatusCode)
	}
	if resp := call(t, srv, "key-a", "DELETE", "/templates/web", "", nil); resp.StatusCode != 404 || f.snaps[web.SnapshotID] == nil {
		t.Fatalf("delete of template web: %d, snapshot web deleted: %v", resp.StatusCode, f.snaps[web.SnapshotID] == nil)
	}
}

// TestEnvdByHost: a call on the host 49983-{sandbox} (the edge's, and the
// file URLs the SDKs sign with E2B_DOMAIN alone) reaches that sandbox's
// envd with no E2b-Sandbox-Id header.
func TestEnvdByHost(t *testing.T) {
	f := newFake()
	rec := f.add("team-a", api.StateRunning)
	srv := newTestServer(t, f)
	req, _ := http.NewRequest("GET", srv.URL+"/files?path=/etc/hostname", nil)
	req.Host = "49983-" + sandboxID(rec) + ".localhost:7701"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	// No token: the sandbox was found, and the call refused for that.
	if resp.StatusCode != 401 || !strings.Contains(e.Message, sandboxID(rec)) {
		t.Fatalf("a call by host: %d %+v, want 401 naming sandbox %s", resp.StatusCode, e, sandboxID(rec))
	}
}
