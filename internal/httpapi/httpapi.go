// Package httpapi is the public HTTP API: routing, authentication, request
// parsing and the one place where errors become HTTP statuses and bodies.
// Handlers are thin: parse, call the machine manager or the template store,
// write the answer. Command and file calls are streamed through to the
// machine's agent.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/idempotency"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/page"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/reqbody"
	"nullspace.dev/nullspace/internal/routing"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/telemetry"
	"nullspace.dev/nullspace/internal/template"
)

// Authenticator resolves an API key to whom it acts as.
type Authenticator interface {
	Authenticate(ctx context.Context, key string) (*access.Principal, error)
}

// Templates is what the API needs of the template store.
type Templates interface {
	List(ctx context.Context) ([]api.Template, error)
	Get(ctx context.Context, name string) (api.Template, error)
	// CheckDelete says why the template cannot be deleted whoever uses
	// it (not found, built in).
	CheckDelete(ctx context.Context, name string) error
	Delete(ctx context.Context, name string) error
}

// TemplateBuilder builds templates (the server wires the store and the
// machine manager, which runs build steps, together).
type TemplateBuilder interface {
	Build(ctx context.Context, team string, req api.BuildTemplateRequest) (api.Template, error)
	// BuildUpload builds from a root filesystem tarball streamed in; req
	// names no source. A read error of tarball is returned, wrapped.
	BuildUpload(ctx context.Context, team string, req api.BuildTemplateRequest, tarball io.Reader) (api.Template, error)
}

// DefaultTemplateUploadBytes bounds a tarball uploaded to POST /v1/templates
// unless WithTemplateUploadLimit says otherwise.
const DefaultTemplateUploadBytes = 2 << 30

// URLIssuer issues public URLs of machines' ports (the edge).
type URLIssuer interface {
	URL(lineageID string, port int, expires time.Time, public bool) (api.MachineURL, error)
}

// Server serves the API.
type Server struct {
	access    *access.Service
	audit     *audit.Log
	idem      *idempotency.Guard
	machines  *machine.Manager
	events    *events.Log
	telemetry *telemetry.Metrics
	urls      URLIssuer // nil: the server runs without an edge
	templates Templates
	builder   TemplateBuilder
	auth      Authenticator
	logger    *slog.Logger
	version   string
	agent     *http.Client
	ssh       SSH
	e2b       *E2B   // nil: no E2B-compatible API
	node      string // the server's node name, for GET /v1/health
	// maxUpload bounds a tarball uploaded to POST /v1/templates.
	maxUpload int64
	// limits is the rate limit of authenticated requests, by API key id
	// (nil: none).
	limits *ratelimit.Limiter
	// router takes calls to the node of the cluster that serves them
	// (nil: one node).
	router *routing.Router
	nodes  Nodes
}

// WithRateLimit limits the authenticated requests of each API key with l
// (nil: no limit); a request over it gets 429 rate_limited with
// Retry-After, and nothing is done. Public routes are not limited.
func (s *Server) WithRateLimit(l *ratelimit.Limiter) *Server {
	s.limits = l
	return s
}

// limited takes a token of the bucket of key (an API key's id), or
// answers the request with 429 rate_limited and returns true. It runs
// right after authentication, before the scope check: every request a key
// authenticates counts.
// deny answers a request refused before its handler (no key, a key that
// is not valid, a missing scope, a rate limit) and records it in the
// audit log (access.Refusal).
func (s *Server) deny(w http.ResponseWriter, r *http.Request, p *access.Principal, key string, err error) {
	s.writeError(w, r, err)
	s.audit.Denied(r.Context(), access.Refusal(r, r.Method+" "+r.URL.Path, p, key, err))
}

// WithAudit records refused requests and quota changes in log.
func (s *Server) WithAudit(log *audit.Log) *Server {
	s.audit = log
	return s
}

// WithTemplateUploadLimit bounds the body of a tarball upload to
// POST /v1/templates: larger ones are file_too_large (413).
func (s *Server) WithTemplateUploadLimit(n int64) *Server {
	s.maxUpload = n
	return s
}

// E2B says where the E2B-compatible API is, for GET /v1/health.
type E2B struct {
	URL    string `json:"url"`
	Domain string `json:"domain,omitempty"`
}

// WithE2B makes the health answer say where the E2B-compatible API is.
func (s *Server) WithE2B(e *E2B) *Server {
	s.e2b = e
	return s
}

// WithNode makes the health answer name the server's node.
func (s *Server) WithNode(name string) *Server {
	s.node = name
	return s
}

// New returns the API server.
// urls may be nil (no edge: machine URLs are refused).
func New(machines *machine.Manager, templates Templates, builder TemplateBuilder, auth Authenticator, events *events.Log,
	telemetry *telemetry.Metrics, urls URLIssuer, logger *slog.Logger, version string) *Server {
	return &Server{machines: machines, templates: templates, builder: builder, auth: auth, events: events,
		telemetry: telemetry, urls: urls, logger: logger, version: version, agent: agentclient.SharedHTTPClient(),
		maxUpload: DefaultTemplateUploadBytes}
}

// prometheus serves the server's own metrics in the Prometheus format.
func (s *Server) prometheus(w http.ResponseWriter, r *http.Request, _ string) error {
	s.telemetry.Handler().ServeHTTP(w, r)
	return nil
}

// Route is one API route.
type Route struct {
	Method string
	Path   string // as in api/openapi.yaml
	Public bool   // no API key needed
	// Idempotent routes honour an Idempotency-Key (idempotency.go).
	Idempotent bool
	// Scope is the one a key needs (an access constant); "" for any
	// valid key. The spec test checks it against the operation's security.
	Scope string
	// Where is the node of a cluster that serves the route.
	Where   Where
	Handler func(w http.ResponseWriter, r *http.Request, team string) error
}

// Routes lists every route; the spec test compares it with api/openapi.yaml.
func (s *Server) Routes() []Route {
	return append([]Route{
		{Method: "GET", Path: "/v1/health", Public: true, Handler: s.health},
		{Method: "GET", Path: "/v1/openapi.yaml", Public: true, Handler: s.spec},
		{Method: "GET", Path: "/metrics", Scope: access.Operator, Handler: s.prometheus},

		{Method: "POST", Path: "/v1/machines", Idempotent: true, Scope: access.MachinesWrite, Where: Place, Handler: s.createMachine},
		{Method: "GET", Path: "/v1/machines", Scope: access.MachinesRead, Handler: s.listMachines},
		{Method: "GET", Path: "/v1/machines/{id}", Scope: access.MachinesRead, Handler: s.getMachine},
		{Method: "DELETE", Path: "/v1/machines/{id}", Scope: access.MachinesWrite, Where: Owner, Handler: s.killMachine},

		{Method: "POST", Path: "/v1/machines/{id}/pause", Scope: access.MachinesWrite, Where: Owner, Handler: s.pauseMachine},
		{Method: "POST", Path: "/v1/machines/{id}/stop", Scope: access.MachinesWrite, Where: Owner, Handler: s.stopMachine},
		{Method: "POST", Path: "/v1/machines/{id}/start", Scope: access.MachinesWrite, Where: Wake, Handler: s.startMachine},
		{Method: "GET", Path: "/v1/machines/{id}/wait", Scope: access.MachinesRead, Where: Owner, Handler: s.waitMachine},
		{Method: "POST", Path: "/v1/machines/{id}/timeout", Scope: access.MachinesWrite, Where: Owner, Handler: s.setTimeout},
		{Method: "POST", Path: "/v1/machines/{id}/urls", Scope: access.MachinesWrite, Where: Owner, Handler: s.machineURL},
		{Method: "GET", Path: "/v1/events", Scope: access.MachinesRead, Handler: s.listEvents},
		{Method: "GET", Path: "/v1/machines/{id}/metrics", Scope: access.MachinesRead, Where: Owner, Handler: s.machineMetrics},
		{Method: "POST", Path: "/v1/machines/{id}/connect", Scope: access.MachinesWrite, Where: Wake, Handler: s.connectMachine},
		{Method: "POST", Path: "/v1/machines/{id}/snapshots", Idempotent: true, Scope: access.MachinesWrite, Where: Owner, Handler: s.snapshotMachine},
		{Method: "POST", Path: "/v1/machines/{id}/fork", Idempotent: true, Scope: access.MachinesWrite, Where: Owner, Handler: s.forkMachine},
		{Method: "GET", Path: "/v1/machines/{id}/checkpoints", Scope: access.MachinesRead, Handler: s.listCheckpoints},
		{Method: "POST", Path: "/v1/machines/{id}/checkpoints", Scope: access.MachinesWrite, Where: Owner, Handler: s.checkpointMachine},
		{Method: "POST", Path: "/v1/machines/{id}/checkpoints/{snapshot_id}/restore", Scope: access.MachinesWrite, Where: Owner, Handler: s.restoreCheckpoint},
		{Method: "POST", Path: "/v1/machines/{id}/checkpoints/{snapshot_id}/pin", Scope: access.MachinesWrite, Handler: s.pinCheckpoint(true)},
		{Method: "POST", Path: "/v1/machines/{id}/checkpoints/{snapshot_id}/unpin", Scope: access.MachinesWrite, Handler: s.pinCheckpoint(false)},

		{Method: "POST", Path: "/v1/machines/{id}/ssh-token", Scope: access.MachinesWrite, Where: Owner, Handler: s.sshToken},
		{Method: "POST", Path: "/v1/ssh-keys", Scope: access.MachinesWrite, Handler: s.addSSHKey},
		{Method: "GET", Path: "/v1/ssh-keys", Scope: access.MachinesRead, Handler: s.listSSHKeys},
		{Method: "DELETE", Path: "/v1/ssh-keys/{id}", Scope: access.MachinesWrite, Handler: s.deleteSSHKey},

		{Method: "GET", Path: "/v1/snapshots", Scope: access.MachinesRead, Handler: s.listSnapshots},
		{Method: "GET", Path: "/v1/snapshots/{id}", Scope: access.MachinesRead, Handler: s.getSnapshot},
		{Method: "DELETE", Path: "/v1/snapshots/{id}", Scope: access.MachinesWrite, Handler: s.deleteSnapshot},
		{Method: "POST", Path: "/v1/snapshots/{id}/resume", Scope: access.MachinesWrite, Where: WakeSnapshot, Handler: s.resumeSnapshot},

		{Method: "GET", Path: "/v1/volumes", Scope: access.MachinesRead, Handler: s.listVolumes},
		{Method: "POST", Path: "/v1/volumes", Scope: access.MachinesWrite, Handler: s.createVolume},
		{Method: "DELETE", Path: "/v1/volumes/{name}", Scope: access.MachinesWrite, Handler: s.deleteVolume},

		{Method: "POST", Path: "/v1/machines/{id}/commands", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/commands")},
		{Method: "GET", Path: "/v1/machines/{id}/commands", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/commands")},
		{Method: "GET", Path: "/v1/machines/{id}/commands/{pid}/output", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/commands/{pid}/output")},
		{Method: "POST", Path: "/v1/machines/{id}/commands/{pid}/stdin", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/commands/{pid}/stdin")},
		{Method: "POST", Path: "/v1/machines/{id}/commands/{pid}/signal", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/commands/{pid}/signal")},
		{Method: "POST", Path: "/v1/machines/{id}/commands/{pid}/resize", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/commands/{pid}/resize")},
		{Method: "GET", Path: "/v1/machines/{id}/commands/{pid}/attach", Scope: access.MachinesWrite, Where: Owner, Handler: s.attachCommand},
		{Method: "DELETE", Path: "/v1/machines/{id}/commands/{pid}", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/commands/{pid}")},

		{Method: "GET", Path: "/v1/machines/{id}/files", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/files")},
		{Method: "PUT", Path: "/v1/machines/{id}/files", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/files")},
		{Method: "DELETE", Path: "/v1/machines/{id}/files", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/files")},
		{Method: "GET", Path: "/v1/machines/{id}/files/list", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/files/list")},
		{Method: "GET", Path: "/v1/machines/{id}/files/stat", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/files/stat")},
		{Method: "POST", Path: "/v1/machines/{id}/files/mkdir", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/files/mkdir")},
		{Method: "POST", Path: "/v1/machines/{id}/files/rename", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/files/rename")},
		{Method: "GET", Path: "/v1/machines/{id}/files/watch", Scope: access.MachinesRead, Where: Owner, Handler: s.proxy("/files/watch")},
		{Method: "DELETE", Path: "/v1/machines/{id}/files/watch/{watch_id}", Scope: access.MachinesWrite, Where: Owner, Handler: s.proxy("/files/watch/{watch_id}")},

		{Method: "GET", Path: "/v1/templates", Scope: access.MachinesRead, Handler: s.listTemplates},
		{Method: "GET", Path: "/v1/templates/{name}", Scope: access.MachinesRead, Handler: s.getTemplate},
		{Method: "POST", Path: "/v1/templates", Scope: access.TemplatesWrite, Handler: s.buildTemplate},
		{Method: "DELETE", Path: "/v1/templates/{name}", Scope: access.TemplatesWrite, Handler: s.deleteTemplate},
	}, slices.Concat(s.accessRoutes(), s.quotaRoutes(), s.auditRoutes(), s.usageRoutes(), s.nodeRoutes())...)
}

// Handler returns the http.Handler serving every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.Routes() {
		mux.Handle(rt.Method+" "+rt.Path, s.wrap(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound,
			fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path), "see GET /v1/openapi.yaml for the API"))
	})
	return mux
}

func (s *Server) wrap(rt Route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var team string
		if !rt.Public {
			key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || key == "" {
				s.deny(w, r, nil, key, errdefs.ErrUnauthenticated)
				return
			}
			p, err := s.auth.Authenticate(r.Context(), key)
			if err != nil {
				if errors.Is(err, errdefs.ErrUnauthenticated) {
					s.deny(w, r, nil, key, err)
				} else {
					s.writeError(w, r, err)
				}
				return
			}
			p.Source = access.Source(r)
			// A forwarded call was counted by the node it reached.
			if ok, after := s.limits.Allow(access.RateKey(p)); !ok && !routing.Forwarded(r) {
				s.deny(w, r, p, "", errdefs.RateLimited("requests with this API key", after))
				return
			}
			if rt.Scope != "" && !p.Scopes.Has(rt.Scope) {
				s.deny(w, r, p, "", access.Need(rt.Scope))
				return
			}
			team = p.TeamID
			r = r.WithContext(access.WithPrincipal(r.Context(), p))
		}
		if s.route(w, r, rt, team) {
			return
		}
		if rt.Idempotent && s.idem != nil && r.Header.Get(idempotency.Header) != "" {
			s.serveIdempotent(w, r, team, rt)
			return
		}
		if err := rt.Handler(w, r, team); err != nil && !s.elsewhere(w, r, err) {
			s.writeError(w, r, err)
		}
	})
}

// writeError is the one place where errors become HTTP responses. The
// internal cause is logged, never sent.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := errdefs.Classify(err)
	s.telemetry.CountError(p.Code)
	msg := "request refused"
	if p.Status >= 500 {
		msg = "request failed"
	}
	s.logger.Log(r.Context(), p.LogLevel(), msg, "method", r.Method, "path", r.URL.Path, "code", p.Code, "err", err)
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", ratelimit.RetryAfterSeconds(p.RetryAfter))
	} else if p.Status == http.StatusServiceUnavailable || p.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", retryAfter)
	}
	body := api.Error{Code: p.Code, Message: p.Message, Retryable: p.Retryable, SuggestedAction: p.SuggestedAction}
	if p.Quota != nil {
		body.Quota = &api.QuotaExceeded{Name: p.Quota.Name, Limit: p.Quota.Limit, Used: p.Quota.Used}
	}
	writeJSON(w, p.Status, body)
}

// retryAfter is the Retry-After of every 503 and 429 the API sends, as the
// edge's (reference document 001: "503 Service Unavailable with
// Retry-After: 5").
const retryAfter = "5"

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// MaxBodyBytes bounds the JSON body of a request the API decodes itself
// (bodies streamed to a machine's agent, commands' and files', have the
// agent's limits); a larger one gets 413 body_too_large.
const MaxBodyBytes = 1 << 20

// decode reads a JSON body into v, refusing unknown fields so that typos
// fail loudly instead of being ignored.
func decode(r *http.Request, v any) error {
	body := reqbody.New(http.MaxBytesReader(nil, r.Body, MaxBodyBytes))
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		if body.Err != nil {
			return reqbody.Error(body.Err)
		}
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"invalid JSON body: "+err.Error(), "send a JSON object as described in api/openapi.yaml")
	}
	return nil
}

// parsePID reads the {pid} of a command route: a positive decimal number.
func parsePID(r *http.Request) (int, error) {
	s := r.PathValue("pid")
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != s {
		return 0, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("pid %q is not a process id", s), "use the pid that starting the command returned")
	}
	return pid, nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ string) error {
	out := map[string]any{"ok": true, "version": s.version}
	if s.node != "" {
		out["node"] = s.node
	}
	if s.e2b != nil {
		out["e2b"] = s.e2b
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) spec(w http.ResponseWriter, r *http.Request, _ string) error {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(api.Spec)
	return nil
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.CreateMachineRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	rec, err := s.machines.Create(r.Context(), team, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.machines.View(r.Context(), rec))
	return nil
}

// listMachines serves a page of the team's machines: one row per machine
// (its latest execution), or every execution id with include_aliases.
func (s *Server) listMachines(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	f := machine.ListFilter{State: q.Get("state"), Template: q.Get("template"), Metadata: map[string]string{}}
	switch v := q.Get("include_aliases"); v {
	case "", "false":
	case "true":
		f.Aliases = true
	default:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("include_aliases %q is not true or false", v), "use ?include_aliases=true to list every execution id")
	}
	pairs := q["metadata"]
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("metadata filter %q is not key=value", kv), "use ?metadata=key=value, repeated for more keys")
		}
		f.Metadata[k] = v
	}
	limit, err := page.Limit(q.Get("limit"))
	if err != nil {
		return err
	}
	scope := page.NewScope("machines", team, append([]string{f.State, f.Template, strconv.FormatBool(f.Aliases)}, page.Pairs(f.Metadata)...)...)
	var after store.MachineCursor
	if t, id, ok, err := page.DecodeTimeID(scope, q.Get("next_token")); err != nil {
		return err
	} else if ok {
		after = store.MachineCursor{Time: t, ID: id}
	}
	recs, more, err := s.machines.ListPage(r.Context(), team, f, after, limit)
	if err != nil {
		return err
	}
	out := api.MachineList{Machines: s.machines.Views(r.Context(), recs)}
	if more {
		c := store.CursorOf(recs[len(recs)-1], f.Aliases)
		out.NextToken = page.EncodeTimeID(scope, c.Time, c.ID)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.Get(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

func (s *Server) killMachine(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.Kill(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

// listTemplates serves a page of the templates, by name. The template
// store is a directory of a few entries read whole; the page is cut from it.
func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request, team string) error {
	scope := page.NewScope("templates", "")
	after, limit, err := namePage(r, scope)
	if err != nil {
		return err
	}
	ts, err := s.templates.List(r.Context())
	if err != nil {
		return err
	}
	ts = slices.DeleteFunc(ts, func(t api.Template) bool { return !template.Visible(t, team) })
	slices.SortFunc(ts, func(a, b api.Template) int { return strings.Compare(a.Name, b.Name) })
	ts = slices.DeleteFunc(ts, func(t api.Template) bool { return t.Name <= after })
	out := api.TemplateList{Templates: []api.Template{}}
	if len(ts) > limit {
		ts = ts[:limit]
		out.NextToken = page.Encode(scope, ts[len(ts)-1].Name)
	}
	out.Templates = append(out.Templates, ts...)
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request, team string) error {
	t, err := s.machines.Template(r.Context(), team, r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

func (s *Server) buildTemplate(w http.ResponseWriter, r *http.Request, team string) error {
	var t api.Template
	var err error
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		t, err = s.uploadTemplate(w, r, team)
	} else {
		var req api.BuildTemplateRequest
		if err := decode(r, &req); err != nil {
			return err
		}
		t, err = s.builder.Build(r.Context(), team, req)
	}
	if err != nil && !(t.Name != "" && t.State == api.TemplateFailed) {
		return err
	}
	// A build that failed because of its input (a step, the source) is
	// kept as a failed template that says why; it is answered like a build.
	writeJSON(w, http.StatusCreated, t)
	return nil
}

// uploadTemplate builds a template from a multipart/form-data body: a part
// named request (the JSON build request, naming no source), then a part
// named tarball (the root filesystem), streamed into the build.
func (s *Server) uploadTemplate(w http.ResponseWriter, r *http.Request, team string) (api.Template, error) {
	if r.ContentLength > s.maxUpload {
		return api.Template{}, errUploadTooLarge(s.maxUpload)
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.maxUpload)
	mr, err := r.MultipartReader()
	if err != nil {
		return api.Template{}, errUploadForm(err)
	}
	part, err := nextPart(mr, "request")
	if err != nil {
		return api.Template{}, err
	}
	var req api.BuildTemplateRequest
	dec := json.NewDecoder(io.LimitReader(part, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return api.Template{}, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"invalid JSON in the request part: "+err.Error(), "send the build request as JSON, as described in api/openapi.yaml")
	}
	part, err = nextPart(mr, "tarball")
	if err != nil {
		return api.Template{}, err
	}
	return s.builder.BuildUpload(r.Context(), team, req, uploadBody{part, s.maxUpload})
}

// nextPart reads the next part of an upload, which must be called name.
func nextPart(mr *multipart.Reader, name string) (*multipart.Part, error) {
	part, err := mr.NextPart()
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errUploadTooLarge(tooLarge.Limit)
		}
		if errors.Is(err, io.EOF) {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("the upload has no %s part", name), uploadAction)
		}
		return nil, errUploadForm(err)
	}
	if part.FormName() != name {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("the upload has a part %q where the %s part belongs", part.FormName(), name), uploadAction)
	}
	return part, nil
}

const uploadAction = "send a multipart/form-data body with a part named request (the JSON build request) " +
	"followed by a part named tarball (the root filesystem)"

func errUploadForm(err error) error {
	return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		"the upload is not a readable multipart/form-data body: "+err.Error(), uploadAction)
}

func errUploadTooLarge(limit int64) error {
	return &errdefs.Error{Class: errdefs.ErrInvalidArgument, Code: errdefs.CodeFileTooLarge, Status: http.StatusRequestEntityTooLarge,
		Message:         fmt.Sprintf("the uploaded tarball is larger than this server's limit of %d bytes", limit),
		SuggestedAction: "compress the tarball (gzip, zstd or xz) or make the root filesystem smaller, or ask the operator to raise --template-upload-max-bytes"}
}

// uploadBody gives the errors reading an upload their public class.
type uploadBody struct {
	r     io.Reader
	limit int64
}

func (u uploadBody) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	if err == nil || errors.Is(err, io.EOF) {
		return n, err
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return n, errUploadTooLarge(u.limit)
	}
	return n, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		"the upload broke off: "+err.Error(), "send it again")
}

// deleteTemplate deletes a template that nothing uses; built-in ones
// cannot be deleted.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request, team string) error {
	name := r.PathValue("name")
	if _, err := s.machines.Template(r.Context(), team, name); err != nil {
		return err
	}
	if err := s.templates.CheckDelete(r.Context(), name); err != nil {
		return err
	}
	if err := s.machines.DeleteTemplate(r.Context(), team, name, s.templates.Delete); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) stopMachine(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.StopMachineRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	grace := machine.DefaultStopGrace
	if req.GraceMS != nil {
		if *req.GraceMS < 0 || *req.GraceMS > machine.MaxStopGrace.Milliseconds() {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("grace_ms %d is out of range", *req.GraceMS),
				fmt.Sprintf("pass 0 (kill at once) to %d ms", machine.MaxStopGrace.Milliseconds()))
		}
		grace = time.Duration(*req.GraceMS) * time.Millisecond
	}
	rec, err := s.machines.Stop(r.Context(), team, r.PathValue("id"), grace)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

func (s *Server) startMachine(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.Start(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

// waitMachine blocks until the machine's main process exits; timeout_ms
// bounds the wait (504 deadline_exceeded when it passes first).
func (s *Server) waitMachine(w http.ResponseWriter, r *http.Request, team string) error {
	ctx := r.Context()
	var timeout int64
	if v := r.URL.Query().Get("timeout_ms"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > api.MaxDurationMS {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("timeout_ms %q is not a number of milliseconds from 1 to %d", v, api.MaxDurationMS), "omit it to wait as long as the connection lasts")
		}
		timeout = n
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*time.Millisecond)
		defer cancel()
	}
	exit, err := s.machines.Wait(ctx, team, r.PathValue("id"))
	if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
		return errdefs.New(errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
			fmt.Sprintf("the main process of machine %s was still running after %d ms", r.PathValue("id"), timeout), "wait again")
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, exit)
	return nil
}
