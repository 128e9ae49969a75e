package e2bcompat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/page"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/store"
)

// handler is a control-plane route: it answers or returns an error, which
// becomes E2B's error body in one place (writeError).
type handler func(w http.ResponseWriter, r *http.Request, team string) error

// routes are E2B's REST paths, as the SDKs call them.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	for pattern, h := range s.controlRoutes() {
		mux.HandleFunc(pattern, s.serve(h, pattern == "GET /health"))
	}
	return mux
}

// Patterns lists the REST routes served ("METHOD /path/{id}"), for tests
// that walk every one (the cross-team table).
func Patterns() []string {
	var out []string
	for p := range (&Server{}).controlRoutes() {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// controlRoutes are the control plane's handlers by pattern.
func (s *Server) controlRoutes() map[string]handler {
	return map[string]handler{
		"POST /sandboxes":                 s.create,
		"POST /v2/sandboxes":              s.create,
		"GET /sandboxes":                  s.listV1,
		"GET /v2/sandboxes":               s.list,
		"GET /sandboxes/{id}":             s.get,
		"DELETE /sandboxes/{id}":          s.kill,
		"POST /sandboxes/{id}/timeout":    s.setTimeout,
		"POST /sandboxes/{id}/refreshes":  s.refresh,
		"POST /sandboxes/{id}/pause":      s.pause,
		"POST /sandboxes/{id}/resume":     s.resume,
		"POST /sandboxes/{id}/connect":    s.connect,
		"POST /v2/sandboxes/{id}/connect": s.connect,
		"GET /sandboxes/{id}/metrics":     s.metrics,
		"POST /sandboxes/{id}/fork":       s.fork,
		"POST /sandboxes/{id}/snapshots":  s.snapshot,
		"GET /snapshots":                  s.listSnapshots,
		"DELETE /templates/{id}":          s.deleteSnapshot,
		"GET /health":                     s.health,
		"GET /v2/sandboxes/{id}/logs":     s.unsupported("sandbox logs", "read a command's output with commands.connect, or GET /v1/events on the Nullspace API"),
		"PUT /sandboxes/{id}/network":     s.unsupported("updating a sandbox's network", "create the sandbox with the network it needs"),
		"POST /v3/templates":              s.unsupported("building templates", "build one with `nullspace template build` (POST /v1/templates)"),
		"GET /templates/aliases/{alias}":  s.unsupported("template aliases", "use the template's name as its id"),
		"POST /volumes":                   s.unsupported("E2B volumes", "use Nullspace volumes (POST /v1/volumes) and mount them at create"),
		"GET /volumes":                    s.unsupported("E2B volumes", "use Nullspace volumes (GET /v1/volumes)"),
		"/":                               s.unsupported("this call", "see the README's table of the E2B calls that are served"),
	}
}

// serve authenticates a control-plane call (X-API-KEY, as the SDKs send
// it, or a bearer token) and maps its error.
func (s *Server) serve(h handler, public bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		team := ""
		if !public {
			key := r.Header.Get("X-API-KEY")
			if key == "" {
				key, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			}
			if key == "" {
				s.deny(w, r, nil, key, unauthenticated("no API key", "set E2B_API_KEY to a Nullspace API key (on the server host it is in <data dir>/api-key; `nullspace e2b env` prints it)"))
				return
			}
			p, err := s.auth.Authenticate(r.Context(), key)
			if errors.Is(err, errdefs.ErrUnauthenticated) || errors.Is(err, errdefs.ErrNotFound) {
				s.deny(w, r, nil, key, unauthenticated("the API key is not valid", "set E2B_API_KEY to a Nullspace API key (`nullspace e2b env` prints this host's)"))
				return
			} else if err != nil {
				s.writeError(w, r, err)
				return
			}
			if ok, after := s.limits.Allow(access.RateKey(p)); !ok {
				s.deny(w, r, p, "", errdefs.RateLimited("calls with this API key", after))
				return
			}
			// E2B's calls read (GET) or act on sandboxes and their
			// snapshots.
			need := access.MachinesWrite
			if r.Method == http.MethodGet {
				need = access.MachinesRead
			}
			if !p.Scopes.Has(need) {
				s.deny(w, r, p, "", access.Need(need))
				return
			}
			team = p.TeamID
			r = r.WithContext(access.WithPrincipal(r.Context(), p))
		}
		if err := h(w, r, team); err != nil {
			s.writeError(w, r, err)
		}
	}
}

// deny answers a call refused before its handler and records it in the
// audit log, as the API does (access.Refusal).
func (s *Server) deny(w http.ResponseWriter, r *http.Request, p *access.Principal, key string, err error) {
	s.writeError(w, r, err)
	s.audit.Denied(r.Context(), access.Refusal(r, "e2b "+r.Method+" "+r.URL.Path, p, key, err))
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ string) error {
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) unsupported(what, instead string) handler {
	return func(w http.ResponseWriter, r *http.Request, _ string) error {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound,
			fmt.Sprintf("%s (%s %s) is not supported by Nullspace's E2B compatibility", what, r.Method, r.URL.Path), instead)
	}
}

// writeError answers with E2B's error body: {"code": <status>, "message"},
// which the SDKs read (the code as a number), plus our stable code as
// error_code. A 429 or 503 carries Retry-After.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := errdefs.Classify(err)
	logMsg := "e2b call refused"
	if p.Status >= 500 {
		logMsg = "e2b call failed"
	}
	s.logger.Log(r.Context(), p.LogLevel(), logMsg, "method", r.Method, "path", r.URL.Path, "code", p.Code, "err", err)
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", ratelimit.RetryAfterSeconds(p.RetryAfter))
	} else if p.Status == http.StatusTooManyRequests || p.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	msg := p.Message
	if p.SuggestedAction != "" {
		msg += "; " + p.SuggestedAction
	}
	writeJSON(w, p.Status, errorBody{Code: p.Status, ErrorCode: p.Code, Message: msg})
}

// secondsMS turns E2B's timeout in seconds into milliseconds; past the
// API's bound it gives a value the lease's check refuses (instead of one
// the multiplication wrapped around).
func secondsMS(secs int) int64 {
	if int64(secs) > api.MaxDurationMS/1000 {
		return api.MaxDurationMS + 1
	}
	return int64(secs) * 1000
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func readJSON(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"the request body is not the JSON this call takes: "+err.Error(), "send the body the E2B API documents")
	}
	return nil
}

func notFound(sbx string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound, fmt.Sprintf("sandbox %s not found", sbx),
		"list sandboxes with Sandbox.list(); a killed sandbox cannot come back")
}

func unauthenticated(msg, action string) error {
	return errdefs.New(errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated, msg, action)
}

// lookup returns the latest execution of the sandbox a path names, or a 404
// for one that is not the team's, was killed or never was.
func (s *Server) lookup(ctx context.Context, team, sbx string) (*store.Machine, error) {
	id := machineID(sbx)
	if id == "" {
		return nil, notFound(sbx)
	}
	// The lineage's first id is an alias once it has been resumed: what
	// the sandbox is now is its latest execution (a lineage's executions
	// are all its team's).
	rec, err := s.machines.LineageHead(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) || (err == nil && (rec.TeamID != team || state(rec) == "")) {
		return nil, notFound(sbx)
	}
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// state is a machine's E2B state: running or paused (a stopped machine,
// whose memory is gone, is paused without memory), or "" for a machine E2B
// would no longer show.
func state(rec *store.Machine) string {
	switch rec.State {
	case api.StateCreating, api.StateRunning, api.StateResuming, api.StateSnapshotting, api.StateStarting, api.StateRestoring:
		return "running"
	case api.StatePausing, api.StatePaused, api.StateStopping, api.StateStopped:
		return "paused"
	}
	return ""
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, team string) error {
	var req newSandbox
	if err := readJSON(r, &req); err != nil {
		return err
	}
	policy, err := onTimeout(req)
	if err != nil {
		return err
	}
	cr := api.CreateMachineRequest{Template: req.TemplateID, Env: req.EnvVars, Metadata: req.Metadata,
		AllowInternet: req.AllowInternetAccess != nil && *req.AllowInternetAccess && s.cfg.AllowInternet,
		PublicPorts:   req.Network == nil || req.Network.AllowPublicTraffic == nil || *req.Network.AllowPublicTraffic,
		AutoResume:    req.AutoResume.Enabled, OnTimeout: policy, Origin: store.OriginE2B}
	if strings.HasPrefix(req.TemplateID, snapshotPrefix) {
		// Sandbox.create(snapshotId): E2B's snapshots are templates.
		cr.Template, cr.SnapshotID = "", req.TemplateID
	}
	if cr.Template == "" && cr.SnapshotID == "" {
		cr.Template = "base"
	}
	if req.Timeout != nil {
		ms := secondsMS(*req.Timeout)
		cr.TimeoutMS = &ms
	}
	for _, v := range req.VolumeMounts {
		cr.Volumes = append(cr.Volumes, api.VolumeMount{Name: v.Name, Path: v.Path})
	}
	rec, err := s.machines.Create(r.Context(), team, cr)
	if err != nil && cr.Template != "" && errdefs.Classify(err).Code == errdefs.CodeTemplateNotFound {
		// Sandbox.create(name) of a named snapshot: E2B's snapshot names
		// are template names. A template of that name comes first, so
		// that a snapshot's name never changes what a template's does.
		if sn, serr := s.machines.GetSnapshot(r.Context(), team, e2bName(cr.Template)); serr == nil {
			cr.Template, cr.SnapshotID = "", sn.ID
			rec, err = s.machines.Create(r.Context(), team, cr)
		}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.sandbox(rec))
	return nil
}

// onTimeout maps a create's autoPause, autoPauseMemory and autoResume to
// the lease's on_timeout. A pause without memory (E2B's filesystem-only
// snapshot: files kept, a cold boot on connect) is our stop. E2B refuses
// that with autoResume, since traffic cannot wake a sandbox that must
// reboot, and autoPauseMemory without autoPause; so does this layer, for
// clients that do not check it themselves.
func onTimeout(req newSandbox) (string, error) {
	autoPause := req.AutoPause != nil && *req.AutoPause
	if req.AutoPauseMemory != nil && !*req.AutoPauseMemory {
		switch {
		case !autoPause:
			return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"autoPauseMemory false only applies when autoPause is true",
				"create with lifecycle {onTimeout: {action: 'pause', keepMemory: false}}, or leave keepMemory out")
		case req.AutoResume.Enabled:
			return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"autoResume is refused with autoPauseMemory false: a sandbox paused without its memory boots afresh and cannot be woken by traffic",
				"leave autoResume out and bring the sandbox back with Sandbox.connect(), or keep its memory (keepMemory: true) to auto-resume")
		}
		return api.TimeoutStop, nil
	}
	// E2B resumes on traffic what paused at its timeout; Nullspace also
	// needs the lease to pause, not kill, for auto-resume.
	if autoPause || req.AutoResume.Enabled {
		return api.TimeoutPause, nil
	}
	return "", nil
}

// e2bName is a snapshot name as E2B's API takes it: trimmed and
// lower-cased.
func e2bName(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

func (s *Server) get(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	d := s.detail(rec)
	// The envd access token lets its holder run commands and write files
	// in the sandbox: only a key that may (machines:write) gets it; E2B's
	// SDKs take it from create and connect, not from here.
	if p := access.From(r.Context()); p == nil || !p.Scopes.Has(access.MachinesWrite) {
		d.EnvdAccessToken = ""
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	if _, err := s.machines.Kill(r.Context(), team, rec.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listV1 is the old GET /sandboxes: running sandboxes, all at once,
// newest first (E2B's v1 list takes no order).
func (s *Server) listV1(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	q.Set("state", "running")
	q.Del("order")
	r.URL.RawQuery = q.Encode()
	return s.listPages(w, r, team, true)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, team string) error {
	return s.listPages(w, r, team, false)
}

// listPages answers GET /v2/sandboxes: a page of the team's sandboxes
// (limit, default 100), filtered by state (running, paused or both),
// template, metadata (a query string of key=value pairs) and start time
// (startedAfter, inclusive; startedBefore, exclusive, which E2B lacks),
// sorted by start time (the startedAt it answers: when the sandbox was
// first created, which a pause and resume does not move) in order: desc
// (the default, newest first, as E2B) or asc. The next page's token is in
// X-Next-Token. all reads every page into one answer.
func (s *Server) listPages(w http.ResponseWriter, r *http.Request, team string, all bool) error {
	q := r.URL.Query()
	f := machine.ListFilter{Template: q.Get("template"), Metadata: map[string]string{}, Desc: true}
	switch o := q.Get("order"); o {
	case "", "desc":
	case "asc":
		f.Desc = false
	default:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("order %q is not asc or desc", o), "sort by asc (oldest first) or desc (newest first, the default)")
	}
	var err error
	if f.CreatedFrom, err = listTime(q, "startedAfter"); err != nil {
		return err
	}
	if f.CreatedBefore, err = listTime(q, "startedBefore"); err != nil {
		return err
	}
	if raw := q.Get("metadata"); raw != "" {
		pairs, err := url.ParseQuery(raw)
		if err != nil {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("metadata filter %q is not key=value pairs", raw), "pass metadata as an object in the SDK's query")
		}
		for k, v := range pairs {
			f.Metadata[k] = v[0]
		}
	}
	states := map[string]bool{}
	for _, st := range q["state"] {
		for _, v := range strings.Split(st, ",") {
			if v != "running" && v != "paused" {
				return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
					fmt.Sprintf("state %q is not running or paused", v), "filter by running, paused or both")
			}
			states[v] = true
		}
	}
	if len(states) == 1 && states["running"] {
		// Filtered by the store; "paused" is filtered here, since a
		// stopped machine shows as paused too.
		f.State = api.StateRunning
	}
	limit, err := page.Limit(q.Get("limit"))
	if err != nil {
		return err
	}
	// A token is good for the order and bounds it was made with only.
	scope := page.NewScope("e2b-sandboxes", team, append([]string{f.State, f.Template, fmt.Sprint(f.Desc),
		scopeTime(f.CreatedFrom), scopeTime(f.CreatedBefore)}, page.Pairs(f.Metadata)...)...)
	var after store.MachineCursor
	if t, id, ok, err := page.DecodeTimeID(scope, q.Get("nextToken")); err != nil {
		return err
	} else if ok {
		after = store.MachineCursor{Time: t, ID: id}
	}
	out := []listedSandbox{}
	for {
		recs, more, err := s.machines.ListPage(r.Context(), team, f, after, limit)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if st := state(rec); st != "" && (len(states) == 0 || states[st]) {
				out = append(out, s.listed(rec))
			}
		}
		if !more || len(recs) == 0 {
			break
		}
		after = store.CursorOf(recs[len(recs)-1], false)
		if !all {
			w.Header().Set("X-Next-Token", page.EncodeTimeID(scope, after.Time, after.ID))
			break
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// listTime parses a list's time bound, an RFC 3339 date-time (zero when
// absent). A "+" of the offset sent unescaped arrives as a space.
func listTime(q url.Values, name string) (time.Time, error) {
	raw := q.Get(name)
	if raw == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, strings.ReplaceAll(raw, " ", "+"))
	if err != nil {
		return time.Time{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s %q is not an RFC 3339 date-time", name, raw), "pass a time like 2026-01-02T15:04:05Z (a Date in the SDK)")
	}
	return t, nil
}

func scopeTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request, team string) error {
	var req struct {
		Timeout *int `json:"timeout"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Timeout == nil || *req.Timeout < 0 {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"timeout is missing or negative", "send {\"timeout\": seconds}")
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	if _, err := s.machines.SetTimeout(r.Context(), team, rec.ID, api.SetTimeoutRequest{TimeoutMS: secondsMS(*req.Timeout)}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// refresh is E2B's keep-alive (POST .../refreshes {duration}): the lease
// is extended to duration from now, never shortened.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request, team string) error {
	var req struct {
		Duration *int `json:"duration"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	if req.Duration != nil {
		if err := s.extend(r.Context(), team, rec, *req.Duration); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// extend moves a machine's lease to secs from now if that is later than
// it ends now: connect and refresh never shorten a lease.
func (s *Server) extend(ctx context.Context, team string, rec *store.Machine, secs int) error {
	want := time.Now().Add(time.Duration(secs) * time.Second)
	if secs <= 0 || (!rec.Deadline.IsZero() && !rec.Deadline.Before(want)) || rec.TimeoutMS == 0 && rec.Deadline.IsZero() {
		return nil
	}
	_, err := s.machines.SetTimeout(ctx, team, rec.ID, api.SetTimeoutRequest{TimeoutMS: secondsMS(secs)})
	return err
}

// pause answers 204, or 409 for a sandbox that is already paused. With
// {"memory": false} (keepMemory: false) the machine is stopped instead:
// its files are kept, its memory is not, and connect boots it again.
func (s *Server) pause(w http.ResponseWriter, r *http.Request, team string) error {
	var req struct {
		Memory *bool `json:"memory"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	if state(rec) == "paused" {
		return errdefs.New(errdefs.ErrConflict, errdefs.CodeInvalidTransition,
			fmt.Sprintf("sandbox %s is already paused", r.PathValue("id")), "resume it with Sandbox.connect()")
	}
	if req.Memory != nil && !*req.Memory {
		_, err = s.machines.Stop(r.Context(), team, rec.ID, 10*time.Second)
	} else {
		_, err = s.machines.Pause(r.Context(), team, rec.ID)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resume is the old POST .../resume: 201 with the sandbox, 409 when it
// runs.
func (s *Server) resume(w http.ResponseWriter, r *http.Request, team string) error {
	return s.bringUp(w, r, team, true)
}

// connect answers 200 with a running sandbox, or 201 when it had to be
// resumed (or started); a timeout extends its lease, never shortens it.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, team string) error {
	return s.bringUp(w, r, team, false)
}

// bringUp runs a sandbox and answers with it: resumed or started if it
// must be (201), as it is otherwise (200; 409 when paused is required).
func (s *Server) bringUp(w http.ResponseWriter, r *http.Request, team string, pausedOnly bool) error {
	var req struct {
		Timeout *int `json:"timeout"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	if pausedOnly && state(rec) == "running" {
		return errdefs.New(errdefs.ErrConflict, errdefs.CodeInvalidTransition,
			fmt.Sprintf("sandbox %s is already running", r.PathValue("id")), "connect to it with Sandbox.connect()")
	}
	timeout := req.Timeout
	status := http.StatusOK
	if rec.State != api.StateRunning {
		status = http.StatusCreated
	}
	if rec, err = s.machines.Connect(r.Context(), team, rec.ID); err != nil {
		return err
	}
	if timeout != nil {
		if err := s.extend(r.Context(), team, rec, *timeout); err != nil {
			return err
		}
	}
	writeJSON(w, status, s.sandbox(rec))
	return nil
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	samples, err := s.machines.Metrics(r.Context(), team, rec.ID)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	start, _ := strconv.ParseInt(q.Get("start"), 10, 64)
	end, _ := strconv.ParseInt(q.Get("end"), 10, 64)
	out := []sandboxMetric{}
	for _, m := range samples {
		ts := m.Timestamp.Unix()
		if (start != 0 && ts < start) || (end != 0 && ts > end) {
			continue
		}
		out = append(out, sandboxMetric{Timestamp: m.Timestamp, TimestampUnix: ts, CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
			MemUsed: m.MemUsed, MemTotal: m.MemTotal, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// fork makes count children of a running sandbox from one snapshot of it
// (its memory and files); each child is a sandbox of its own.
func (s *Server) fork(w http.ResponseWriter, r *http.Request, team string) error {
	var req struct {
		Timeout *int `json:"timeout"`
		Count   *int `json:"count"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	count := 1
	if req.Count != nil {
		count = *req.Count
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	_, children, err := s.machines.Fork(r.Context(), team, rec.ID, count)
	if err != nil {
		return err
	}
	out := make([]forkResult, 0, len(children))
	for _, c := range children {
		res := forkResult{}
		if req.Timeout != nil {
			if _, err := s.machines.SetTimeout(r.Context(), team, c.ID, api.SetTimeoutRequest{TimeoutMS: secondsMS(*req.Timeout)}); err != nil {
				p := errdefs.Classify(err)
				res.Error = &errorBody{Code: p.Status, ErrorCode: p.Code, Message: p.Message}
				out = append(out, res)
				continue
			}
		}
		sb := s.sandbox(c)
		res.Sandbox = &sb
		out = append(out, res)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// snapshot saves a running sandbox's memory and files as a snapshot,
// which Sandbox.create(snapshotId) starts new sandboxes from; with a name,
// Sandbox.create(name) does too. A name the team has given another
// snapshot is snapshot_name_exists (409): E2B would move the name to the
// new snapshot, Nullspace keeps a name on one snapshot until it is
// deleted.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request, team string) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	rec, err := s.lookup(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	sn, err := s.machines.CreateSnapshot(r.Context(), team, rec.ID, e2bName(req.Name))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, infoOf(sn))
	return nil
}

// infoOf is E2B's view of a snapshot: its id, and its name as its names
// (E2B's carry a team namespace and a tag, which Nullspace has not).
func infoOf(sn *store.Snapshot) snapshotInfo {
	if sn.Name != "" {
		return snapshotInfo{SnapshotID: sn.ID, Names: []string{sn.Name}}
	}
	return snapshotInfo{SnapshotID: sn.ID, Names: []string{sn.ID}}
}

// listSnapshots answers GET /snapshots: a page of the team's snapshots,
// of one sandbox with sandboxID; name keeps the snapshot of that name or
// id (at most one, so no next page).
func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	f := machine.SnapshotFilter{}
	if sbx := q.Get("sandboxID"); sbx != "" {
		rec, err := s.lookup(r.Context(), team, sbx)
		if err != nil {
			return err
		}
		f.MachineID = rec.ID
	}
	if name := q.Get("name"); name != "" {
		out := []snapshotInfo{}
		sn, err := s.machines.GetSnapshot(r.Context(), team, e2bName(name))
		switch {
		case err == nil && (f.MachineID == "" || sn.MachineID == f.MachineID):
			out = append(out, infoOf(sn))
		case err != nil && !errors.Is(err, errdefs.ErrNotFound):
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	limit, err := page.Limit(q.Get("limit"))
	if err != nil {
		return err
	}
	scope := page.NewScope("e2b-snapshots", team, f.MachineID)
	p := machine.SnapshotPage{Limit: limit}
	if t, id, ok, err := page.DecodeTimeID(scope, q.Get("nextToken")); err != nil {
		return err
	} else if ok {
		p.After = store.SnapshotCursor{Created: t, ID: id}
	}
	snaps, more, err := s.machines.ListSnapshots(r.Context(), team, f, p)
	if err != nil {
		return err
	}
	out := []snapshotInfo{}
	for _, sn := range snaps {
		out = append(out, infoOf(sn))
	}
	if more && len(snaps) > 0 {
		c := store.SnapshotCursorOf(snaps[len(snaps)-1], false)
		w.Header().Set("X-Next-Token", page.EncodeTimeID(scope, c.Created, c.ID))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// deleteSnapshot is DELETE /templates/{id} for a snapshot's id or name
// (the SDKs delete snapshots as templates). Any other name is not found:
// templates are not deleted here.
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, team string) error {
	id := r.PathValue("id")
	if !strings.HasPrefix(id, snapshotPrefix) {
		id = e2bName(id)
		// A template of that name comes first, as in create: deleting
		// a template (Template.delete) never takes a snapshot instead.
		if _, err := s.machines.Template(r.Context(), team, r.PathValue("id")); err == nil {
			return errdefs.New(errdefs.ErrNotFound, errdefs.CodeSnapshotNotFound,
				fmt.Sprintf("%s is a template: deleting templates is not supported by Nullspace's E2B compatibility", r.PathValue("id")),
				"delete a template with `nullspace template rm`")
		}
	}
	err := s.machines.DeleteSnapshot(r.Context(), team, id, false)
	if errors.Is(err, errdefs.ErrNotFound) && !strings.HasPrefix(id, snapshotPrefix) {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeSnapshotNotFound,
			fmt.Sprintf("no snapshot is named %s (deleting templates is not supported by Nullspace's E2B compatibility)", id),
			"list snapshots with Sandbox.listSnapshots(); delete a template with `nullspace template rm`")
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
