package cli

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// Stop, start and wait: the lifecycle of a machine that keeps its id. Like
// the hibernate commands, stop and start print the machine's id (the API's
// object with --json); wait prints how the main process ended and exits
// with its exit code.

// Code of the error the server answers a wait with when its timeout_ms
// passed before the main process exited.
const codeDeadlineExceeded = "deadline_exceeded"

func (a *app) machineStopCommand() *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "stop ID [--grace 10s]",
		Short: "End a machine's processes and keep its files; print its id",
		Long: `Stop a running machine: every process gets SIGTERM, and those still running
after --grace get SIGKILL (--grace 0 kills at once). Its files are kept (in a
snapshot of kind disk) and its memory, CPU and address are freed; the id
stays. 'nullspace machine start ID' boots it again from its files and starts
its main process again. The lease does not run while it is stopped.

An ephemeral machine cannot be stopped: it keeps nothing. To end a machine
and its files at once, kill it.`,
		Example: `  nullspace machine stop $ID
  nullspace machine stop $ID --grace 30s`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 {
				return usageErrorf("invalid --grace %s: must not be negative", grace)
			}
			// Without --grace the server's default applies; sending the
			// flag's default would pin it here.
			var g *time.Duration
			if cmd.Flags().Changed("grace") {
				g = &grace
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.Stop(cmd.Context(), args[0], g)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), m)
			}
			fmt.Fprintln(cmd.OutOrStdout(), m.ID)
			fmt.Fprintf(cmd.ErrOrStderr(), "machine %s stopped, its files kept in %s; start it with 'nullspace machine start %s'\n",
				m.ID, dash(m.SnapshotID), m.ID)
			if m.Exit != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "main process: %s\n", formatExit(m.Exit))
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 10*time.Second, "how long processes have after SIGTERM before SIGKILL, at most 5m (0: kill at once)")
	return cmd
}

func (a *app) machineStartCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "Boot a stopped machine from its files; print its id",
		Long: `Start a stopped machine under the same id: it boots from the files it had
when it stopped (no process survives a stop), starts its main process again
and its lease window anew. Starting a running machine changes nothing. If the
boot fails the machine stays stopped and the start can be retried.`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.Start(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !a.json && m.MainPID > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "machine %s is running; main process pid %d\n", m.ID, m.MainPID)
			}
			return a.printMachineID(cmd, m)
		},
	}
}

func (a *app) machineWaitCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait ID [--timeout 0]",
		Short: "Wait for a machine's main process to exit; exit with its exit code",
		Long: `Wait until the main process of the machine (the command it was created
with) has exited, print how it ended, and exit with its exit code. The wait
follows the machine through pauses and resumes and never wakes it; a stop
ends the main process (SIGTERM, then SIGKILL). If it has exited already, the
answer is immediate.

Exit codes:
  N          the main process exited with N
  124        it was still running after --timeout
  128+N      it was killed by signal N (143 for SIGTERM, 137 for SIGKILL)
  130        interrupted here (Ctrl-C); the machine is not affected
  1          wait itself failed (unknown machine, no main process, killed
             machine, network error, ...)
  2          usage error

With --json the result is printed as JSON; the exit code is the same.`,
		Example: `  ID=$(nullspace machine create -- python3 job.py)
  nullspace machine wait $ID && echo done
  nullspace machine wait $ID --timeout 10m`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout < 0 {
				return usageErrorf("invalid --timeout %s: must not be negative", timeout)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			e, err := c.Wait(cmd.Context(), args[0], timeout)
			if timeout > 0 && client.IsCode(err, codeDeadlineExceeded) {
				return &exitCodeError{code: exitTimeout,
					msg: fmt.Sprintf("the main process of machine %s was still running after %s", args[0], timeout)}
			}
			if err != nil {
				return err
			}
			if a.json {
				if err := printJSON(cmd.OutOrStdout(), e); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), formatExit(e))
			}
			return exitStatus(e.ExitCode, e.Signal, false, 0)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long, e.g. 10m, and exit 124 (0: wait as long as it takes)")
	return cmd
}

// formatExit prints how a main process ended: "exit code 3", or
// "exit code 143 (SIGTERM)" when a signal ended it.
func formatExit(e *api.MainExit) string {
	s := fmt.Sprintf("exit code %d", e.ExitCode)
	if e.Signal != "" {
		s += " (" + e.Signal + ")"
	}
	return s
}

// shellSafe matches the arguments that need no quoting in a shell.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// formatArgv prints an argv as a shell would take it back: arguments with
// spaces or special characters in single quotes.
func formatArgv(argv []string) string {
	parts := make([]string, len(argv))
	for i, arg := range argv {
		if shellSafe.MatchString(arg) {
			parts[i] = arg
		} else {
			parts[i] = "'" + strings.ReplaceAll(arg, "'", `'\''`) + "'"
		}
	}
	return strings.Join(parts, " ")
}
