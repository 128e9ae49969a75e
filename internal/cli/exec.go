package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// Exit codes of exec, besides the command's own exit code. They follow the
// shell and GNU timeout(1) conventions so that scripts can tell them apart.
const (
	exitTimeout      = 124 // the command hit its time limit (as timeout(1))
	exitCmdNotFound  = 127 // the server reported command_not_found (as sh)
	exitSignalOffset = 128 // killed by signal N: 128+N (as sh)
)

// Code of the error the server reports when the command cannot be found.
const codeCommandNotFound = "command_not_found"

func (a *app) execCommand() *cobra.Command {
	var (
		req        api.RunCommandRequest
		env        []string
		shell      bool
		background bool
		stdin      bool
		tty        bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec ID [flags] -- CMD [ARGS...]",
		Short: "Run a command in a machine",
		Long: `Run a command in a machine, streaming its stdout and stderr live to this
terminal's stdout and stderr, and exit with its exit code.

Exit codes:
  N          the command exited with N
  124        the command hit its time limit (--timeout, or the server's)
  127        the server reported the command was not found
  128+N      the command was killed by signal N (137 for SIGKILL)
  130        interrupted here (Ctrl-C); the remote command is killed
  1          exec itself failed (unknown machine, network error, ...)
  2          usage error

With -t (-it) the command runs on a terminal, joined to this one as
'nullspace shell ID -- CMD' does (raw mode, window changes, ~. to detach):
for interactive programs (python3, vim, top). Its output is one stream,
and the exit code is the command's.

With --shell the arguments are joined with spaces and run by /bin/sh -c.
With --background the command keeps running; exec prints its pid.
With --json exec waits for the command and prints its result (stdout and
stderr included) as JSON instead of streaming.`,
		Example: `  nullspace exec $ID -- ls -la /
  nullspace exec $ID --shell -- 'echo $HOME | wc -c'
  echo hello | nullspace exec $ID --stdin -- cat
  nullspace exec $ID --background --cwd /workspace -- python3 -m http.server 8080
  nullspace exec -it $ID -- python3`,
		Args: minArgs(2, "ID CMD [ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, argv := args[0], args[1:]
			if shell {
				req.Shell = strings.Join(argv, " ")
			} else {
				req.Cmd = argv
			}
			var err error
			if req.Env, err = parsePairs("env", env); err != nil {
				return err
			}
			if timeout < 0 {
				return usageErrorf("invalid --timeout %s: must not be negative", timeout)
			}
			req.TimeoutMS = timeout.Milliseconds()
			if tty {
				if background || a.json {
					return usageErrorf("-t runs the command on this terminal: it does not go with --background or --json")
				}
				c, err := a.client()
				if err != nil {
					return err
				}
				return a.runShell(cmd, c, id, req, 0)
			}
			if stdin {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				req.Stdin = string(b)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			switch {
			case background:
				pid, err := c.StartCommand(ctx, id, req)
				if err != nil {
					return execError(err)
				}
				if a.json {
					return printJSON(cmd.OutOrStdout(), api.CommandStarted{PID: pid})
				}
				fmt.Fprintln(cmd.OutOrStdout(), pid)
				return nil
			case a.json:
				res, err := c.RunCommand(ctx, id, req)
				if err != nil {
					return execError(err)
				}
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
				return exitStatus(res.ExitCode, res.Signal, res.TimedOut, timeout)
			}
			return streamExec(ctx, c, id, req, timeout, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageErrorf("%v (put the command after --: nullspace exec ID [flags] -- CMD ARGS...)", err)
	})
	f := cmd.Flags()
	f.StringVar(&req.Cwd, "cwd", "", "working directory of the command")
	f.StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVar(&req.User, "user", "", "user name or uid to run as (default root)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long, e.g. 30s (0: the server default, 60s; no limit with --background)")
	f.BoolVar(&shell, "shell", false, "run the arguments as one /bin/sh -c command line")
	f.BoolVar(&background, "background", false, "start the command in the background and print its pid")
	f.BoolVarP(&stdin, "stdin", "i", false, "send this process's stdin to the command (read to the end first; with -t, as it is typed)")
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal joined to this one (-it: interactive)")
	return cmd
}

// streamExec runs the command with StreamCommand, copying its output as it
// arrives, and returns an *exitCodeError carrying the command's exit status.
func streamExec(ctx context.Context, c *client.Client, id string, req api.RunCommandRequest, timeout time.Duration, stdout, stderr io.Writer) error {
	stream, err := c.StreamCommand(ctx, id, req)
	if err != nil {
		return execError(err)
	}
	defer stream.Close()
	pid := 0
	for {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return interrupted(c, id, pid)
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("command stream of machine %s ended before the command exited", id)
			}
			return execError(err)
		}
		switch ev.Type {
		case api.EventStart:
			pid = ev.PID
		case api.EventStdout:
			if _, err := stdout.Write(ev.Data); err != nil {
				return fmt.Errorf("write stdout: %w", err)
			}
		case api.EventStderr:
			if _, err := stderr.Write(ev.Data); err != nil {
				return fmt.Errorf("write stderr: %w", err)
			}
		case api.EventExit:
			code := -1
			if ev.ExitCode != nil {
				code = *ev.ExitCode
			}
			return exitStatus(code, ev.Signal, ev.TimedOut, timeout)
		}
		// Unknown event types are skipped: newer servers may add some.
	}
}

// interrupted kills the remote command after a local Ctrl-C, so that it does
// not outlive exec, and exits 130.
func interrupted(c *client.Client, id string, pid int) error {
	if pid == 0 {
		return &exitCodeError{code: exitInterrupted, msg: "interrupted"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.KillProcess(ctx, id, pid); err != nil && !client.IsCode(err, "process_not_found") {
		return &exitCodeError{code: exitInterrupted, msg: fmt.Sprintf("interrupted; could not kill command %d in machine %s: %v", pid, id, err)}
	}
	return &exitCodeError{code: exitInterrupted, msg: fmt.Sprintf("interrupted; killed command %d in machine %s", pid, id)}
}

// execError maps command_not_found to exit 127, as a shell does.
func execError(err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.Code == codeCommandNotFound {
		return &exitCodeError{code: exitCmdNotFound, msg: err.Error()}
	}
	return err
}

// exitStatus turns a command's end into exec's exit: nil for 0, else an
// *exitCodeError (with a message only for timeouts).
func exitStatus(exitCode int, signal string, timedOut bool, timeout time.Duration) error {
	switch {
	case timedOut:
		limit := "the server's time limit"
		if timeout > 0 {
			limit = timeout.String()
		}
		return &exitCodeError{code: exitTimeout, msg: "command timed out after " + limit}
	case signal != "":
		if n := signalNumber(signal); n > 0 {
			return &exitCodeError{code: exitSignalOffset + n}
		}
	}
	if exitCode == 0 {
		return nil
	}
	if exitCode < 0 {
		msg := "the server reported no exit code for the command"
		if signal != "" {
			msg += ", only the unknown signal " + signal
		}
		return &exitCodeError{code: exitError, msg: msg}
	}
	return &exitCodeError{code: exitCode}
}

// linuxSignals numbers the signals by their Linux (x86, arm) values: the
// machines run Linux whatever the client's OS.
var linuxSignals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8,
	"KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
	"STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
	"URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
	"POLL": 29, "PWR": 30, "SYS": 31,
}

// signalNumber returns the number of a signal named "SIGKILL", "KILL" or
// "9"; 0 when it is unknown.
func signalNumber(s string) int {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 128 {
		return n
	}
	return linuxSignals[strings.TrimPrefix(strings.ToUpper(s), "SIG")]
}
