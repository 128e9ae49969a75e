// Package api holds the wire types of the Nullspace HTTP API, shared by the
// server, the Go client and the in-machine agent. The contract itself is
// api/openapi.yaml (embedded as Spec); a test keeps routes and spec in step.
package api

import (
	_ "embed"
	"time"
)

// Spec is the OpenAPI document describing the public API.
//
//go:embed openapi.yaml
var Spec []byte

// Error is the body of every non-2xx response.
type Error struct {
	Code            string `json:"code"`
	Message         string `json:"message"`
	Retryable       bool   `json:"retryable"`
	SuggestedAction string `json:"suggested_action,omitempty"`
}

// Machine states. The lifecycle is defined in internal/machine.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateKilling  = "killing"
	StateKilled   = "killed"
	StateFailed   = "failed"
)

// CreateMachineRequest is the body of POST /v1/machines.
type CreateMachineRequest struct {
	Template      string            `json:"template,omitempty"`  // default "base"
	CPUCount      int               `json:"cpu_count,omitempty"` // vCPUs; default 2
	MemoryMB      int               `json:"memory_mb,omitempty"` // default 512
	Env           map[string]string `json:"env,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	AllowInternet bool              `json:"allow_internet,omitempty"`
}

// Machine is the public view of a machine.
type Machine struct {
	ID            string            `json:"id"`
	State         string            `json:"state"`
	Template      string            `json:"template"`
	CPUCount      int               `json:"cpu_count"`
	MemoryMB      int               `json:"memory_mb"`
	Env           map[string]string `json:"env,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	AllowInternet bool              `json:"allow_internet"`
	IP            string            `json:"ip,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	StartedAt     *time.Time        `json:"started_at,omitempty"`
	EndedAt       *time.Time        `json:"ended_at,omitempty"`
	// Error says why a machine is failed; empty otherwise.
	Error string `json:"error,omitempty"`
}

// MachineList is the body of GET /v1/machines.
type MachineList struct {
	Machines []Machine `json:"machines"`
}

// RunCommandRequest is the body of POST /v1/machines/{id}/commands and of the
// agent's POST /commands.
type RunCommandRequest struct {
	// Exactly one of Cmd (argv) and Shell (a string run with /bin/sh -c).
	Cmd   []string          `json:"cmd,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Cwd   string            `json:"cwd,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	User  string            `json:"user,omitempty"` // name or uid; default root
	Stdin string            `json:"stdin,omitempty"`
	// KeepStdinOpen leaves stdin open for later writes (background commands).
	KeepStdinOpen bool `json:"keep_stdin_open,omitempty"`
	// TimeoutMS kills the command after this long; 0 means no limit for
	// background commands and the server default (60 s) for foreground ones.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Background returns at once with the pid; output is kept and can be
	// streamed with GET .../commands/{pid}/output.
	Background bool `json:"background,omitempty"`
	// Stream returns the command's events (start, stdout, stderr, exit) as a
	// stream (SSE or NDJSON, by the Accept header) instead of one result.
	Stream bool `json:"stream,omitempty"`
}

// CommandResult is the response of a foreground command.
type CommandResult struct {
	PID      int    `json:"pid"`
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// Signal names the signal that ended the process, if any (e.g. "SIGKILL").
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Truncated reports that output beyond the buffer limit was dropped
	// from the front of Stdout or Stderr.
	Truncated bool `json:"truncated,omitempty"`
}

// CommandStarted is the response of a background command.
type CommandStarted struct {
	PID int `json:"pid"`
}

// Event types of a command output stream.
const (
	EventStart  = "start"
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
)

// CommandEvent is one event of a command output stream. Data is raw bytes
// (base64 in JSON) so chunks that split a UTF-8 sequence or carry binary
// output survive intact.
type CommandEvent struct {
	Type string `json:"type"`
	PID  int    `json:"pid,omitempty"`
	Data []byte `json:"data,omitempty"`
	// Offset is the byte offset of Data in the stream named by Type
	// (stdout or stderr); with ?offset= a client resumes without duplicates.
	Offset   int64  `json:"offset,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    *Error `json:"error,omitempty"`
}

// Process describes a command the agent started.
type Process struct {
	PID       int       `json:"pid"`
	Cmd       []string  `json:"cmd"`
	Cwd       string    `json:"cwd,omitempty"`
	User      string    `json:"user,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Running   bool      `json:"running"`
	ExitCode  *int      `json:"exit_code,omitempty"`
}

// ProcessList is the body of GET .../commands.
type ProcessList struct {
	Processes []Process `json:"processes"`
}

// StdinRequest writes to a background command's stdin.
type StdinRequest struct {
	Data  string `json:"data,omitempty"`
	Close bool   `json:"close,omitempty"` // close stdin after writing Data
}

// SignalRequest sends a signal to a command's process group.
type SignalRequest struct {
	Signal string `json:"signal"` // e.g. "SIGTERM", "TERM" or "15"
}

// FileInfo describes a file in a machine.
type FileInfo struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	Type    string    `json:"type"` // "file", "dir", "symlink", "other"
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"` // octal permission bits, e.g. "0644"
	ModTime time.Time `json:"mod_time"`
	Target  string    `json:"symlink_target,omitempty"`
}

// FileList is the body of GET .../files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"`
}

// MkdirRequest is the body of POST .../files/mkdir.
type MkdirRequest struct {
	Path string `json:"path"`
}

// RenameRequest is the body of POST .../files/rename.
type RenameRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// WriteResult is the response of PUT .../files.
type WriteResult struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// Template states.
const (
	TemplateBuilding = "building"
	TemplateReady    = "ready"
	TemplateFailed   = "failed"
)

// Template is the public view of a template.
type Template struct {
	Name      string            `json:"name"`
	State     string            `json:"state"`
	Workdir   string            `json:"workdir,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	SizeBytes int64             `json:"size_bytes"`
	CreatedAt time.Time         `json:"created_at"`
	Error     string            `json:"error,omitempty"`
	// Source says what the template was built from, e.g. "builtin:base",
	// "template:base", "dir:/srv/rootfs", "tarball:/tmp/x.tar".
	Source string `json:"source,omitempty"`
}

// TemplateList is the body of GET /v1/templates.
type TemplateList struct {
	Templates []Template `json:"templates"`
}

// BuildTemplateRequest is the body of POST /v1/templates. Exactly one source:
// FromTemplate (an existing template), FromDir or FromTarball (paths on the
// server host). Steps are shell commands run inside a machine booted from the
// source; their changes become part of the new template.
type BuildTemplateRequest struct {
	Name         string            `json:"name"`
	FromTemplate string            `json:"from_template,omitempty"`
	FromDir      string            `json:"from_dir,omitempty"`
	FromTarball  string            `json:"from_tarball,omitempty"`
	Steps        []string          `json:"steps,omitempty"`
	Workdir      string            `json:"workdir,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
}
