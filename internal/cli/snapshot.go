package cli

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// Hibernate, snapshot, fork and checkpoint commands. Commands that make a
// snapshot print its id, commands that make or return a machine print the
// machine's id (one per line), so their output can be used in scripts; with
// --json they print the API's object instead.

func (a *app) machinePauseCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "pause ID",
		Aliases: []string{"hibernate"},
		Short:   "Checkpoint a machine and stop it; print the snapshot id",
		Long: `Checkpoint a running machine (memory, processes, files) into a hibernate
snapshot and stop it, freeing its CPU, memory and address. The id stays as a
paused alias: 'nullspace machine connect ID' resumes it under a new id.`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.Pause(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintln(cmd.OutOrStdout(), s.ID)
			fmt.Fprintf(cmd.ErrOrStderr(), "machine %s paused (%s, frozen %s); resume it with 'nullspace machine connect %s'\n",
				args[0], formatBytes(s.SizeBytes), formatWindow(s.PauseWindowMS), args[0])
			return nil
		},
	}
}

func (a *app) machineResumeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "resume SNAPSHOT",
		Short: "Resume a paused machine from its snapshot; print the new machine id",
		Long: `Restore a paused machine's hibernate snapshot into a new machine id (the
paused id stays as an alias). Only the latest state of a machine can be
resumed; 'nullspace machine connect ID' finds it for you.`,
		Args: exactArgs(1, "SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.Resume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printMachineID(cmd, m)
		},
	}
}

func (a *app) machineConnectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "connect ID",
		Short: "Print the id of a machine's running latest execution, resuming it if paused",
		Long: `Follow any id of a machine (the original, a paused alias) to its latest
execution and print that execution's id, resuming it first if it is paused.
Use the printed id for later commands. 'machine info' never resumes.`,
		Example: `  ID=$(nullspace machine connect $ID)`,
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.Connect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !a.json && m.ID != args[0] {
				fmt.Fprintf(cmd.ErrOrStderr(), "machine %s continues as %s\n", args[0], m.ID)
			}
			return a.printMachineID(cmd, m)
		},
	}
}

func (a *app) machineSnapshotCommand() *cobra.Command {
	return a.snapshotCreateCommand("snapshot ID [--name NAME]")
}

// snapshotCreateCommand is 'machine snapshot' and 'snapshot create'.
func (a *app) snapshotCreateCommand(use string) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   use,
		Short: "Take a reusable snapshot of a running machine; print its id",
		Long: `Take a reusable snapshot of a running machine, which keeps running. Create
machines from it with 'nullspace machine create --snapshot SNAPSHOT'; it is
kept until 'nullspace snapshot rm'. --name names it (unique among your
snapshots; lower-case letters, digits, '-' and '_'): the name then works
wherever the id does, until the snapshot is deleted.`,
		Example: `  nullspace machine snapshot $ID --name web-ready
  nullspace machine create --snapshot web-ready`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.CreateSnapshotWith(cmd.Context(), args[0], api.CreateSnapshotRequest{Name: name})
			if err != nil {
				return err
			}
			return a.printSnapshotID(cmd, s)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name the snapshot (unique among your snapshots)")
	return cmd
}

func (a *app) machineForkCommand() *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use:   "fork ID [--count N]",
		Short: "Snapshot a running machine and create N machines from it; print their ids",
		Long: `Take a reusable snapshot of a running machine (which keeps running) and
create N machines from it (1 to 16). Either all are created or none is.`,
		Example: `  for m in $(nullspace machine fork $ID --count 3); do nullspace exec $m -- hostname; done`,
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return usageErrorf("invalid --count %d: want 1 to 16", count)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.Fork(cmd.Context(), args[0], count)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			for _, m := range res.Machines {
				fmt.Fprintln(cmd.OutOrStdout(), m.ID)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "forked %s into %d machines from snapshot %s (%s stopped %s)\n",
				args[0], len(res.Machines), res.Snapshot.ID, args[0], formatWindow(res.Snapshot.PauseWindowMS))
			return nil
		},
	}
	cmd.Flags().IntVarP(&count, "count", "n", 1, "how many machines to create (1 to 16)")
	return cmd
}

func (a *app) snapshotCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots", "snap"},
		Short:   "Create, list, inspect and delete snapshots",
		Long: `Create, list, inspect and delete snapshots. Snapshots are made by 'machine pause'
(kind hibernate), 'machine snapshot' (or 'snapshot create') and 'machine fork' (kind snapshot),
'checkpoint create' (kind checkpoint) and 'machine stop' (kind disk: a
stopped machine's files, deleted when it starts).`,
	})
	cmd.AddCommand(a.snapshotCreateCommand("create MACHINE_ID [--name NAME]"), a.snapshotListCommand(), a.snapshotInfoCommand(), a.snapshotRemoveCommand())
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var f client.SnapshotFilter
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Example: `  nullspace snapshot ls --machine $ID --kind checkpoint`,
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ss, err := c.ListSnapshotsWhere(cmd.Context(), f)
			if err != nil {
				return err
			}
			return a.printSnapshots(cmd.OutOrStdout(), ss)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.MachineID, "machine", "", "only snapshots taken of this machine id")
	fl.StringVar(&f.Kind, "kind", "", "only snapshots of this kind (hibernate, snapshot, checkpoint, disk)")
	fl.StringVar(&f.Name, "name", "", "only the snapshot of this name")
	return cmd
}

func (a *app) snapshotInfoCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "info ID",
		Aliases: []string{"get", "show"},
		Short:   "Show a snapshot",
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.GetSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), s)
			}
			return printFields(cmd.OutOrStdout(), [][2]string{
				{"ID", s.ID},
				{"Name", s.Name},
				{"Kind", s.Kind},
				{"Machine", s.MachineID},
				{"Lineage", unlessSelf(s.LineageID, s.MachineID)},
				{"Parent", s.ParentID},
				{"Generation", strconv.Itoa(s.Generation)},
				{"Template", s.Template},
				{"Size", formatBytes(s.SizeBytes)},
				{"Window", formatWindow(s.PauseWindowMS)},
				{"Children", strconv.Itoa(s.Children)},
				{"Checksum", s.Checksum},
				{"Runtime", s.RuntimeVersion},
				{"Kernel", s.Kernel},
				{"Created", formatTime(a.now(), s.CreatedAt)},
			})
		},
	}
}

func (a *app) snapshotRemoveCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots; prints each deleted id",
		Long: `Delete snapshots. A snapshot that holds a paused machine's state or a
stopped machine's files, or that live machines were made from, is refused
unless --force is given; forced, the paused and stopped machines whose state
it held become failed. Every id is tried; the command fails if any of them
fails.`,
		Args: minArgs(1, "ID..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return a.forEach(cmd, args, func(id string) error { return c.DeleteSnapshot(cmd.Context(), id, force) })
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even while machines depend on the snapshot")
	return cmd
}

func (a *app) checkpointCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "checkpoint",
		Aliases: []string{"checkpoints"},
		Short:   "List, create and restore a machine's checkpoints",
		Long: `A machine's history: every state it recorded (pauses, snapshots, checkpoints,
and the disk of a stopped machine), by generation. A checkpoint is taken
while the machine keeps running and can be restored in place later, which is
the only way back to an older state.

A machine keeps its newest checkpoints (pauses included: the server's
--checkpoint-retention, 10 by default, or the machine's checkpoint_retention)
and every pinned one; older ones are pruned.`,
	})
	cmd.AddCommand(a.checkpointListCommand(), a.checkpointCreateCommand(), a.checkpointRestoreCommand(),
		a.checkpointPinCommand(true), a.checkpointPinCommand(false))
	return cmd
}

func (a *app) checkpointListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list MACHINE",
		Aliases: []string{"ls"},
		Short:   "List a machine's history by generation",
		Args:    exactArgs(1, "MACHINE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ss, err := c.Checkpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printSnapshots(cmd.OutOrStdout(), ss)
		},
	}
}

func (a *app) checkpointCreateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "create MACHINE",
		Short: "Checkpoint a running machine; print the checkpoint's id",
		Args:  exactArgs(1, "MACHINE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.Checkpoint(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printSnapshotID(cmd, s)
		},
	}
}

func (a *app) checkpointPinCommand(pin bool) *cobra.Command {
	use, short := "unpin MACHINE SNAPSHOT", "Let retention prune a checkpoint again; print its id"
	if pin {
		use, short = "pin MACHINE SNAPSHOT", "Keep a checkpoint whatever the retention; print its id"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(2, "MACHINE SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.PinCheckpoint(cmd.Context(), args[0], args[1], pin)
			if err != nil {
				return err
			}
			return a.printSnapshotID(cmd, s)
		},
	}
}

func (a *app) checkpointRestoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "restore MACHINE SNAPSHOT",
		Short: "Restore a checkpoint in place; print the machine's id",
		Long: `Replace the state of the machine's latest execution with SNAPSHOT, one of
the states in its history ('nullspace checkpoint ls MACHINE'). The execution
keeps its id and runs again from the checkpoint; newer checkpoints stay.`,
		Args: exactArgs(2, "MACHINE SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			m, err := c.RestoreCheckpoint(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.printMachineID(cmd, m)
		},
	}
}

func (a *app) printMachineID(cmd *cobra.Command, m *api.Machine) error {
	if a.json {
		return printJSON(cmd.OutOrStdout(), m)
	}
	fmt.Fprintln(cmd.OutOrStdout(), m.ID)
	return nil
}

func (a *app) printSnapshotID(cmd *cobra.Command, s *api.Snapshot) error {
	if a.json {
		return printJSON(cmd.OutOrStdout(), s)
	}
	fmt.Fprintln(cmd.OutOrStdout(), s.ID)
	return nil
}

// printSnapshots prints snapshots as a table, or as a JSON array.
func (a *app) printSnapshots(w io.Writer, ss []api.Snapshot) error {
	if a.json {
		if ss == nil {
			ss = []api.Snapshot{}
		}
		return printJSON(w, ss)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tKIND\tMACHINE\tSIZE\tGEN\tAGE\tWINDOW")
	now := a.now()
	for _, s := range ss {
		kind := s.Kind
		if s.Pinned {
			kind += ", pinned"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n",
			s.ID, orDash(s.Name), kind, s.MachineID, formatBytes(s.SizeBytes), s.Generation, formatAge(now, s.CreatedAt), formatWindow(s.PauseWindowMS))
	}
	return tw.Flush()
}

// formatWindow prints a pause window in milliseconds as 85ms or 1.2s.
func formatWindow(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

// forEach calls do for every argument, printing each argument it succeeded
// for (a JSON array of them with --json) and each error as it comes. It
// fails if any call failed.
func (a *app) forEach(cmd *cobra.Command, args []string, do func(arg string) error) error {
	done := []string{}
	failed := 0
	for _, arg := range args {
		if err := do(arg); err != nil {
			if cmd.Context().Err() != nil {
				return err
			}
			printError(cmd.ErrOrStderr(), err)
			failed++
			continue
		}
		done = append(done, arg)
		if !a.json {
			fmt.Fprintln(cmd.OutOrStdout(), arg)
		}
	}
	if a.json {
		if err := printJSON(cmd.OutOrStdout(), done); err != nil {
			return err
		}
	}
	if failed > 0 {
		// Each failure was printed above.
		return &exitCodeError{code: exitError}
	}
	return nil
}
