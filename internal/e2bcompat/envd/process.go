package envd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process/processconnect"
	"nullspace.dev/nullspace/internal/errdefs"
)

// processService is process.Process over the agent's commands: a process
// is a background command (it outlives any stream of its output), a PTY
// process a command on a terminal.
type processService struct{ s *Server }

var _ processconnect.ProcessHandler = (*processService)(nil)

// keepaliveHeader is how often (seconds) the SDKs want a keepalive event
// on an idle stream, so that proxies do not cut it.
const keepaliveHeader = "Keepalive-Ping-Interval"

func (p *processService) Start(ctx context.Context, req *connect.Request[process.StartRequest], stream *connect.ServerStream[process.StartResponse]) error {
	cfg := req.Msg.GetProcess()
	if cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is empty: name the program to run"))
	}
	sb, err := p.s.open(ctx, request(req.Header()))
	if err != nil {
		return rpcError(err)
	}
	defer sb.Done()
	user := userOf(req.Header())
	run := api.RunCommandRequest{
		Cmd: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: cfg.GetEnvs(), User: user,
		Cwd: resolve(cfg.GetCwd(), user), Background: true,
		// envd keeps stdin open unless told otherwise (older SDKs do not
		// say); a PTY always has it.
		KeepStdinOpen: req.Msg.Stdin == nil || req.Msg.GetStdin(),
	}
	pty := req.Msg.GetPty().GetSize()
	if pty != nil {
		run.PTY = &api.PTYSize{Rows: int(pty.GetRows()), Cols: int(pty.GetCols())}
	}
	events, err := sb.Agent.Stream(sb.Ctx, run)
	if err != nil {
		return rpcError(err)
	}
	defer events.Close()
	tag := req.Msg.GetTag()
	return p.s.relay(ctx, sb, events, run.PTY != nil, keepalive(req.Header()), func(ev *process.ProcessEvent) error {
		if start := ev.GetStart(); start != nil && tag != "" {
			p.s.setTag(sb.Lineage, tag, start.GetPid())
		}
		return stream.Send(&process.StartResponse{Event: ev})
	})
}

func (p *processService) Connect(ctx context.Context, req *connect.Request[process.ConnectRequest], stream *connect.ServerStream[process.ConnectResponse]) error {
	sb, err := p.s.open(ctx, request(req.Header()))
	if err != nil {
		return rpcError(err)
	}
	defer sb.Done()
	pid, err := p.s.pidOf(sb, req.Msg.GetProcess())
	if err != nil {
		return err
	}
	procs, err := sb.Agent.ListProcesses(sb.Ctx)
	if err != nil {
		return rpcError(err)
	}
	isPTY, found := false, false
	for _, pr := range procs.Processes {
		if pr.PID == int(pid) {
			found, isPTY = true, pr.PTY != nil
		}
	}
	if !found {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", pid))
	}
	// Like envd, a connection sees output from now on, not what was
	// written before it.
	events, err := sb.Agent.Output(sb.Ctx, int(pid), agentclient.OutputOptions{Follow: true, Live: true})
	if err != nil {
		return rpcError(err)
	}
	defer events.Close()
	send := func(ev *process.ProcessEvent) error { return stream.Send(&process.ConnectResponse{Event: ev}) }
	if err := send(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: pid}}}); err != nil {
		return err
	}
	return p.s.relay(ctx, sb, events, isPTY, keepalive(req.Header()), send)
}

// keepalive is the interval a client asked for, or 50 s.
func keepalive(h http.Header) time.Duration {
	if n, err := strconv.Atoi(h.Get(keepaliveHeader)); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 50 * time.Second
}

// relay turns a command's agent events into envd's process events, with a
// keepalive event whenever the stream has been quiet for interval. It ends
// with the exit, or with an error: the machine stopped running
// (unavailable), the call's deadline (Connect-Timeout-Ms) passed, or the
// client went away; the process runs on in every case.
func (s *Server) relay(ctx context.Context, sb *Sandbox, events *agentclient.EventStream, pty bool, interval time.Duration, send func(*process.ProcessEvent) error) error {
	cut := connect.NewError(connect.CodeUnavailable, errors.New("the process's output stream ended without its exit"))
	keep := func() error {
		return send(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}})
	}
	return follow(ctx, sb, events, interval, cut, keep, func(ev api.CommandEvent) (bool, error) {
		sb.Touch()
		if out := processEvent(ev, pty); out != nil {
			if err := send(out); err != nil {
				return false, err
			}
		}
		return ev.Type == api.EventExit, nil
	})
}

// follow relays an agent stream to a client: each event to handle, which
// says when the stream is done, and keepalive after interval of quiet. It
// returns handle's error, or why the stream ended first: the call's end
// (streamEnded), the agent's error, or cut for a stream that ended cleanly
// but too soon (nil: that is its end).
func follow[T any](ctx context.Context, sb *Sandbox, s *agentclient.Stream[T], interval time.Duration, cut error,
	keepalive func() error, handle func(T) (done bool, err error)) error {
	ch := make(chan T)
	go func() {
		defer close(ch)
		for s.Next() {
			select {
			case ch <- s.Event():
			case <-sb.Ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				if sb.Ctx.Err() != nil {
					return streamEnded(ctx, sb)
				}
				if err := s.Err(); err != nil {
					if sb.Gone != nil && sb.Gone(context.WithoutCancel(ctx)) {
						// The agent's stream broke as the kill took the
						// machine, before the call's context ended.
						return gone(sb)
					}
					return rpcError(err)
				}
				return cut
			}
			if done, err := handle(ev); done || err != nil {
				return err
			}
			tick.Reset(interval)
		case <-tick.C:
			if err := keepalive(); err != nil {
				return err
			}
		case <-sb.Ctx.Done():
			return streamEnded(ctx, sb)
		}
	}
}

// streamEnded says why a stream ended before its process did: the call's
// deadline (Connect-Timeout-Ms), the client, or the machine, which stopped
// running. The process runs on in every case.
func streamEnded(ctx context.Context, sb *Sandbox) error {
	switch err := ctx.Err(); {
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded,
			errors.New("the stream's timeout passed; the process runs on: connect to it by pid to follow it"))
	case err != nil:
		return connect.NewError(connect.CodeCanceled, err)
	}
	if sb.Gone != nil && sb.Gone(context.WithoutCancel(ctx)) {
		return gone(sb)
	}
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("machine %s stopped running (paused); "+
		"a paused machine keeps its processes: connect to the sandbox, then to the process by pid", sb.MachineID))
}

// gone is the error of a stream whose sandbox went away for good:
// unavailable, which every SDK release makes a TimeoutError, with E2B's own
// words in its message.
func gone(sb *Sandbox) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s (machine %s is gone); start a new sandbox",
		killedText, sb.MachineID))
}

// processEvent is an agent event as envd's, or nil for none.
func processEvent(ev api.CommandEvent, pty bool) *process.ProcessEvent {
	switch ev.Type {
	case api.EventStart:
		return &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: uint32(ev.PID)}}}
	case api.EventStdout, api.EventStderr:
		data := &process.ProcessEvent_DataEvent{}
		switch {
		case pty:
			data.Output = &process.ProcessEvent_DataEvent_Pty{Pty: ev.Data}
		case ev.Type == api.EventStdout:
			data.Output = &process.ProcessEvent_DataEvent_Stdout{Stdout: ev.Data}
		default:
			data.Output = &process.ProcessEvent_DataEvent_Stderr{Stderr: ev.Data}
		}
		return &process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: data}}
	case api.EventExit:
		return &process.ProcessEvent{Event: &process.ProcessEvent_End{End: endEvent(ev)}}
	}
	return nil
}

// endEvent is an exit as envd reports it, after Go's os.ProcessState:
// "exit status N", or exit code -1 and "signal: killed".
func endEvent(ev api.CommandEvent) *process.ProcessEvent_EndEvent {
	end := &process.ProcessEvent_EndEvent{Exited: true}
	if ev.ExitCode != nil {
		end.ExitCode = int32(*ev.ExitCode)
	}
	end.Status = "exit status " + strconv.Itoa(int(end.ExitCode))
	if ev.Signal != "" {
		end.Exited, end.ExitCode = false, -1
		name := ev.Signal
		if n := unix.SignalNum(strings.ToUpper(name)); n != 0 {
			name = n.String()
		}
		end.Status = "signal: " + name
	}
	if ev.TimedOut {
		msg := "the command's timeout passed and it was killed"
		end.Error = &msg
	}
	if ev.Error != nil {
		msg := ev.Error.Message
		end.Error = &msg
	}
	return end
}

func (p *processService) List(ctx context.Context, req *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	sb, err := p.s.open(ctx, request(req.Header()))
	if err != nil {
		return nil, rpcError(err)
	}
	defer sb.Done()
	procs, err := sb.Agent.ListProcesses(sb.Ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	tags := p.s.tagsOf(sb.Lineage)
	out := &process.ListResponse{}
	for _, pr := range procs.Processes {
		if !pr.Running || len(pr.Cmd) == 0 {
			continue
		}
		info := &process.ProcessInfo{Pid: uint32(pr.PID), Config: &process.ProcessConfig{Cmd: pr.Cmd[0], Args: pr.Cmd[1:], Envs: map[string]string{}}}
		if pr.Cwd != "" {
			info.Config.Cwd = &pr.Cwd
		}
		if tag, ok := tags[uint32(pr.PID)]; ok {
			info.Tag = &tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (p *processService) SendInput(ctx context.Context, req *connect.Request[process.SendInputRequest]) (*connect.Response[process.SendInputResponse], error) {
	err := p.withPid(ctx, req.Header(), req.Msg.GetProcess(), func(sb *Sandbox, pid int) error {
		in := req.Msg.GetInput()
		data := in.GetStdin()
		if in.GetPty() != nil {
			data = in.GetPty()
		}
		return sb.Agent.WriteStdin(sb.Ctx, pid, api.StdinRequest{Bytes: data})
	})
	return connect.NewResponse(&process.SendInputResponse{}), err
}

func (p *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[process.StreamInputRequest]) (*connect.Response[process.StreamInputResponse], error) {
	sb, err := p.s.open(ctx, request(stream.RequestHeader()))
	if err != nil {
		return nil, rpcError(err)
	}
	defer sb.Done()
	var stdin *agentclient.StdinStream
	defer func() {
		if stdin != nil {
			stdin.Close()
		}
	}()
	for stream.Receive() {
		msg := stream.Msg()
		switch {
		case msg.GetStart() != nil:
			pid, err := p.s.pidOf(sb, msg.GetStart().GetProcess())
			if err != nil {
				return nil, err
			}
			if stdin == nil {
				stdin = sb.Agent.OpenStdin(sb.Ctx, int(pid))
			}
		case msg.GetData() != nil:
			if stdin == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("send a start event naming the process before data"))
			}
			in := msg.GetData().GetInput()
			data := in.GetStdin()
			if in.GetPty() != nil {
				data = in.GetPty()
			}
			if _, err := stdin.Write(data); err != nil {
				return nil, rpcError(err)
			}
			sb.Touch()
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if stdin != nil {
		if err := stdin.Close(); err != nil {
			return nil, rpcError(err)
		}
		stdin = nil
	}
	return connect.NewResponse(&process.StreamInputResponse{}), nil
}

func (p *processService) SendSignal(ctx context.Context, req *connect.Request[process.SendSignalRequest]) (*connect.Response[process.SendSignalResponse], error) {
	var sig string
	switch req.Msg.GetSignal() {
	case process.Signal_SIGNAL_SIGKILL:
		sig = "SIGKILL"
	case process.Signal_SIGNAL_SIGTERM:
		sig = "SIGTERM"
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %v is not SIGNAL_SIGTERM or SIGNAL_SIGKILL", req.Msg.GetSignal()))
	}
	err := p.withPid(ctx, req.Header(), req.Msg.GetProcess(), func(sb *Sandbox, pid int) error {
		return sb.Agent.Signal(sb.Ctx, pid, sig)
	})
	return connect.NewResponse(&process.SendSignalResponse{}), err
}

func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[process.CloseStdinRequest]) (*connect.Response[process.CloseStdinResponse], error) {
	err := p.withPid(ctx, req.Header(), req.Msg.GetProcess(), func(sb *Sandbox, pid int) error {
		return sb.Agent.WriteStdin(sb.Ctx, pid, api.StdinRequest{Close: true})
	})
	return connect.NewResponse(&process.CloseStdinResponse{}), err
}

func (p *processService) Update(ctx context.Context, req *connect.Request[process.UpdateRequest]) (*connect.Response[process.UpdateResponse], error) {
	size := req.Msg.GetPty().GetSize()
	if size == nil {
		return connect.NewResponse(&process.UpdateResponse{}), nil // nothing to change
	}
	err := p.withPid(ctx, req.Header(), req.Msg.GetProcess(), func(sb *Sandbox, pid int) error {
		return sb.Agent.Resize(sb.Ctx, pid, api.PTYSize{Rows: int(size.GetRows()), Cols: int(size.GetCols())})
	})
	return connect.NewResponse(&process.UpdateResponse{}), err
}

// withPid runs fn on the sandbox and the process a unary call selects,
// with errors as Connect errors (nil stays nil).
func (p *processService) withPid(ctx context.Context, h http.Header, sel *process.ProcessSelector, fn func(*Sandbox, int) error) error {
	sb, err := p.s.open(ctx, request(h))
	if err != nil {
		return rpcError(err)
	}
	defer sb.Done()
	pid, err := p.s.pidOf(sb, sel)
	if err != nil {
		return err
	}
	if err := fn(sb, int(pid)); err != nil {
		var e *errdefs.Error
		if errors.As(err, &e) && e.Code == errdefs.CodeProcessNotFound {
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", pid))
		}
		return rpcError(err)
	}
	return nil
}

// pidOf is the pid a selector names: a pid, or a tag given at start.
func (s *Server) pidOf(sb *Sandbox, sel *process.ProcessSelector) (uint32, error) {
	switch v := sel.GetSelector().(type) {
	case *process.ProcessSelector_Pid:
		return v.Pid, nil
	case *process.ProcessSelector_Tag:
		s.mu.Lock()
		pid, ok := s.tags[sb.Lineage][v.Tag]
		s.mu.Unlock()
		if !ok {
			return 0, connect.NewError(connect.CodeNotFound, fmt.Errorf("no process with tag %q", v.Tag))
		}
		return pid, nil
	}
	return 0, connect.NewError(connect.CodeInvalidArgument, errors.New("select the process by pid or tag"))
}

// maxTags bounds the tags kept per sandbox, and maxTagged the sandboxes
// with tags: beyond them, arbitrary old entries are forgotten (a tag names
// a process for as long as a client cares to, not forever).
const (
	maxTags   = 256
	maxTagged = 4096
)

func (s *Server) setTag(lineage, tag string, pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tags[lineage] == nil {
		forgetOne(s.tags, maxTagged)
		s.tags[lineage] = map[string]uint32{}
	}
	forgetOne(s.tags[lineage], maxTags)
	s.tags[lineage][tag] = pid
}

// forgetOne deletes an arbitrary entry of m when it holds limit or more.
func forgetOne[K comparable, V any](m map[K]V, limit int) {
	if len(m) < limit {
		return
	}
	for k := range m {
		delete(m, k)
		return
	}
}

// tagsOf returns a lineage's tags by pid.
func (s *Server) tagsOf(lineage string) map[uint32]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[uint32]string{}
	for tag, pid := range s.tags[lineage] {
		out[pid] = tag
	}
	return out
}
