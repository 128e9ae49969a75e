// Package terminal joins an interactive client to a command running in a
// machine: the command's output, from a byte offset, goes to the client as
// it comes, and the client's keystrokes and resizes go to the command. The
// client side is a Conn (a WebSocket in httpapi, an SSH channel in
// sshgate); the machine side is the agent's command routes. Either side
// ending ends the session; the command itself runs on (a dropped client
// reattaches later by pid).
package terminal

import (
	"context"
	"errors"
	"fmt"
	"io"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Agent is what a session needs of a machine's agent (an *agentclient.Client).
type Agent interface {
	Output(ctx context.Context, pid int, opts agentclient.OutputOptions) (*agentclient.EventStream, error)
	WriteStdin(ctx context.Context, pid int, req api.StdinRequest) error
	Resize(ctx context.Context, pid int, size api.PTYSize) error
}

// Input is one message from the client, one of: keystrokes, a new size, or
// the end of its input (a command not on a terminal sees EOF on stdin).
type Input struct {
	Bytes      []byte
	Resize     *api.PTYSize
	CloseStdin bool
}

// Output is a chunk of the command's output.
type Output struct {
	Data   []byte
	Offset int64 // of Data in its stream
	Stderr bool  // stderr of a command not on a terminal
}

// Exit is how the command ended, sent to the client last.
type Exit struct {
	ExitCode int
	Signal   string
}

// Conn is the client's side of a session.
type Conn interface {
	// Output sends a chunk of output.
	Output(ctx context.Context, o Output) error
	// Exit sends how the command ended; the session ends after it.
	Exit(ctx context.Context, e Exit) error
	// Input waits for the client's next message; io.EOF when it left.
	Input(ctx context.Context) (Input, error)
	// Notice tells the client of a refused message (a size out of range);
	// the session goes on.
	Notice(ctx context.Context, err error) error
}

// Run joins conn to command pid until the command exits (conn gets Exit;
// Run returns nil), the client leaves (io.EOF), or ctx ends. Output
// starts at offset (0: all the machine still holds, the scrollback).
// activity is called for every keystroke and output chunk (idle suspend
// counts them as use).
func Run(ctx context.Context, agent Agent, pid int, offset int64, conn Conn, activity func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agent.Output(ctx, pid, agentclient.OutputOptions{Follow: true, StdoutOffset: offset})
	if err != nil {
		return err
	}
	defer stream.Close()

	inputDone := make(chan error, 1)
	go func() {
		inputDone <- pumpInput(ctx, agent, pid, conn, activity)
		cancel() // the client left: stop reading the output too
	}()
	outErr := pumpOutput(ctx, stream, conn, activity)
	cancel()
	inErr := <-inputDone
	switch {
	case outErr == nil:
		return nil
	case errors.Is(inErr, io.EOF):
		return io.EOF // the client left, which stopped the output
	case inErr != nil && !errors.Is(inErr, context.Canceled):
		return inErr // the input failed, which stopped the output
	}
	return outErr
}

func pumpOutput(ctx context.Context, stream *agentclient.EventStream, conn Conn, activity func()) error {
	for stream.Next() {
		ev := stream.Event()
		switch ev.Type {
		case api.EventStdout, api.EventStderr:
			activity()
			if err := conn.Output(ctx, Output{Data: ev.Data, Offset: ev.Offset, Stderr: ev.Type == api.EventStderr}); err != nil {
				return err
			}
		case api.EventExit:
			code := 0
			if ev.ExitCode != nil {
				code = *ev.ExitCode
			}
			return conn.Exit(ctx, Exit{ExitCode: code, Signal: ev.Signal})
		}
	}
	return stream.Err()
}

// stdinOpener is an Agent that keeps one stdin stream open for a whole
// session (an *agentclient.Client): a keystroke is then a write on an open
// request, not a request of its own.
type stdinOpener interface {
	OpenStdin(ctx context.Context, pid int) *agentclient.StdinStream
}

func pumpInput(ctx context.Context, agent Agent, pid int, conn Conn, activity func()) error {
	var stdin *agentclient.StdinStream
	defer func() {
		if stdin != nil {
			stdin.Close()
		}
	}()
	opener, streams := agent.(stdinOpener)
	for {
		in, err := conn.Input(ctx)
		if err != nil {
			return err
		}
		activity()
		err = nil
		switch {
		case in.Resize != nil:
			err = agent.Resize(ctx, pid, *in.Resize)
		case in.CloseStdin:
			if stdin != nil {
				// Every byte typed reaches the command before its end.
				err, stdin = stdin.Close(), nil
			}
			if err == nil {
				err = agent.WriteStdin(ctx, pid, api.StdinRequest{Bytes: in.Bytes, Close: true})
			}
		case len(in.Bytes) > 0 && streams:
			if stdin == nil {
				stdin = opener.OpenStdin(ctx, pid)
			}
			if _, err = stdin.Write(in.Bytes); err != nil {
				stdin = nil // refused: the next keystroke opens another
			}
		case len(in.Bytes) > 0:
			err = agent.WriteStdin(ctx, pid, api.StdinRequest{Bytes: in.Bytes})
		}
		if errors.Is(err, errdefs.ErrInvalidArgument) {
			// A size out of range, or an end of input for a terminal:
			// refused, and the session goes on.
			err = conn.Notice(ctx, err)
		}
		if err != nil {
			return err
		}
	}
}

// Gone says, for a client whose session ended because its machine stopped
// running, what became of the machine, by the state it is now in, and
// (again) how to get back to a paused one.
func Gone(machineID string, pid int, state, again string) string {
	switch state {
	case api.StatePaused, api.StatePausing:
		return fmt.Sprintf("machine %s was paused (process %d lives on in its state): %s", machineID, pid, again)
	case api.StateStopped, api.StateStopping:
		return fmt.Sprintf("machine %s was stopped, which ended its processes", machineID)
	case api.StateKilled, api.StateKilling:
		return fmt.Sprintf("machine %s was killed", machineID)
	}
	return fmt.Sprintf("machine %s is no longer running", machineID)
}
