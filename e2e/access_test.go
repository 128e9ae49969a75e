package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/e2bcompat"
)

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// otherTeam makes a team with a key of every scope but operator's, and
// deletes it (force) when the test ends.
func otherTeam(t *testing.T) (*api.Team, *api.CreatedAPIKey, *client.Client) {
	t.Helper()
	ctx := t.Context()
	team, err := env.client.CreateTeam(ctx, "e2e-"+randomSuffix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := env.client.DeleteTeam(context.WithoutCancel(ctx), team.ID, true)
		if ae := (*client.APIError)(nil); err != nil && !(errors.As(err, &ae) && ae.Code == "team_not_found") {
			t.Errorf("delete team %s: %v", team.ID, err)
		}
	})
	k, err := env.client.CreateKey(ctx, api.CreateAPIKeyRequest{Name: "b", TeamID: team.ID,
		Scopes: []string{access.MachinesWrite, access.TemplatesWrite, access.KeysAdmin}})
	if err != nil {
		t.Fatal(err)
	}
	return team, k, client.New(env.client.BaseURL(), k.Key)
}

// teamA is what the default team holds for the isolation test.
type teamA struct {
	machine, snapshot, checkpoint, volume, template, sshKey, apiKey string
	pid                                                             int
}

// secrets are the strings no answer to another team may carry.
func (a teamA) secrets() []string {
	return []string{a.machine, a.snapshot, a.checkpoint, a.volume, a.template, a.sshKey, a.apiKey}
}

func makeTeamA(t *testing.T) teamA {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	a := teamA{machine: m.ID, volume: "iso-vol-" + randomSuffix(), template: "iso-tmpl-" + randomSuffix()}
	var err error
	if a.pid, err = env.client.StartCommand(ctx, m.ID, api.RunCommandRequest{Shell: "sleep 600"}); err != nil {
		t.Fatal(err)
	}
	sn, err := env.client.CreateSnapshot(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	a.snapshot = sn.ID
	t.Cleanup(func() { env.client.DeleteSnapshot(context.WithoutCancel(ctx), sn.ID, true) })
	cp, err := env.client.Checkpoint(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	a.checkpoint = cp.ID
	if _, err := env.client.CreateVolume(ctx, a.volume); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.DeleteVolume(context.WithoutCancel(ctx), a.volume) })
	if _, err := env.client.BuildTemplate(ctx, api.BuildTemplateRequest{Name: a.template, FromTemplate: "minimal"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.DeleteTemplate(context.WithoutCancel(ctx), a.template) })
	key := newSSHKey(t, true)
	a.sshKey = ssh.FingerprintSHA256(key.signer.PublicKey())
	k, err := env.client.CreateKey(ctx, api.CreateAPIKeyRequest{Name: "iso", Scopes: []string{access.MachinesRead}})
	if err != nil {
		t.Fatal(err)
	}
	a.apiKey = k.ID
	t.Cleanup(func() { env.client.RevokeKey(context.WithoutCancel(ctx), k.ID) })
	return a
}

// specOperations lists every operation of api/openapi.yaml with the scope
// its security names ("-" for a public one).
func specOperations(t *testing.T) map[string]string {
	var spec struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	ops := map[string]string{}
	for path, methods := range spec.Paths {
		for method, node := range methods {
			if !slices.Contains([]string{"get", "put", "post", "delete", "patch"}, method) {
				continue
			}
			var op struct {
				Security []map[string][]string `yaml:"security"`
			}
			if err := node.Decode(&op); err != nil {
				t.Fatal(err)
			}
			scope := "-"
			if len(op.Security) == 1 {
				scope = strings.Join(op.Security[0]["bearerAuth"], "")
			}
			ops[strings.ToUpper(method)+" "+path] = scope
		}
	}
	return ops
}

var pathParam = regexp.MustCompile(`\{[a-z_]+\}`)

// TestTeamIsolation: a key of another team, holding every scope but the
// operator's, on every route of the API (generated from api/openapi.yaml),
// of the E2B-compatible API and of the SSH gateway, never sees nor
// touches the default team's machine, snapshots, volume, template, SSH
// key or API key: a route naming one answers 404 (never 403: ids of other
// teams are not disclosed), a list does not carry them, and afterwards
// all of them are as they were.
func TestTeamIsolation(t *testing.T) {
	ctx := t.Context()
	a := makeTeamA(t)
	_, bKey, b := otherTeam(t)

	// What each path parameter is, for the route.
	value := func(path, param string) string {
		switch {
		case param == "{pid}":
			return fmt.Sprint(a.pid)
		case param == "{watch_id}":
			return "w_0"
		case param == "{snapshot_id}":
			return a.checkpoint
		case strings.HasPrefix(path, "/v1/machines/"):
			return a.machine
		case strings.HasPrefix(path, "/v1/snapshots/"):
			return a.snapshot
		case strings.HasPrefix(path, "/v1/volumes/"):
			return a.volume
		case strings.HasPrefix(path, "/v1/templates/"):
			return a.template
		case strings.HasPrefix(path, "/v1/ssh-keys/"):
			return a.sshKey
		case strings.HasPrefix(path, "/v1/keys/"):
			return a.apiKey
		case strings.HasPrefix(path, "/v1/teams/"):
			return "team_default"
		case strings.HasPrefix(path, "/v1/nodes/"):
			return "local" // operator routes: B is refused before the name is read
		}
		t.Fatalf("%s: no value of team A for %s; add it to the table", path, param)
		return ""
	}
	// Bodies of the routes without a path parameter that make something:
	// each names one of A's things.
	bodies := map[string]string{
		"POST /v1/machines":  `{"snapshot_id":"` + a.snapshot + `"}`,
		"POST /v1/templates": `{"name":"iso-b-` + randomSuffix() + `","from_template":"` + a.template + `"}`,
		"POST /v1/keys":      `{"team_id":"team_default","scopes":["machines:read"]}`,
		"POST /v1/teams":     `{"name":"never"}`,
		// Names are per team: B gets a volume of its own of that name.
		"POST /v1/volumes": `{"name":"` + a.volume + `"}`,
		// A public key is registered by one team (the gateway maps it to
		// its team): a second registration is refused, whoever asks.
		"POST /v1/ssh-keys": ``,
	}
	// Bodies that pass validation, for the routes whose checks of the body
	// come before the lookup (so that the lookup is what answers).
	validBodies := map[string]string{
		"/v1/machines/{id}/timeout":                           `{"timeout_ms":60000}`,
		"/v1/machines/{id}/commands":                          `{"shell":"true"}`,
		"/v1/machines/{id}/commands/{pid}/stdin":              `{"data":"x"}`,
		"/v1/machines/{id}/commands/{pid}/signal":             `{"signal":"SIGTERM"}`,
		"/v1/machines/{id}/commands/{pid}/resize":             `{"rows":24,"cols":80}`,
		"/v1/machines/{id}/files/mkdir":                       `{"path":"/tmp/x"}`,
		"/v1/machines/{id}/files/rename":                      `{"from":"/tmp/x","to":"/tmp/y"}`,
		"/v1/machines/{id}/urls":                              `{"port":8080}`,
		"/v1/machines/{id}/fork":                              `{"count":1}`,
		"/v1/teams/{id}/quota":                                `{"running_machines":1}`,
		"/v1/machines/{id}/checkpoints/{snapshot_id}/restore": `{}`,
	}
	allowed := map[string]int{
		"POST /v1/volumes":  http.StatusCreated,
		"POST /v1/ssh-keys": http.StatusBadRequest,
	}
	ops := specOperations(t)
	var names []string
	for op := range ops {
		names = append(names, op)
	}
	slices.Sort(names)
	httpc := &http.Client{Timeout: 20 * time.Second}
	bToken := bKey.Key
	// call sends one request as team B: its status, its error code and body.
	call := func(t *testing.T, method, url, body string, header map[string]string) (int, string, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		var e struct {
			Code string `json:"code"`
		}
		json.Unmarshal(got, &e)
		return resp.StatusCode, e.Code, got
	}
	// ghost is a value of the same shape that names nothing.
	ghost := func(v string) string {
		if len(v) > 6 {
			return v[:len(v)-4] + "0000"
		}
		return v + "0"
	}
	for _, op := range names {
		scope := ops[op]
		if scope == "-" {
			continue // public
		}
		method, path, _ := strings.Cut(op, " ")
		t.Run(op, func(t *testing.T) {
			url := pathParam.ReplaceAllStringFunc(path, func(p string) string { return value(path, p) })
			ghostURL := pathParam.ReplaceAllStringFunc(path, func(p string) string { return ghost(value(path, p)) })
			body, ok := bodies[op]
			if !ok && (method == "POST" || method == "PUT") {
				body = validBodies[path]
				if body == "" {
					body = "{}"
				}
			}
			header := map[string]string{"Authorization": "Bearer " + bToken, "Content-Type": "application/json"}
			if method == "PUT" && strings.HasSuffix(path, "/files") {
				header["Content-Type"] = "application/octet-stream"
			}
			status, code, got := call(t, method, env.client.BaseURL()+url, body, header)
			switch {
			case scope == access.Operator:
				// A scope refusal names no resource.
				if status != http.StatusForbidden || code != "insufficient_scope" {
					t.Fatalf("%s as team B: %d %s, want 403 insufficient_scope", url, status, got)
				}
			case pathParam.MatchString(path):
				// Team A's id answers exactly as an id that names nothing:
				// nothing is disclosed, nothing is done.
				gStatus, gCode, gGot := call(t, method, env.client.BaseURL()+ghostURL, body, header)
				if status != gStatus || code != gCode {
					t.Fatalf("%s as team B: %d %s;\nthe same call on an id that names nothing: %d %s", url, status, got, gStatus, gGot)
				}
				if status < 400 {
					t.Fatalf("%s as team B succeeded: %d %s", url, status, got)
				}
			case allowed[op] != 0:
				if status != allowed[op] {
					t.Fatalf("%s as team B: %d %s, want %d", url, status, got, allowed[op])
				}
			case method == "GET":
				if status != http.StatusOK {
					t.Fatalf("%s as team B: %d %s, want 200", url, status, got)
				}
			default:
				if status != http.StatusNotFound {
					t.Fatalf("%s as team B naming team A's things: %d %s, want 404", url, status, got)
				}
			}
			for _, s := range a.secrets() {
				// An id the request names may be echoed; no other may appear.
				if bytes.Contains(got, []byte(s)) && !strings.Contains(url, s) && !strings.Contains(body, s) {
					t.Fatalf("%s as team B carries team A's %s: %s", url, s, got)
				}
			}
		})
	}

	// The E2B-compatible API, every route: creates name A's template or
	// snapshot; routes with an id answer as for an id that names nothing.
	for _, pattern := range e2bcompat.Patterns() {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || path == "/health" || path == "/" {
			continue
		}
		t.Run("e2b "+pattern, func(t *testing.T) {
			id := a.machine
			if strings.HasPrefix(path, "/templates/") {
				id = a.snapshot
			}
			url := strings.NewReplacer("{id}", id, "{alias}", a.template).Replace(path)
			ghostURL := strings.NewReplacer("{id}", ghost(id), "{alias}", ghost(a.template)).Replace(path)
			body := "{}"
			if strings.HasSuffix(path, "/sandboxes") && method == "POST" {
				body = `{"templateID":"` + a.template + `"}`
			}
			header := map[string]string{"X-API-KEY": bToken, "Content-Type": "application/json"}
			base := "http://" + env.inst.E2BAddr
			status, code, got := call(t, method, base+url, body, header)
			switch {
			case strings.Contains(path, "{"):
				gStatus, gCode, gGot := call(t, method, base+ghostURL, body, header)
				if status != gStatus || code != gCode || status < 400 {
					t.Fatalf("%s %s as team B: %d %s;\nthe same call on an id that names nothing: %d %s", method, url, status, got, gStatus, gGot)
				}
			case method == "GET":
				if status != http.StatusOK && status != http.StatusNotFound {
					t.Fatalf("%s %s as team B: %d %s", method, url, status, got)
				}
			case status < 400:
				t.Fatalf("%s %s as team B naming team A's template: %d %s", method, url, status, got)
			}
			for _, s := range a.secrets() {
				if bytes.Contains(got, []byte(s)) && !strings.Contains(url, s) && !strings.Contains(body, s) {
					t.Fatalf("%s %s as team B carries team A's %s: %s", method, url, s, got)
				}
			}
		})
	}

	// The SSH gateway: B's registered key does not open A's machine.
	bSSH := newSSHKeyFor(t, b)
	if c, err := ssh.Dial("tcp", env.inst.SSHAddr, &ssh.ClientConfig{User: a.machine,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(bSSH)}, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second}); err == nil {
		c.Close()
		t.Fatalf("team B's SSH key signed in to team A's machine %s", a.machine)
	}

	// Everything of A's is as it was.
	if m := getMachine(t, a.machine); m.State != api.StateRunning {
		t.Fatalf("team A's machine is %s after team B's calls", m.State)
	}
	if got := run(t, a.machine, "echo ok"); got != "ok\n" {
		t.Fatalf("team A's machine answers %q", got)
	}
	procs, err := env.client.ListProcesses(ctx, a.machine)
	if err != nil || !slices.ContainsFunc(procs, func(p api.Process) bool { return p.PID == a.pid }) {
		t.Fatalf("team A's command %d: %+v %v", a.pid, procs, err)
	}
	for _, id := range []string{a.snapshot, a.checkpoint} {
		if _, err := env.client.GetSnapshot(ctx, id); err != nil {
			t.Fatalf("team A's snapshot %s: %v", id, err)
		}
	}
	if _, err := env.client.GetTemplate(ctx, a.template); err != nil {
		t.Fatalf("team A's template: %v", err)
	}
	vols, err := env.client.ListVolumes(ctx)
	if err != nil || !slices.ContainsFunc(vols, func(v api.Volume) bool { return v.Name == a.volume }) {
		t.Fatalf("team A's volume: %+v %v", vols, err)
	}
	keys, err := env.client.ListSSHKeys(ctx)
	if err != nil || !slices.ContainsFunc(keys, func(k api.SSHKey) bool { return k.Fingerprint == a.sshKey }) {
		t.Fatalf("team A's SSH key: %+v %v", keys, err)
	}
	apiKeys, err := env.client.ListKeys(ctx, "")
	if err != nil || !slices.ContainsFunc(apiKeys, func(k api.APIKey) bool { return k.ID == a.apiKey && k.RevokedAt == nil }) {
		t.Fatalf("team A's API key: %+v %v", apiKeys, err)
	}
}

// newSSHKeyFor registers a new key pair for c's team.
func newSSHKeyFor(t *testing.T, c *client.Client) ssh.Signer {
	t.Helper()
	k := newSSHKey(t, false)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.signer.PublicKey())))
	if _, err := c.AddSSHKey(t.Context(), line, "b"); err != nil {
		t.Fatal(err)
	}
	return k.signer
}

// TestKeysAndScopes: keys made, used within their scopes, refused outside
// them with insufficient_scope, expired and revoked on the real server;
// the operator's key lists teams, a team's key does not.
func TestKeysAndScopes(t *testing.T) {
	ctx := t.Context()
	team, _, b := otherTeam(t)
	reader, err := b.CreateKey(ctx, api.CreateAPIKeyRequest{Name: "reader", Scopes: []string{access.MachinesRead}})
	if err != nil {
		t.Fatal(err)
	}
	r := client.New(env.client.BaseURL(), reader.Key)
	if _, err := r.ListMachines(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("a machines:read key lists machines: %v", err)
	}
	_, err = r.CreateMachine(ctx, api.CreateMachineRequest{Template: "minimal"})
	wantCode(t, err, "insufficient_scope")
	if !strings.Contains(err.Error(), "machines:write") {
		t.Fatalf("the refusal does not name the scope: %v", err)
	}
	_, err = r.CreateKey(ctx, api.CreateAPIKeyRequest{Scopes: []string{access.MachinesRead}})
	wantCode(t, err, "insufficient_scope")
	_, err = b.CreateKey(ctx, api.CreateAPIKeyRequest{Scopes: []string{access.Operator}})
	wantCode(t, err, "insufficient_scope")
	_, err = b.ListTeams(ctx)
	wantCode(t, err, "insufficient_scope")
	if cur, err := r.CurrentKey(ctx); err != nil || cur.ID != reader.ID || cur.TeamID != team.ID {
		t.Fatalf("current key: %+v %v", cur, err)
	}
	teams, err := env.client.ListTeams(ctx)
	if err != nil || !slices.ContainsFunc(teams, func(x api.Team) bool { return x.ID == team.ID }) {
		t.Fatalf("the operator's team list: %+v %v", teams, err)
	}

	// A machine of B's, made by B's key; the operator's team does not see it.
	m, err := b.CreateMachine(ctx, api.CreateMachineRequest{Template: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.client.GetMachine(ctx, m.ID); err == nil {
		t.Fatal("the default team sees team B's machine")
	}
	// Deleting a team with a machine needs force.
	err = env.client.DeleteTeam(ctx, team.ID, false)
	wantCode(t, err, "team_in_use")

	// Expiry and revocation, seen by the server.
	soon := time.Now().Add(2 * time.Second)
	short, err := b.CreateKey(ctx, api.CreateAPIKeyRequest{Scopes: []string{access.MachinesRead}, ExpiresAt: &soon})
	if err != nil {
		t.Fatal(err)
	}
	s := client.New(env.client.BaseURL(), short.Key)
	if _, err := s.ListMachines(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("a key before its expiry: %v", err)
	}
	time.Sleep(time.Until(soon) + 100*time.Millisecond)
	_, err = s.ListMachines(ctx, client.ListOptions{})
	wantCode(t, err, "unauthenticated")
	if _, err := b.RevokeKey(ctx, reader.ID); err != nil {
		t.Fatal(err)
	}
	_, err = r.ListMachines(ctx, client.ListOptions{})
	wantCode(t, err, "unauthenticated")
	if !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a revoked key's refusal does not say so: %v", err)
	}
	listed, err := b.ListKeys(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var sawUse bool
	for _, k := range listed {
		if k.ID == reader.ID && (k.RevokedAt == nil || k.LastUsedAt == nil) {
			t.Fatalf("the revoked reader key: %+v", k)
		}
		sawUse = sawUse || k.LastUsedAt != nil
	}
	if !sawUse {
		t.Fatal("no key of team B records a use")
	}

	// The audit log has the changes and the refusals, with who and where.
	log, err := env.client.Audit(ctx, client.AuditQuery{TeamID: team.ID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range log.Entries {
		seen[e.Action+" "+e.Outcome] = true
		if e.Action == "key.revoke" && (e.Target != reader.ID || e.Source == "" || e.ActorKeyID == "") {
			t.Errorf("the revocation's entry: %+v", e)
		}
	}
	for _, want := range []string{"key.create ok", "key.revoke ok", "request.denied insufficient_scope"} {
		if !seen[want] {
			t.Errorf("the audit log of team B has no %q: %v", want, seen)
		}
	}
	if _, err := b.Audit(ctx, client.AuditQuery{}); err == nil {
		t.Error("a team's key read the audit log")
	}

	// Forced delete: B's machine is killed and B's key stops working.
	if err := env.client.DeleteTeam(ctx, team.ID, true); err != nil {
		t.Fatal(err)
	}
	if got, err := env.inst.Manager.Get(ctx, team.ID, m.ID); err != nil || got.State != api.StateKilled {
		t.Fatalf("team B's machine after the forced delete: %+v %v", got, err)
	}
	_, err = b.ListMachines(ctx, client.ListOptions{})
	wantCode(t, err, "unauthenticated")
}

// TestQuotaOnRealMachines: 20 creates at once against a quota of 5
// running machines make exactly 5 real machines; the others are refused
// with 429 quota_exceeded naming the quota, and leave nothing.
func TestQuotaOnRealMachines(t *testing.T) {
	ctx := t.Context()
	team, _, b := otherTeam(t)
	five := int64(5)
	if _, err := env.client.SetQuota(ctx, team.ID, api.SetQuotaRequest{RunningMachines: &five}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []string
	var refused []error
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := b.CreateMachine(ctx, api.CreateMachineRequest{Template: "minimal"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused = append(refused, err)
				return
			}
			made = append(made, m.ID)
		}()
	}
	wg.Wait()
	if len(made) != 5 || len(refused) != 15 {
		t.Fatalf("%d made, %d refused (%v); want 5 and 15", len(made), len(refused), refused)
	}
	for _, err := range refused {
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Code != "quota_exceeded" || ae.Status != http.StatusTooManyRequests || ae.Retryable {
			t.Fatalf("a refusal: %v, want 429 quota_exceeded, not retryable", err)
		}
	}
	q, err := b.Quotas(ctx, "")
	if err != nil || q.Limits.RunningMachines != 5 || q.Usage.RunningMachines != 5 {
		t.Fatalf("quotas: %+v %v", q, err)
	}
	for _, id := range made {
		if got := runAs(t, b, id, "echo ok"); got != "ok\n" {
			t.Fatalf("machine %s answers %q", id, got)
		}
	}
}

// runAs runs a shell command in a machine through c and returns stdout.
func runAs(t *testing.T, c *client.Client, id, shell string) string {
	t.Helper()
	res, err := c.RunCommand(t.Context(), id, api.RunCommandRequest{Shell: shell})
	if err != nil {
		t.Fatalf("run %q in %s: %v", shell, id, err)
	}
	return res.Stdout
}

// TestTeamRateLimit: the operator's per-team rate limit applies to the
// team's keys: past it, 429 rate_limited with Retry-After.
func TestTeamRateLimit(t *testing.T) {
	ctx := t.Context()
	team, k, _ := otherTeam(t)
	rate, burst := int64(1), int64(2)
	if _, err := env.client.SetQuota(ctx, team.ID, api.SetQuotaRequest{APIRate: &rate, APIBurst: &burst}); err != nil {
		t.Fatal(err)
	}
	var statuses []int
	var retryAfter string
	for range 4 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, env.client.BaseURL()+"/v1/machines", nil)
		req.Header.Set("Authorization", "Bearer "+k.Key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests {
			retryAfter = resp.Header.Get("Retry-After")
		}
	}
	if statuses[0] != 200 || statuses[1] != 200 || statuses[3] != http.StatusTooManyRequests || retryAfter == "" {
		t.Fatalf("4 requests at once at 1/s, burst 2: %v (Retry-After %q), want 200 200 ... 429", statuses, retryAfter)
	}
	// The operator's own key is not held back by team B's limit.
	if _, err := env.client.ListMachines(ctx, client.ListOptions{}); err != nil {
		t.Fatal(err)
	}
}
