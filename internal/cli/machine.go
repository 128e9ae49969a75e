package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) machineCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "machine",
		Aliases: []string{"machines"},
		Short:   "Create, list, inspect, stop, start, wait for, pause, fork and kill machines",
	})
	cmd.AddCommand(a.machineCreateCommand(), a.machineListCommand(), a.machineInfoCommand(), a.machineKillCommand(),
		a.machineStopCommand(), a.machineStartCommand(), a.machineWaitCommand(),
		a.machinePauseCommand(), a.machineResumeCommand(), a.machineConnectCommand(), a.machineSnapshotCommand(),
		a.machineForkCommand(), a.machineTimeoutCommand(), a.machineURLCommand())
	return cmd
}

func (a *app) machineCreateCommand() *cobra.Command {
	var (
		req      api.CreateMachineRequest
		env      []string
		metadata []string
		volumes  []string
		hooks    api.Hooks
	)
	cmd := &cobra.Command{
		Use:   "create [flags] [-- CMD [ARGS...]]",
		Short: "Create and start a machine, print its id",
		Long: `Create and start a machine from a template, or with --snapshot from a
snapshot (its memory, processes and files; the machine gets the snapshot's
template, CPU, memory, environment, volumes, hooks and main process, so those
cannot be combined with --snapshot).

A command after -- is the machine's main process: started (as an argv, not
by a shell) once the machine has booted and again at every 'machine start'.
'nullspace machine wait ID' waits for it to exit. The machine keeps running
after it exits, until its lease ends or it is stopped or killed.`,
		Example: `  nullspace machine create
  nullspace machine create --template base --cpu 1 --memory 256 --env FOO=bar --metadata owner=me
  nullspace machine create --volume data:/data --volume cache:/cache:ro --on-pause 'sync' --on-resume 'date'
  nullspace machine create --snapshot snp_3b1e9c0a7d52f4e8a613
  nullspace machine create --template base -- python3 -m http.server 8080
  nullspace machine create -- /bin/sh -c 'make test > /tmp/test.log 2>&1'`,
		// The main process comes after --, so that its own flags
		// (python3 -m ...) are not taken for create's.
		Args: func(cmd *cobra.Command, args []string) error {
			before := args
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				before = args[:n]
			}
			if len(before) > 0 {
				return usageErrorf("unexpected arguments %q: put the main process after --: nullspace machine create [flags] -- CMD [ARGS...]", before)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if n := cmd.ArgsLenAtDash(); n >= 0 && len(args) > n {
				req.Command = args[n:]
			}
			if req.SnapshotID != "" {
				for _, name := range []string{"template", "cpu", "memory", "env", "volume", "on-pause", "on-resume"} {
					if cmd.Flags().Changed(name) {
						return usageErrorf("--snapshot cannot be combined with --%s: a machine created from a snapshot has the snapshot's", name)
					}
				}
				if req.Command != nil {
					return usageErrorf("--snapshot cannot be combined with a command: a machine created from a snapshot has the snapshot's main process")
				}
				req.Template = ""
			}
			var err error
			if req.Env, err = parsePairs("env", env); err != nil {
				return err
			}
			if req.Metadata, err = parsePairs("metadata", metadata); err != nil {
				return err
			}
			if req.Volumes, err = parseVolumes(volumes); err != nil {
				return err
			}
			if len(hooks.OnPause)+len(hooks.OnResume) > 0 {
				req.Hooks = &hooks
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.CreateMachine(cmd.Context(), req)
			if err != nil {
				return err
			}
			if a.json {
				if err := printJSON(cmd.OutOrStdout(), m); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), m.ID)
			}
			if m.State == api.StateFailed {
				return fmt.Errorf("machine %s failed: %s", m.ID, m.Error)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Template, "template", "base", "template to boot from")
	f.IntVar(&req.CPUCount, "cpu", 0, "vCPUs (0: server default, 2)")
	f.IntVar(&req.MemoryMB, "memory", 0, "memory in MiB (0: server default, 512)")
	f.IntVar(&req.DiskMB, "disk", 0, "limit in MiB on what the machine writes to its root file system (0: server default, --disk-default-mb)")
	f.StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE for every command (repeatable)")
	f.StringArrayVar(&metadata, "metadata", nil, "metadata KEY=VALUE (repeatable)")
	f.BoolVar(&req.AllowInternet, "allow-internet", false, "allow outbound internet access")
	f.StringVar(&req.SnapshotID, "snapshot", "", "create the machine from this snapshot instead of a template")
	f.StringArrayVar(&volumes, "volume", nil, "mount volume NAME:/PATH[:ro] (repeatable; create volumes with 'nullspace volume create')")
	f.StringArrayVar(&hooks.OnPause, "on-pause", nil, "shell command run in the machine before every pause, snapshot or checkpoint (repeatable, in order)")
	f.StringArrayVar(&hooks.OnResume, "on-resume", nil, "shell command run in the machine after every resume or restore (repeatable, in order)")
	f.Var(&timeoutFlag{req: &req}, "timeout", "lease window in seconds: the machine ends this long after it starts running unless refreshed (default 300)")
	f.StringVar(&req.OnTimeout, "on-timeout", "", "what the end of the lease does: destroy (default), pause (memory and files kept) or stop (files kept, memory dropped; start or connect boots it afresh)")
	f.BoolVar(&req.AutoResume, "auto-resume", false, "public traffic wakes the machine once paused or stopped (needs --on-timeout pause or stop)")
	f.BoolVar(&req.PublicPorts, "public-ports", false, "every port is reachable through the edge without a signed URL")
	f.StringVar(&req.Persistence, "persistence", "", "what is kept of its paused state: persistent (default), sticky (evicted oldest first over the server's budget) or ephemeral (nothing: destroyed where it would pause)")
	f.Var(&idleFlag{req: &req}, "idle-timeout", "pause the machine after this many seconds without network activity (default: never)")
	return cmd
}

// timeoutFlag sets a create request's timeout_ms from seconds.
type timeoutFlag struct{ req *api.CreateMachineRequest }

func (f *timeoutFlag) String() string {
	if f.req == nil || f.req.TimeoutMS == nil {
		return ""
	}
	return strconv.FormatFloat(float64(*f.req.TimeoutMS)/1000, 'f', -1, 64)
}

func (f *timeoutFlag) Set(v string) error {
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs <= 0 {
		return fmt.Errorf("want a positive number of seconds, got %q", v)
	}
	ms := int64(secs * 1000)
	f.req.TimeoutMS = &ms
	return nil
}

func (f *timeoutFlag) Type() string { return "seconds" }

// idleFlag sets a create request's idle_timeout_ms from seconds.
type idleFlag struct{ req *api.CreateMachineRequest }

func (f *idleFlag) String() string {
	if f.req == nil || f.req.IdleTimeoutMS == 0 {
		return ""
	}
	return strconv.FormatFloat(float64(f.req.IdleTimeoutMS)/1000, 'f', -1, 64)
}

func (f *idleFlag) Set(v string) error {
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs < 0 {
		return fmt.Errorf("want a number of seconds (0: never), got %q", v)
	}
	f.req.IdleTimeoutMS = int64(secs * 1000)
	return nil
}

func (f *idleFlag) Type() string { return "seconds" }

func (a *app) machineTimeoutCommand() *cobra.Command {
	var action string
	cmd := &cobra.Command{
		Use:   "timeout ID SECONDS",
		Short: "Refresh a machine's lease: it ends SECONDS from now unless refreshed again",
		Long: `Reset the lease of the machine's latest execution to SECONDS from now (no
upper bound), and with --action what its end does: destroy, hibernate or
stop (files kept, memory dropped).
Prints the lease now in effect.`,
		Example: `  nullspace machine timeout mch_1a2b3c4d5e6f7a8b9c0d 600
  nullspace machine timeout mch_1a2b3c4d5e6f7a8b9c0d 120 --action hibernate`,
		Args: exactArgs(2, "ID SECONDS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := strconv.ParseFloat(args[1], 64)
			if err != nil || secs <= 0 {
				return usageErrorf("SECONDS must be a positive number, got %q", args[1])
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			l, err := c.SetTimeout(cmd.Context(), args[0], time.Duration(secs*float64(time.Second)), action)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), l)
			}
			at := "not running (the window starts when it resumes or starts)"
			if l.TimeoutAt != nil {
				at = l.TimeoutAt.Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "timeout %s, %s at %s (%s left)\n", time.Duration(l.TimeoutMS)*time.Millisecond,
				l.TimeoutAction, at, time.Duration(l.RemainingMS)*time.Millisecond)
			return nil
		},
	}
	cmd.Flags().StringVar(&action, "action", "", "what the deadline does: destroy, hibernate or stop (default: keep)")
	return cmd
}

// parseVolumes turns repeated NAME:/PATH[:ro] flag values into mounts.
func parseVolumes(vals []string) ([]api.VolumeMount, error) {
	var out []api.VolumeMount
	for _, v := range vals {
		name, path, found := strings.Cut(v, ":")
		m := api.VolumeMount{Name: name, Path: path}
		if p, ro := strings.CutSuffix(path, ":ro"); ro {
			m.Path, m.ReadOnly = p, true
		} else if p, rw := strings.CutSuffix(path, ":rw"); rw {
			m.Path = p
		}
		if !found || name == "" || !strings.HasPrefix(m.Path, "/") {
			return nil, usageErrorf("invalid --volume %q: want NAME:/PATH or NAME:/PATH:ro", v)
		}
		out = append(out, m)
	}
	return out, nil
}

func (a *app) machineListCommand() *cobra.Command {
	var (
		opts     client.ListOptions
		metadata []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List machines, one row each",
		Long: `List machines, one row per machine: its latest execution. A machine that was
paused and resumed has had other ids (paused aliases, which GET and connect
still follow); --aliases lists every one. Every page is read.`,
		Example: `  nullspace machine list --state running --metadata owner=me
  nullspace machine list --aliases`,
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if opts.Metadata, err = parsePairs("metadata", metadata); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ms, err := c.ListMachines(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if a.json {
				if ms == nil {
					ms = []api.Machine{}
				}
				return printJSON(cmd.OutOrStdout(), ms)
			}
			return a.printMachineTable(cmd.OutOrStdout(), ms)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.State, "state", "", "only machines in this state (creating, running, pausing, paused, resuming, snapshotting, restoring, stopping, stopped, starting, killing, killed, failed)")
	f.StringArrayVar(&metadata, "metadata", nil, "only machines with metadata KEY=VALUE (repeatable; all must match)")
	f.StringVar(&opts.Template, "template", "", "only machines made from this template")
	f.BoolVar(&opts.IncludeAliases, "aliases", false, "list every execution id (paused aliases too), not one row per machine")
	return cmd
}

// mibOrEmpty formats a size in MiB; 0 (a server that does not report it)
// is left out.
func mibOrEmpty(mb int) string {
	if mb == 0 {
		return ""
	}
	return strconv.Itoa(mb) + " MiB"
}

func (a *app) printMachineTable(w io.Writer, ms []api.Machine) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tSTATE\tTEMPLATE\tCPU\tMEM\tIP\tSNAPSHOT\tAGE")
	now := a.now()
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\n",
			m.ID, m.State, m.Template, m.CPUCount, m.MemoryMB, dash(m.IP), dash(m.SnapshotID), formatAge(now, m.CreatedAt))
	}
	return tw.Flush()
}

func (a *app) machineInfoCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "info ID",
		Aliases: []string{"get", "show"},
		Short:   "Show a machine",
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.GetMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), m)
			}
			now := a.now()
			fields := [][2]string{
				{"ID", m.ID},
				{"State", m.State},
				{"Error", m.Error},
				{"Snapshot", m.SnapshotID},
				{"Lineage", unlessSelf(m.LineageID, m.ID)},
				{"Latest", unlessSelf(m.LatestID, m.ID)},
				{"Restored from", m.RestoredFrom},
				{"Template", m.Template},
				{"CPU", strconv.Itoa(m.CPUCount)},
				{"Memory", strconv.Itoa(m.MemoryMB) + " MiB"},
				{"Disk", mibOrEmpty(m.DiskMB)},
				{"IP", m.IP},
				{"Internet", strconv.FormatBool(m.AllowInternet)},
				{"Env", formatPairs(m.Env)},
				{"Metadata", formatPairs(m.Metadata)},
				{"Volumes", formatVolumes(m.Volumes)},
			}
			if m.Hooks != nil {
				fields = append(fields,
					[2]string{"On pause", strings.Join(m.Hooks.OnPause, "; ")},
					[2]string{"On resume", strings.Join(m.Hooks.OnResume, "; ")})
			}
			if len(m.Command) > 0 {
				fields = append(fields, [2]string{"Command", formatArgv(m.Command)})
			}
			if m.SnapshotBytes > 0 {
				fields = append(fields, [2]string{"Snapshots", formatBytes(m.SnapshotBytes) + " (its history on disk)"})
			}
			if m.PublicPorts {
				fields = append(fields, [2]string{"Public ports", "yes (URLs need no signature)"})
			}
			if m.MainPID > 0 {
				fields = append(fields, [2]string{"Main PID", strconv.Itoa(m.MainPID)})
			}
			if m.Exit != nil {
				fields = append(fields, [2]string{"Exit", formatExit(m.Exit) + " at " + formatTime(now, m.Exit.At)})
			}
			if m.TimeoutMS > 0 {
				lease := fmt.Sprintf("%s, then %s", time.Duration(m.TimeoutMS)*time.Millisecond, m.TimeoutAction)
				switch {
				case m.TimeoutAt != nil:
					lease += fmt.Sprintf(" at %s (%s left)", formatTime(now, *m.TimeoutAt), time.Duration(m.RemainingMS)*time.Millisecond)
				case m.State == api.StateStopped:
					lease += " (stopped: the window starts again at 'machine start')"
				default:
					lease += " (not running: the window starts when it resumes)"
				}
				fields = append(fields, [2]string{"Lease", lease})
			}
			if m.IdleTimeoutMS > 0 {
				fields = append(fields, [2]string{"Idle timeout", (time.Duration(m.IdleTimeoutMS) * time.Millisecond).String()})
			}
			fields = append(fields, [2]string{"Persistence", m.Persistence})
			if m.AutoResume {
				fields = append(fields, [2]string{"Auto-resume", "true"})
			}
			fields = append(fields, [2]string{"Created", formatTime(now, m.CreatedAt)})
			if m.StartedAt != nil {
				fields = append(fields, [2]string{"Started", formatTime(now, *m.StartedAt)})
			}
			if m.EndedAt != nil {
				fields = append(fields, [2]string{"Ended", formatTime(now, *m.EndedAt)})
			}
			return printFields(cmd.OutOrStdout(), fields)
		},
	}
}

func (a *app) machineKillCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "kill ID...",
		Aliases: []string{"rm", "delete"},
		Short:   "Kill machines; prints each killed id",
		Long: `Kill machines. Every id is tried; the command fails if any of them fails.

Killing a paused alias (an id its machine was resumed from) removes only that
alias. Killing a machine's latest execution ends the machine: its paused
aliases go too, and so do its pause and checkpoint snapshots that no other
machine was made from, and the files of a stopped machine. A kill does not
wait for processes to exit; 'nullspace machine stop' does, and keeps the
files.`,
		Args: minArgs(1, "ID..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var killed []*api.Machine
			failed := 0
			for _, id := range args {
				m, err := c.KillMachine(cmd.Context(), id)
				if err != nil {
					if cmd.Context().Err() != nil {
						return err
					}
					printError(cmd.ErrOrStderr(), err)
					failed++
					continue
				}
				killed = append(killed, m)
				if !a.json {
					fmt.Fprintln(cmd.OutOrStdout(), m.ID)
				}
			}
			if a.json {
				if killed == nil {
					killed = []*api.Machine{}
				}
				if err := printJSON(cmd.OutOrStdout(), killed); err != nil {
					return err
				}
			}
			if failed > 0 {
				// Each failure was printed above.
				return &exitCodeError{code: exitError}
			}
			return nil
		},
	}
}

// unlessSelf returns id, or "" when it is the machine's own id (nothing to
// show).
func unlessSelf(id, self string) string {
	if id == self {
		return ""
	}
	return id
}

// formatVolumes prints mounts as "data:/data, cache:/cache:ro".
func formatVolumes(vs []api.VolumeMount) string {
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		p := v.Name + ":" + v.Path
		if v.ReadOnly {
			p += ":ro"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}
