package e2bcompat

import (
	"encoding/json"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// The JSON of E2B's REST API (its spec/openapi.yml), as the SDKs read and
// write it.

// newSandbox is the body of POST /sandboxes and /v2/sandboxes. Fields the
// layer does not map (mcp, iam, secure: every sandbox's envd needs its
// access token) are ignored.
type newSandbox struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"` // seconds
	AutoPause           *bool             `json:"autoPause"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory"` // false: the timeout's pause keeps only the files
	AutoResume          autoResume        `json:"autoResume"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	Network             *struct {
		AllowPublicTraffic *bool `json:"allowPublicTraffic"`
	} `json:"network"`
	VolumeMounts []struct {
		Name string `json:"name"`
		Path string `json:"path"`
	} `json:"volumeMounts"`
}

// autoResume is {"enabled": bool}, or a bare bool from older clients.
type autoResume struct{ Enabled bool }

func (a *autoResume) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &a.Enabled); err == nil {
		return nil
	}
	var v struct {
		Enabled bool `json:"enabled"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	a.Enabled = v.Enabled
	return nil
}

// sandbox answers create, connect and resume.
type sandbox struct {
	TemplateID         string  `json:"templateID"`
	SandboxID          string  `json:"sandboxID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

// clientID is deprecated in E2B and required in its schema.
const clientID = "nullspace"

func (s *Server) sandbox(rec *store.Machine) sandbox {
	out := sandbox{TemplateID: template(rec), SandboxID: sandboxID(rec), Alias: rec.Template, ClientID: clientID,
		EnvdVersion: EnvdVersion, EnvdAccessToken: s.accessToken(rec.LineageID)}
	if s.cfg.Domain != "" {
		out.Domain = &s.cfg.Domain
	}
	// The edge takes the token for a private sandbox of this API only.
	if !rec.PublicPorts && rec.Origin == store.OriginE2B {
		tok := s.TrafficToken(rec.LineageID)
		out.TrafficAccessToken = &tok
	}
	return out
}

// template is a sandbox's template id: the template's name, or the
// snapshot it was made from.
func template(rec *store.Machine) string {
	if rec.Template == "" {
		return rec.SnapshotID
	}
	return rec.Template
}

// listedSandbox is an entry of GET /v2/sandboxes.
type listedSandbox struct {
	TemplateID   string            `json:"templateID"`
	Alias        string            `json:"alias,omitempty"`
	SandboxID    string            `json:"sandboxID"`
	ClientID     string            `json:"clientID"`
	StartedAt    time.Time         `json:"startedAt"`
	EndAt        time.Time         `json:"endAt"`
	CPUCount     int               `json:"cpuCount"`
	MemoryMB     int               `json:"memoryMB"`
	DiskSizeMB   int               `json:"diskSizeMB"`
	Metadata     map[string]string `json:"metadata"`
	State        string            `json:"state"`
	EnvdVersion  string            `json:"envdVersion"`
	VolumeMounts []volumeMount     `json:"volumeMounts"`
}

type volumeMount struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

func (s *Server) listed(rec *store.Machine) listedSandbox {
	out := listedSandbox{TemplateID: template(rec), Alias: rec.Template, SandboxID: sandboxID(rec), ClientID: clientID,
		StartedAt: rec.LineageCreated.UTC(), EndAt: endAt(rec), CPUCount: rec.CPUCount, MemoryMB: rec.MemoryMB, DiskSizeMB: rec.DiskMB,
		Metadata: rec.Metadata, State: state(rec), EnvdVersion: EnvdVersion, VolumeMounts: []volumeMount{}}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	for _, v := range rec.Volumes {
		out.VolumeMounts = append(out.VolumeMounts, volumeMount{Name: v.Name, Path: v.Path})
	}
	return out
}

// endAt is when the sandbox's lease ends: its deadline, or for a machine
// without a running lease (paused, or no timeout) the time now plus what
// is left of it.
func endAt(rec *store.Machine) time.Time {
	if !rec.Deadline.IsZero() {
		return rec.Deadline.UTC()
	}
	return time.Now().Add(time.Duration(rec.TimeoutMS) * time.Millisecond).UTC()
}

// sandboxDetail answers GET /sandboxes/{id}.
type sandboxDetail struct {
	listedSandbox
	EnvdAccessToken     string    `json:"envdAccessToken"`
	AllowInternetAccess bool      `json:"allowInternetAccess"`
	Domain              *string   `json:"domain"`
	Lifecycle           lifecycle `json:"lifecycle"`
}

// lifecycle is E2B's SandboxLifecycle, which has no field for the kind of
// pause: a sandbox created with autoPauseMemory false (our on_timeout
// "stop") shows onTimeout "pause", as E2B shows it.
type lifecycle struct {
	AutoResume bool   `json:"autoResume"`
	OnTimeout  string `json:"onTimeout"` // pause or kill
}

func (s *Server) detail(rec *store.Machine) sandboxDetail {
	out := sandboxDetail{listedSandbox: s.listed(rec), EnvdAccessToken: s.accessToken(rec.LineageID),
		AllowInternetAccess: rec.AllowInternet, Lifecycle: lifecycle{AutoResume: rec.AutoResume, OnTimeout: "kill"}}
	if rec.OnTimeout == api.TimeoutPause || rec.OnTimeout == api.TimeoutStop {
		out.Lifecycle.OnTimeout = "pause"
	}
	if s.cfg.Domain != "" {
		out.Domain = &s.cfg.Domain
	}
	return out
}

type sandboxMetric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       uint64    `json:"memUsed"`
	MemTotal      uint64    `json:"memTotal"`
	MemCache      uint64    `json:"memCache"`
	DiskUsed      uint64    `json:"diskUsed"`
	DiskTotal     uint64    `json:"diskTotal"`
}

type forkResult struct {
	Sandbox *sandbox   `json:"sandbox,omitempty"`
	Error   *errorBody `json:"error,omitempty"`
}

type snapshotInfo struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// errorBody is E2B's error: the HTTP status as a number (the JS SDK reads
// it), the message, and our stable code.
type errorBody struct {
	Code      int    `json:"code"`
	ErrorCode string `json:"error_code,omitempty"`
	Message   string `json:"message"`
}
