package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// The lifecycle routes, called by the server around a checkpoint:
//
//	POST /lifecycle/prepare   before: run the pause hooks, sync
//	POST /lifecycle/restored  after every restore: adopt the new identity
//	                          (token, machine id, hostname, files), publish
//	                          restore.json, run the resume hooks
//	POST /lifecycle/stop      before the checkpoint of a stop: end every
//	                          process, clear /dev/shm (memory), sync
//	POST /lifecycle/main      start the machine's main process (at boot,
//	                          and at every start after a stop)
//
// Hooks run one after the other with /bin/sh -c, as the agent's user (root)
// in the default workdir, with NULLSPACE_EVENT (pause or resume) and
// NULLSPACE_MACHINE_ID set. They are ordinary commands of the process
// manager, so the reaper collects them like any other, and they are listed
// by GET /commands.

const (
	// defaultHookTimeout bounds all the hooks of one call together when
	// the request names no timeout.
	defaultHookTimeout = 30 * time.Second
	// hookOutputBytes is how much of a hook's output is reported: the end.
	hookOutputBytes = 4 << 10
	// maxLifecycleBody bounds lifecycle requests, files to rewrite included.
	maxLifecycleBody = 4 << 20
	// restoreFile is the name of the restore info in Config.RunDir.
	restoreFile = "restore.json"
	// hostNameMax is HOST_NAME_MAX, the longest name sethostname takes.
	hostNameMax = 64
)

// Hook events, as NULLSPACE_EVENT in a hook's environment.
const (
	eventPause  = "pause"
	eventResume = "resume"
)

func (a *Agent) prepare(w http.ResponseWriter, r *http.Request) error {
	var req api.AgentPrepareRequest
	if err := readJSON(w, r, maxLifecycleBody, &req); err != nil {
		return err
	}
	timeout, err := hookTimeout(req.TimeoutMS)
	if err != nil {
		return err
	}
	if err := checkHooks(req.Hooks); err != nil {
		return err
	}
	hooks, err := a.runHooks(r.Context(), eventPause, req.Hooks, timeout)
	if err != nil {
		return err
	}
	start := time.Now()
	syscall.Sync()
	res := api.AgentLifecycleResult{Hooks: hooks, SyncMS: ceilMS(time.Since(start))}
	a.log.Info("prepared for checkpoint", "hooks", len(req.Hooks), "sync_ms", res.SyncMS)
	writeJSON(w, http.StatusOK, res)
	return nil
}

// maxStopGrace bounds the grace period of a stop.
const maxStopGrace = 5 * time.Minute

func (a *Agent) stop(w http.ResponseWriter, r *http.Request) error {
	var req api.AgentStopRequest
	if err := readJSON(w, r, 1<<10, &req); err != nil {
		return err
	}
	grace := time.Duration(req.GraceMS) * time.Millisecond
	if req.GraceMS < 0 || grace > maxStopGrace {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("grace_ms %d is out of range", req.GraceMS), fmt.Sprintf("pass 0 to %d", maxStopGrace.Milliseconds()))
	}
	start := time.Now()
	res := a.procs.stopAll(r.Context(), grace)
	if os.Getpid() == 1 {
		// /dev/shm is memory: a stopped machine keeps its disk, not this.
		entries, _ := os.ReadDir("/dev/shm")
		for _, e := range entries {
			os.RemoveAll(filepath.Join("/dev/shm", e.Name()))
		}
	}
	syscall.Sync()
	a.log.Info("stopped every process", "ended", res.Ended, "killed", res.Killed, "took", time.Since(start).String())
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (a *Agent) startMain(w http.ResponseWriter, r *http.Request) error {
	var req api.RunCommandRequest
	if err := readJSON(w, r, maxLifecycleBody, &req); err != nil {
		return err
	}
	p, err := a.procs.startMain(req.Cmd)
	if err != nil {
		return err
	}
	a.log.Info("main process started", "pid", p.pid, "cmd", req.Cmd)
	writeJSON(w, http.StatusAccepted, api.CommandStarted{PID: p.pid})
	return nil
}

func (a *Agent) restored(w http.ResponseWriter, r *http.Request) error {
	var req api.AgentRestoredRequest
	if err := readJSON(w, r, maxLifecycleBody, &req); err != nil {
		return err
	}
	now := time.Now()
	var skew int64
	if !req.Now.IsZero() {
		skew = now.Sub(req.Now).Milliseconds()
	}
	files, err := checkRestored(req)
	if err != nil {
		return err
	}
	timeout, err := hookTimeout(req.TimeoutMS)
	if err != nil {
		return err
	}
	if err := a.adopt(req, files, now); err != nil {
		return err
	}
	a.watches.restored()
	a.log.Info("restored", "machine_id", req.MachineID, "hostname", req.Hostname,
		"restore_count", a.restore.Load().RestoreCount, "clock_skew_ms", skew)
	hooks, err := a.runHooks(r.Context(), eventResume, req.Hooks, timeout)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.AgentLifecycleResult{Hooks: hooks, ClockSkewMS: skew})
	return nil
}

// adopt gives the machine the identity in req and records the restore.
// What can fail comes first (the files, restore.json): a failed call
// leaves the old identity and token in place and may be retried as is.
func (a *Agent) adopt(req api.AgentRestoredRequest, files []fileContent, now time.Time) error {
	a.restoreMu.Lock()
	defer a.restoreMu.Unlock()
	for _, f := range files {
		if err := a.files.replace(f.path, f.data); err != nil {
			return fmt.Errorf("rewrite %s: %w", f.path, err)
		}
	}
	info := *a.restore.Load()
	info.MachineID = req.MachineID
	info.RestoreCount++
	info.RestoredAt = now.UTC()
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode restore info: %w", err)
	}
	if err := a.files.replace(filepath.Join(a.cfg.RunDir, restoreFile), string(b)+"\n"); err != nil {
		return fmt.Errorf("publish restore info: %w", err)
	}

	a.setToken(req.Token)
	a.procs.setBaseEnv(machineIDEnv, req.MachineID)
	a.restore.Store(&info)
	if err := syscall.Sethostname([]byte(req.Hostname)); err != nil {
		// Expected only outside a machine (tests without CAP_SYS_ADMIN).
		a.log.Warn("cannot set hostname", "hostname", req.Hostname, "err", err)
	}
	return nil
}

// fileContent is a file a restore rewrites.
type fileContent struct {
	path, data string
}

// checkRestored validates req and returns its files by cleaned path, in
// path order.
func checkRestored(req api.AgentRestoredRequest) ([]fileContent, error) {
	switch {
	case req.MachineID == "" || strings.IndexByte(req.MachineID, 0) >= 0:
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"machine_id is required and must not contain NUL bytes", "pass the restored machine's id")
	case req.Token == "":
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"token is required", "pass the agent token of the restored machine")
	case !validHostname(req.Hostname):
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid hostname %q", req.Hostname),
			fmt.Sprintf("pass at most %d letters, digits, hyphens and dots, in labels that neither start nor end with a hyphen", hostNameMax))
	}
	if err := checkHooks(req.Hooks); err != nil {
		return nil, err
	}
	files := make([]fileContent, 0, len(req.Files))
	for p, data := range req.Files {
		clean, err := cleanPath(p)
		if err != nil {
			return nil, err
		}
		files = append(files, fileContent{clean, data})
	}
	slices.SortFunc(files, func(a, b fileContent) int { return strings.Compare(a.path, b.path) })
	return files, nil
}

// validHostname reports whether name is a host name (RFC 1123) the kernel
// takes: dot-separated labels of letters, digits and hyphens, neither
// starting nor ending with a hyphen, HOST_NAME_MAX bytes at most.
func validHostname(name string) bool {
	if name == "" || len(name) > hostNameMax {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func checkHooks(hooks []string) error {
	for i, h := range hooks {
		if strings.IndexByte(h, 0) >= 0 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("hook %d contains a NUL byte", i), "remove NUL bytes from the hook commands")
		}
	}
	return nil
}

func hookTimeout(ms int64) (time.Duration, error) {
	switch {
	case ms < 0 || ms > api.MaxDurationMS:
		return 0, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"timeout_ms is out of range", "pass 0 for the default of 30 s or a positive number of milliseconds up to a year")
	case ms == 0:
		return defaultHookTimeout, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// runHooks runs hooks in order, all within timeout. A failing hook does
// not stop the next; one still running at the deadline is killed with its
// process group and the remaining hooks are skipped: they are missing from
// the result. It fails only when ctx ends, killing the running hook.
func (a *Agent) runHooks(ctx context.Context, event string, hooks []string, timeout time.Duration) ([]api.HookResult, error) {
	deadline := time.Now().Add(timeout)
	results := make([]api.HookResult, 0, len(hooks))
	for _, hook := range hooks {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		// A hook that times out ran until the deadline: the check above
		// skips the rest.
		res, err := a.runHook(ctx, event, hook, left)
		if err != nil {
			return nil, fmt.Errorf("run %s hooks: %w", event, err)
		}
		results = append(results, res)
	}
	if skipped := len(hooks) - len(results); skipped > 0 {
		a.log.Warn("hooks timed out", "event", event, "timeout", timeout.String(), "skipped", skipped)
	}
	return results, nil
}

// runHook runs one hook for at most timeout. A hook that cannot be started
// is reported with exit code -1 and the reason as its output.
func (a *Agent) runHook(ctx context.Context, event, hook string, timeout time.Duration) (api.HookResult, error) {
	start := time.Now()
	res := api.HookResult{Command: hook}
	p, err := a.procs.start(api.RunCommandRequest{
		// exec 2>&1 sends stderr into stdout, interleaved as written.
		Shell:     "exec 2>&1\n" + hook,
		Env:       map[string]string{"NULLSPACE_EVENT": event, machineIDEnv: a.restore.Load().MachineID},
		TimeoutMS: ceilMS(timeout),
	})
	if err != nil {
		a.log.Warn("cannot start hook", "event", event, "err", err)
		res.ExitCode = -1
		res.Output = errdefs.Classify(err).Message
		res.DurationMS = time.Since(start).Milliseconds()
		return res, nil
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.signal(syscall.SIGKILL)
		return res, ctx.Err()
	}
	out := p.result()
	res.ExitCode = out.ExitCode
	res.TimedOut = out.TimedOut
	if res.TimedOut {
		res.ExitCode = -1
	}
	res.Output = tail(out.Stdout, hookOutputBytes)
	res.DurationMS = time.Since(start).Milliseconds()
	a.log.Info("hook done", "event", event, "pid", out.PID, "exit_code", res.ExitCode,
		"timed_out", res.TimedOut, "duration_ms", res.DurationMS)
	return res, nil
}

// tail returns the last n bytes of s at most, starting on a character.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for i := 0; i < utf8.UTFMax-1 && s != "" && !utf8.RuneStart(s[0]); i++ {
		s = s[1:]
	}
	return s
}

// ceilMS is d in milliseconds, rounded up: a step that took any time at
// all never reads as 0.
func ceilMS(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// replace writes data to path atomically (temp file, rename), mode 0644.
// A bind-mounted file cannot be renamed over (EBUSY): it is rewritten in
// place instead, which readers may see half done.
func (s *fileService) replace(path, data string) error {
	_, err := s.write(identity{}, path, 0o644, true, false, nil, strings.NewReader(data))
	if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fileError(err, path)
	}
	_, err = f.WriteString(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fileError(err, path)
	}
	return nil
}
