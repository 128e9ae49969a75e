package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs/leaktest"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
	"nullspace.dev/nullspace/internal/telemetry"
)

// Error bodies never carry internal detail (issue 24): every route of
// Routes() is called with unknown and real ids, bad and plausible bodies,
// and with each dependency of the API (the store, the runtime, templates,
// the machine's agent, SSH keys, authentication) failing with errors whose
// text is everything that must stay in the server log: host paths, SQL, a
// goroutine stack and a runsc command line, bare and under each error
// class. No error body may hold any of it.

// checkNoLeak fails if an error body holds internal detail or the
// server's data directory.
func checkNoLeak(t *testing.T, what string, status int, body []byte, dataDir string) {
	t.Helper()
	if status >= 400 {
		leaktest.Check(t, fmt.Sprintf("%s: %d", what, status), body, dataDir)
	}
}

// leakEnv is an API whose every dependency can be made to fail.
type leakEnv struct {
	base    string
	dataDir string
	db      *sqlstore.DB
	// faults by dependency: store, templates, runtime, agent, ssh, auth.
	faults map[string]*leaktest.Fault
	seq    atomic.Int64
}

var leakTargets = []string{"store", "templates", "runtime", "agent", "ssh", "auth"}

func newLeakEnv(t *testing.T) *leakEnv {
	t.Helper()
	env := &leakEnv{faults: map[string]*leaktest.Fault{}}
	for _, name := range leakTargets {
		env.faults[name] = &leaktest.Fault{}
	}
	var agentIP netip.Addr
	var ln net.Listener
	for range 20 {
		agentIP = netip.AddrFrom4([4]byte{127, 92, byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(agentIP, machine.AgentPort).String()); err == nil {
			break
		}
	}
	if ln == nil {
		t.Fatal("no loopback address free for the stub agent")
	}
	agentFault := env.faults["agent"]
	agent := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if err := agentFault.Err(); err != nil {
			// Not HTTP: the error reading the answer quotes it. (What
			// the agent answers in HTTP is the machine's to say, and
			// the agent's own errors go through errdefs.Classify.)
			c, buf, herr := http.NewResponseController(w).Hijack()
			if herr == nil {
				buf.WriteString("NOT-HTTP " + strings.ReplaceAll(err.Error(), "\n", " ") + "\r\n\r\n")
				buf.Flush()
				c.Close()
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}\n")
	})}}
	agent.Start()
	t.Cleanup(agent.Close)

	env.dataDir = t.TempDir()
	db, err := sqlstore.Open(context.Background(), filepath.Join(env.dataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env.db = db
	fs := &faultStore{Store: db, f: env.faults["store"]}
	logger := slog.New(slog.DiscardHandler)
	rootfs := filepath.Join(env.dataDir, "rootfs")
	tmpl := faultTemplates{f: env.faults["templates"], rootfs: rootfs}
	rt := env.faults["runtime"]
	mgr, err := machine.New(machine.Config{DataDir: env.dataDir, AgentDir: env.dataDir, MaxCPU: 2, MaxMemoryMB: 1024}, fs,
		faultDriver{f: rt}, faultNetwork{f: rt, stubNetwork: stubNetwork{agentIP: agentIP}}, tmpl, logger)
	if err != nil {
		t.Fatal(err)
	}
	s := New(mgr, tmpl, tmpl, faultAuth{f: env.faults["auth"]}, events.New(fs, logger), telemetry.New(fs), nil, logger, "test").
		WithSSH(faultSSH{f: env.faults["ssh"]}).WithAccess(access.New(fs))
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	env.base = srv.URL
	return env
}

// runningMachine records a new running machine (its sandbox a stand-in,
// its agent the stub) and returns its id; the route under test may kill,
// pause or break it, so every call gets its own.
func (env *leakEnv) runningMachine(t *testing.T) string {
	t.Helper()
	id := fmt.Sprintf("mch_%020d", 1000+env.seq.Add(1))
	now := time.Now()
	if err := env.db.CreateMachine(context.Background(), &store.Machine{ID: id, LineageID: id, TeamID: testTeam,
		State: api.StateRunning, Template: "base", CPUCount: 1, MemoryMB: 128, ContainerID: "ctr_" + id, AgentToken: "agent-token",
		CreatedAt: now, StartedAt: now, Persistence: "persistent"}, 16); err != nil {
		t.Fatal(err)
	}
	return id
}

// forget deletes every machine record, the one runningMachine made and
// any the call made (a fork's children), so that slots stay free.
func (env *leakEnv) forget(string) {
	ms, _ := env.db.ListMachines(context.Background(), store.MachineFilter{})
	for _, m := range ms {
		env.db.DeleteMachine(context.Background(), m.ID)
	}
}

// leakBodies are plausible bodies of the routes that take one, so that a
// call gets past its checks to the dependency that fails; a route not
// listed (a new one) is sent {}.
var leakBodies = map[string]string{
	"POST /v1/machines":                            `{"template":"base"}`,
	"POST /v1/machines/{id}/timeout":               `{"timeout_ms":60000}`,
	"POST /v1/machines/{id}/stop":                  `{}`,
	"POST /v1/machines/{id}/urls":                  `{"port":8080}`,
	"POST /v1/machines/{id}/snapshots":             `{"name":"s1"}`,
	"POST /v1/machines/{id}/fork":                  `{"count":1}`,
	"POST /v1/machines/{id}/ssh-token":             `{}`,
	"POST /v1/ssh-keys":                            `{"public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGkUJvNHHbLGJZ7Ug1VYbJvQbG2iwRDBXgnljmYmK2Ex x"}`,
	"POST /v1/volumes":                             `{"name":"v1"}`,
	"POST /v1/machines/{id}/commands":              `{"cmd":"true"}`,
	"POST /v1/machines/{id}/commands/{pid}/stdin":  `{"data":"x"}`,
	"POST /v1/machines/{id}/commands/{pid}/signal": `{"signal":"TERM"}`,
	"POST /v1/machines/{id}/commands/{pid}/resize": `{"cols":80,"rows":24}`,
	"PUT /v1/machines/{id}/files":                  "file content",
	"POST /v1/machines/{id}/files/mkdir":           `{"path":"/work/d"}`,
	"POST /v1/machines/{id}/files/rename":          `{"from":"/work/a","to":"/work/b"}`,
	"POST /v1/templates":                           `{"name":"t1","from_template":"base"}`,
}

// leakQuery is sent with every call: the files routes' path, and short
// waits for the routes that wait.
const leakQuery = "?path=/work/missing&timeout_ms=50"

// call sends one request with a bounded wait; a call that does not
// answer in time (a stream) has no error body to check.
func (env *leakEnv) call(t *testing.T, rt Route, id, body string) (int, []byte, bool) {
	t.Helper()
	path := rt.Path
	for name, v := range map[string]string{"{id}": id, "{pid}": "12", "{snapshot_id}": "snp_00000000000000000001",
		"{name}": "t1", "{watch_id}": "w1"} {
		path = strings.ReplaceAll(path, name, v)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, rt.Method, env.base+path+leakQuery, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, false
	}
	return resp.StatusCode, b, true
}

// TestErrorBodiesHoldNoInternalDetail walks every route with every failing
// dependency.
func TestErrorBodiesHoldNoInternalDetail(t *testing.T) {
	routes := (&Server{}).Routes()
	t.Run("bad input", func(t *testing.T) {
		t.Parallel()
		env := newLeakEnv(t)
		for _, rt := range routes {
			for _, body := range []string{"", "{", `{"unknown":1}`, `[]`, leakBodies[rt.Method+" "+rt.Path]} {
				for _, known := range []bool{false, true} {
					id := "mch_00000000000000000999"
					if known {
						id = env.runningMachine(t)
					}
					if status, b, ok := env.call(t, rt, id, body); ok {
						checkNoLeak(t, fmt.Sprintf("%s %s with body %q", rt.Method, rt.Path, body), status, b, env.dataDir)
					}
					env.forget(id)
				}
			}
		}
	})
	for _, target := range leakTargets {
		t.Run(target+" fails", func(t *testing.T) {
			t.Parallel()
			env := newLeakEnv(t)
			f := env.faults[target]
			reached := 0
			for name, err := range leaktest.Faults() {
				for _, rt := range routes {
					body := leakBodies[rt.Method+" "+rt.Path]
					if body == "" {
						body = "{}"
					}
					for _, known := range []bool{false, true} {
						id := "mch_00000000000000000999"
						if known {
							id = env.runningMachine(t)
						}
						f.Set(err)
						status, b, ok := env.call(t, rt, id, body)
						f.Set(nil)
						if ok {
							checkNoLeak(t, fmt.Sprintf("%s %s (%s %s)", rt.Method, rt.Path, target, name), status, b, env.dataDir)
							if status >= 500 {
								reached++
							}
						}
						env.forget(id)
					}
				}
			}
			// The fault must have reached the API at all, or this proves
			// nothing.
			if reached == 0 {
				t.Errorf("no call failed with %s failing: the fault is not reached", target)
			}
		})
	}
}

// faultStore is the store with every method failing while f is set.
type faultStore struct {
	store.Store
	f *leaktest.Fault
}

func (fs *faultStore) fault() error { return fs.f.Err() }

// faultDriver is stubDriver failing while f is set.
type faultDriver struct{ f *leaktest.Fault }

var _ runtime.Driver = faultDriver{}

func (d faultDriver) Start(ctx context.Context, s runtime.Spec) error {
	return d.f.Or(stubDriver{}.Start(ctx, s))
}
func (d faultDriver) Create(ctx context.Context, s runtime.Spec) error {
	return d.f.Or(stubDriver{}.Create(ctx, s))
}
func (d faultDriver) Delete(context.Context, string, string) error { return d.f.Err() }
func (d faultDriver) Freeze(context.Context, string) error         { return d.f.Or(errNoSandboxes) }
func (d faultDriver) Thaw(context.Context, string) error           { return d.f.Or(errNoSandboxes) }
func (d faultDriver) Checkpoint(context.Context, string, string) error {
	return d.f.Or(errNoSandboxes)
}
func (d faultDriver) Restore(context.Context, runtime.Spec, string) error {
	return d.f.Or(errNoSandboxes)
}
func (d faultDriver) List(ctx context.Context) ([]string, error) {
	if err := d.f.Err(); err != nil {
		return nil, err
	}
	return nil, nil
}
func (d faultDriver) State(ctx context.Context, id string) (runtime.State, error) {
	if err := d.f.Err(); err != nil {
		return runtime.State{}, err
	}
	return stubDriver{}.State(ctx, id)
}

// faultNetwork is stubNetwork failing while f is set.
type faultNetwork struct {
	f *leaktest.Fault
	stubNetwork
}

func (n faultNetwork) Setup(ctx context.Context, slot int) (machine.NetInfo, error) {
	if err := n.f.Err(); err != nil {
		return machine.NetInfo{}, err
	}
	return n.stubNetwork.Setup(ctx, slot)
}
func (n faultNetwork) Teardown(context.Context, int) error { return n.f.Err() }
func (n faultNetwork) SetInternet(netip.Addr, bool) error  { return n.f.Err() }
func (n faultNetwork) Existing() ([]int, error)            { return nil, n.f.Err() }
func (n faultNetwork) GuestIP(slot int) (netip.Addr, error) {
	if err := n.f.Err(); err != nil {
		return netip.Addr{}, err
	}
	return n.agentIP, nil
}

// faultTemplates has one ready template, base, and fails while f is set.
type faultTemplates struct {
	f      *leaktest.Fault
	rootfs string
}

func (tp faultTemplates) Get(_ context.Context, name string) (api.Template, error) {
	if err := tp.f.Err(); err != nil {
		return api.Template{}, err
	}
	if name != "base" {
		return api.Template{}, templateNotFound
	}
	return api.Template{Name: "base", State: api.TemplateReady, Digest: "sha256:0"}, nil
}
func (tp faultTemplates) RootfsDir(string) (string, error) { return tp.rootfs, tp.f.Err() }
func (tp faultTemplates) Digest(context.Context, string) (string, error) {
	return "sha256:0", tp.f.Err()
}
func (tp faultTemplates) RootfsByDigest(context.Context, string, string) (string, error) {
	return tp.rootfs, tp.f.Err()
}
func (tp faultTemplates) Upload(context.Context, string, string) error { return tp.f.Err() }
func (tp faultTemplates) List(context.Context) ([]api.Template, error) { return nil, tp.f.Err() }
func (tp faultTemplates) CheckDelete(context.Context, string) error {
	return tp.f.Or(templateNotFound)
}
func (tp faultTemplates) Delete(context.Context, string) error { return tp.f.Or(templateNotFound) }
func (tp faultTemplates) Build(ctx context.Context, _ string, req api.BuildTemplateRequest) (api.Template, error) {
	return api.Template{}, tp.f.Or(errNoSandboxes)
}
func (tp faultTemplates) BuildUpload(_ context.Context, _ string, _ api.BuildTemplateRequest, tarball io.Reader) (api.Template, error) {
	io.Copy(io.Discard, tarball)
	return api.Template{}, tp.f.Or(errNoSandboxes)
}

// faultSSH is noSSH failing with f while it is set.
type faultSSH struct{ f *leaktest.Fault }

func (s faultSSH) Add(context.Context, string, api.AddSSHKeyRequest) (api.SSHKey, error) {
	return api.SSHKey{}, s.f.Or(sshOff)
}
func (s faultSSH) List(context.Context, string) ([]api.SSHKey, error) { return nil, s.f.Or(sshOff) }
func (s faultSSH) Delete(context.Context, string, string) error       { return s.f.Or(sshOff) }
func (s faultSSH) Token(context.Context, string, string, time.Duration) (api.SSHToken, error) {
	return api.SSHToken{}, s.f.Or(sshOff)
}

// faultAuth is keyAuth failing with f while it is set.
type faultAuth struct{ f *leaktest.Fault }

func (a faultAuth) Authenticate(ctx context.Context, key string) (*access.Principal, error) {
	if err := a.f.Err(); err != nil {
		return nil, err
	}
	return keyAuth{}.Authenticate(ctx, key)
}
func (fs *faultStore) CreateTeam(ctx context.Context, t store.Team) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateTeam(ctx, t)
}

func (fs *faultStore) CountTeams(ctx context.Context) (int, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.CountTeams(ctx)
}

func (fs *faultStore) AddAPIKey(ctx context.Context, k store.APIKey) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.AddAPIKey(ctx, k)
}

func (fs *faultStore) GetTeam(ctx context.Context, id string) (*store.Team, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.GetTeam(ctx, id)
}

func (fs *faultStore) ListTeams(ctx context.Context) ([]store.Team, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListTeams(ctx)
}

func (fs *faultStore) DeleteTeam(ctx context.Context, id string, now time.Time) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.DeleteTeam(ctx, id, now)
}

func (fs *faultStore) ListAPIKeys(ctx context.Context, teamID string) ([]store.APIKey, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListAPIKeys(ctx, teamID)
}

func (fs *faultStore) GetAPIKey(ctx context.Context, id string) (*store.APIKey, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.GetAPIKey(ctx, id)
}

func (fs *faultStore) RevokeAPIKey(ctx context.Context, id string, now time.Time) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.RevokeAPIKey(ctx, id, now)
}

func (fs *faultStore) GetQuota(ctx context.Context, teamID string) (store.Quota, error) {
	if err := fs.fault(); err != nil {
		return store.Quota{}, err
	}
	return fs.Store.GetQuota(ctx, teamID)
}

func (fs *faultStore) SetQuota(ctx context.Context, teamID string, q store.Quota) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.SetQuota(ctx, teamID, q)
}

func (fs *faultStore) TeamUsage(ctx context.Context, teamID string, since time.Time) (store.TeamUsage, error) {
	if err := fs.fault(); err != nil {
		return store.TeamUsage{}, err
	}
	return fs.Store.TeamUsage(ctx, teamID, since)
}

func (fs *faultStore) CreateMachine(ctx context.Context, m *store.Machine, slots int) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateMachine(ctx, m, slots)
}

func (fs *faultStore) CreateMachineFromSpare(ctx context.Context, m *store.Machine, sp store.Spare) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateMachineFromSpare(ctx, m, sp)
}

func (fs *faultStore) UpdateMachine(ctx context.Context, m *store.Machine) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.UpdateMachine(ctx, m)
}

func (fs *faultStore) SetMain(ctx context.Context, id string, pid int) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.SetMain(ctx, id, pid)
}

func (fs *faultStore) SetMainExit(ctx context.Context, id string, pid int, exit *api.MainExit) (bool, error) {
	if err := fs.fault(); err != nil {
		return false, err
	}
	return fs.Store.SetMainExit(ctx, id, pid, exit)
}

func (fs *faultStore) DeleteMachine(ctx context.Context, id string) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.DeleteMachine(ctx, id)
}

func (fs *faultStore) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.GetMachine(ctx, id)
}

func (fs *faultStore) LineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.LineageHead(ctx, lineageID)
}

func (fs *faultStore) ListMachines(ctx context.Context, f store.MachineFilter) ([]*store.Machine, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListMachines(ctx, f)
}

func (fs *faultStore) ListMachinesPage(ctx context.Context, q store.MachinePageQuery) ([]*store.Machine, bool, error) {
	if err := fs.fault(); err != nil {
		return nil, false, err
	}
	return fs.Store.ListMachinesPage(ctx, q)
}

func (fs *faultStore) LineageSummaries(ctx context.Context, lineageIDs []string) (map[string]store.LineageSummary, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.LineageSummaries(ctx, lineageIDs)
}

func (fs *faultStore) AssignSlot(ctx context.Context, m *store.Machine, slots int) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.AssignSlot(ctx, m, slots)
}

func (fs *faultStore) CountMachines(ctx context.Context) (map[string]int, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.CountMachines(ctx)
}

func (fs *faultStore) CommittedMemoryMB(ctx context.Context) (int64, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.CommittedMemoryMB(ctx)
}

func (fs *faultStore) PruneEnded(ctx context.Context, before time.Time) (int64, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.PruneEnded(ctx, before)
}

func (fs *faultStore) CreateSnapshot(ctx context.Context, sn *store.Snapshot) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateSnapshot(ctx, sn)
}

func (fs *faultStore) CommitSnapshot(ctx context.Context, sn *store.Snapshot, machines ...*store.Machine) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CommitSnapshot(ctx, sn, machines...)
}

func (fs *faultStore) GetSnapshot(ctx context.Context, id string) (*store.Snapshot, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.GetSnapshot(ctx, id)
}

func (fs *faultStore) GetSnapshotByName(ctx context.Context, teamID, name string) (*store.Snapshot, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.GetSnapshotByName(ctx, teamID, name)
}

func (fs *faultStore) ListSnapshots(ctx context.Context, f store.SnapshotFilter) ([]*store.Snapshot, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListSnapshots(ctx, f)
}

func (fs *faultStore) ListSnapshotsPage(ctx context.Context, q store.SnapshotPageQuery) ([]*store.Snapshot, bool, error) {
	if err := fs.fault(); err != nil {
		return nil, false, err
	}
	return fs.Store.ListSnapshotsPage(ctx, q)
}

func (fs *faultStore) CountRestoredFrom(ctx context.Context, snapshotIDs, states []string) (map[string]int, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.CountRestoredFrom(ctx, snapshotIDs, states)
}

func (fs *faultStore) DeleteSnapshot(ctx context.Context, id string) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.DeleteSnapshot(ctx, id)
}

func (fs *faultStore) SetSnapshotPinned(ctx context.Context, id string, pinned bool) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.SetSnapshotPinned(ctx, id, pinned)
}

func (fs *faultStore) MarkPruning(ctx context.Context, id string) (bool, error) {
	if err := fs.fault(); err != nil {
		return false, err
	}
	return fs.Store.MarkPruning(ctx, id)
}

func (fs *faultStore) MarkPruned(ctx context.Context, id string) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.MarkPruned(ctx, id)
}

func (fs *faultStore) MarkDurable(ctx context.Context, id string) (bool, error) {
	if err := fs.fault(); err != nil {
		return false, err
	}
	return fs.Store.MarkDurable(ctx, id)
}

func (fs *faultStore) SnapshotBytes(ctx context.Context) (int64, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.SnapshotBytes(ctx)
}

func (fs *faultStore) SnapshotBytesByKind(ctx context.Context) (map[string]int64, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.SnapshotBytesByKind(ctx)
}

func (fs *faultStore) CreateVolume(ctx context.Context, v store.Volume) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateVolume(ctx, v)
}

func (fs *faultStore) ListVolumes(ctx context.Context, teamID string) ([]store.Volume, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListVolumes(ctx, teamID)
}

func (fs *faultStore) ListVolumesPage(ctx context.Context, teamID, after string, limit int) ([]store.Volume, bool, error) {
	if err := fs.fault(); err != nil {
		return nil, false, err
	}
	return fs.Store.ListVolumesPage(ctx, teamID, after, limit)
}

func (fs *faultStore) VolumeMachines(ctx context.Context, teamID string, names []string) (map[string]int, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.VolumeMachines(ctx, teamID, names)
}

func (fs *faultStore) DeleteVolume(ctx context.Context, teamID, name string) (bool, error) {
	if err := fs.fault(); err != nil {
		return false, err
	}
	return fs.Store.DeleteVolume(ctx, teamID, name)
}

func (fs *faultStore) CreateSpare(ctx context.Context, sp *store.Spare, slots int) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.CreateSpare(ctx, sp, slots)
}

func (fs *faultStore) DeleteSpare(ctx context.Context, machineID string) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.DeleteSpare(ctx, machineID)
}

func (fs *faultStore) ListSpares(ctx context.Context) ([]*store.Spare, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListSpares(ctx)
}

func (fs *faultStore) AppendEvent(ctx context.Context, ev *api.Event) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.AppendEvent(ctx, ev)
}

func (fs *faultStore) ListEvents(ctx context.Context, f store.EventFilter) ([]api.Event, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListEvents(ctx, f)
}

func (fs *faultStore) Cursor(ctx context.Context, name string) (int64, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.Cursor(ctx, name)
}

func (fs *faultStore) SetCursor(ctx context.Context, name string, seq int64) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.SetCursor(ctx, name, seq)
}

func (fs *faultStore) PruneEvents(ctx context.Context, before time.Time, keep int, notAfter int64) (int64, error) {
	if err := fs.fault(); err != nil {
		return 0, err
	}
	return fs.Store.PruneEvents(ctx, before, keep, notAfter)
}

func (fs *faultStore) PutSecret(ctx context.Context, name string, value []byte, at time.Time) ([]byte, time.Time, error) {
	if err := fs.fault(); err != nil {
		return nil, time.Time{}, err
	}
	return fs.Store.PutSecret(ctx, name, value, at)
}

func (fs *faultStore) Secret(ctx context.Context, name string) ([]byte, time.Time, error) {
	if err := fs.fault(); err != nil {
		return nil, time.Time{}, err
	}
	return fs.Store.Secret(ctx, name)
}

func (fs *faultStore) AddSSHKey(ctx context.Context, k store.SSHKey) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.AddSSHKey(ctx, k)
}

func (fs *faultStore) ListSSHKeys(ctx context.Context, teamID string) ([]store.SSHKey, error) {
	if err := fs.fault(); err != nil {
		return nil, err
	}
	return fs.Store.ListSSHKeys(ctx, teamID)
}

func (fs *faultStore) SSHKeyByFingerprint(ctx context.Context, fingerprint string) (store.SSHKey, error) {
	if err := fs.fault(); err != nil {
		return store.SSHKey{}, err
	}
	return fs.Store.SSHKeyByFingerprint(ctx, fingerprint)
}

func (fs *faultStore) DeleteSSHKey(ctx context.Context, teamID, idOrFingerprint string) error {
	if err := fs.fault(); err != nil {
		return err
	}
	return fs.Store.DeleteSSHKey(ctx, teamID, idOrFingerprint)
}

// TestBuildFailureNamesNoHostPath: an uploaded root filesystem the runtime
// cannot use fails its build with a message that names the path inside the
// template, not the staging directory on the server host.
func TestBuildFailureNamesNoHostPath(t *testing.T) {
	dir := t.TempDir()
	srv, _ := newTemplateServerIn(t, dir, 64<<10)
	ct, body := multipartBody(t, [2]string{"request", `{"name":"bad"}`},
		[2]string{"tarball", string(rootfsTarGz(t, "bin/sh", "etc/hosts/x"))})
	status, e, tmpl := postTemplate(t, srv.URL, ct, bytes.NewReader(body), int64(len(body)))
	if status != http.StatusCreated || tmpl.State != api.TemplateFailed || !strings.Contains(tmpl.Error, "/etc/hosts") {
		t.Fatalf("upload with a directory at /etc/hosts = %d %+v %+v, want a failed template naming /etc/hosts", status, e, tmpl)
	}
	leaktest.Check(t, "the failed template's error", []byte(tmpl.Error), dir)
}
