package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"syscall"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// maxCommandBody bounds JSON bodies that may carry stdin data.
const maxCommandBody = 32 << 20

func (a *Agent) runCommand(w http.ResponseWriter, r *http.Request) error {
	var req api.RunCommandRequest
	if err := readJSON(w, r, maxCommandBody, &req); err != nil {
		return err
	}
	p, err := a.procs.start(req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	switch {
	case req.Background && req.Stream:
		// A command that outlives its stream (E2B's commands): the
		// stream ending, for whatever reason, leaves it running.
		a.streamOutput(ctx, w, p, 0, 0, true, true)
	case req.Background:
		writeJSON(w, http.StatusAccepted, api.CommandStarted{PID: p.pid})
	case req.Stream:
		err := a.streamOutput(ctx, w, p, 0, 0, true, true)
		if err != nil && !p.hasExited() {
			a.log.Info("stream client gone, killing command", "pid", p.pid, "err", err)
			p.signal(syscall.SIGKILL)
		}
	default:
		select {
		case <-p.done:
			writeJSON(w, http.StatusOK, p.result())
		case <-ctx.Done():
			if !p.hasExited() {
				a.log.Info("client gone, killing command", "pid", p.pid)
				p.signal(syscall.SIGKILL)
			}
		}
	}
	return nil
}

func (a *Agent) listCommands(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, api.ProcessList{Processes: a.procs.list()})
	return nil
}

func (a *Agent) commandOutput(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	follow, err := queryBool(r, "follow")
	if err != nil {
		return err
	}
	live, err := queryBool(r, "live")
	if err != nil {
		return err
	}
	var offsets [2]int64
	for i, name := range []string{"stdout_offset", "stderr_offset"} {
		if offsets[i], err = queryCount(r, name, "pass a byte offset of 0 or more"); err != nil {
			return err
		}
	}
	if live {
		// Only what is written from now on: the buffered output is skipped.
		p.out.mu.Lock()
		offsets[0], offsets[1] = p.out.stdout.end, p.out.stderr.end
		p.out.mu.Unlock()
	}
	a.streamOutput(r.Context(), w, p, offsets[0], offsets[1], follow, false)
	return nil
}

// streamOutput writes NDJSON events: a start event if asked, the buffered
// output from the given offsets, live output while follow is set, and an
// exit event once the process has finished. It returns an error when the
// client went away before the process finished.
func (a *Agent) streamOutput(ctx context.Context, w http.ResponseWriter, p *process,
	stdoutOff, stderrOff int64, follow, start bool) error {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if start {
		if err := enc.Encode(api.CommandEvent{Type: api.EventStart, PID: p.pid}); err != nil {
			return err
		}
	}
	for {
		p.out.mu.Lock()
		outData, outFrom := p.out.stdout.readAt(stdoutOff, readChunk)
		errData, errFrom := p.out.stderr.readAt(stderrOff, readChunk)
		finished, exit, changed := p.out.finished, p.out.exit, p.out.changed
		p.out.mu.Unlock()

		if len(outData) > 0 {
			if err := enc.Encode(api.CommandEvent{Type: api.EventStdout, Data: outData, Offset: outFrom}); err != nil {
				return err
			}
			stdoutOff = outFrom + int64(len(outData))
		}
		if len(errData) > 0 {
			if err := enc.Encode(api.CommandEvent{Type: api.EventStderr, Data: errData, Offset: errFrom}); err != nil {
				return err
			}
			stderrOff = errFrom + int64(len(errData))
		}
		if len(outData) > 0 || len(errData) > 0 {
			continue // more may be buffered; flush when caught up
		}
		if finished {
			code := exit.code
			err := enc.Encode(api.CommandEvent{Type: api.EventExit, PID: p.pid, ExitCode: &code,
				Signal: exit.signal, TimedOut: exit.timedOut})
			if err == nil {
				err = rc.Flush()
			}
			return err
		}
		if err := rc.Flush(); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (a *Agent) commandStdin(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	var req api.StdinRequest
	if err := readJSON(w, r, maxCommandBody, &req); err != nil {
		return err
	}
	if err := p.writeStdin(r.Context(), append([]byte(req.Data), req.Bytes...), req.Close); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// commandStdinStream copies its request body to a command's stdin as it
// comes: one request for a whole session's keystrokes instead of one per
// keystroke. It answers when the body ends.
func (a *Agent) commandStdinStream(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for {
		n, rerr := r.Body.Read(buf)
		if n > 0 {
			if err := p.writeStdin(r.Context(), buf[:n], false); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return nil // the client went away
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resizeCommand changes the size of a command's terminal.
func (a *Agent) resizeCommand(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	var req api.PTYSize
	if err := readJSON(w, r, 1<<10, &req); err != nil {
		return err
	}
	if err := p.resize(req); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *Agent) signalCommand(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	var req api.SignalRequest
	if err := readJSON(w, r, 1<<10, &req); err != nil {
		return err
	}
	sig, err := parseSignal(req.Signal)
	if err != nil {
		return err
	}
	if err := p.signal(sig); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *Agent) killCommand(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// waitCommand answers once the command has exited and its output is
// collected, with how it ended; it blocks until then or until the request
// ends.
func (a *Agent) waitCommand(w http.ResponseWriter, r *http.Request) error {
	p, err := a.process(r)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-r.Context().Done():
		return r.Context().Err()
	}
	es := p.exitStatus()
	writeJSON(w, http.StatusOK, api.MainExit{ExitCode: es.code, Signal: es.signal, At: p.exitedAt.UTC()})
	return nil
}

// process finds the process named by the {pid} path value.
func (a *Agent) process(r *http.Request) (*process, error) {
	s := r.PathValue("pid")
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("invalid pid %q", s), "pass the pid returned when the command started")
	}
	return a.procs.get(pid)
}
