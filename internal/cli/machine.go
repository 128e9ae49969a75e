package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) machineCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "machine",
		Aliases: []string{"machines"},
		Short:   "Create, list, inspect and kill machines",
	})
	cmd.AddCommand(a.machineCreateCommand(), a.machineListCommand(), a.machineInfoCommand(), a.machineKillCommand())
	return cmd
}

func (a *app) machineCreateCommand() *cobra.Command {
	var (
		req      api.CreateMachineRequest
		env      []string
		metadata []string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create and start a machine, print its id",
		Example: `  nullspace machine create
  nullspace machine create --template base --cpu 1 --memory 256 --env FOO=bar --metadata owner=me`,
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if req.Env, err = parsePairs("env", env); err != nil {
				return err
			}
			if req.Metadata, err = parsePairs("metadata", metadata); err != nil {
				return err
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
	f.StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE for every command (repeatable)")
	f.StringArrayVar(&metadata, "metadata", nil, "metadata KEY=VALUE (repeatable)")
	f.BoolVar(&req.AllowInternet, "allow-internet", false, "allow outbound internet access")
	return cmd
}

func (a *app) machineListCommand() *cobra.Command {
	var (
		opts     client.ListOptions
		metadata []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List machines",
		Example: `  nullspace machine list --state running --metadata owner=me`,
		Args:    exactArgs(0, ""),
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
	f.StringVar(&opts.State, "state", "", "only machines in this state (creating, running, killing, killed, failed)")
	f.StringArrayVar(&metadata, "metadata", nil, "only machines with metadata KEY=VALUE (repeatable; all must match)")
	return cmd
}

func (a *app) printMachineTable(w io.Writer, ms []api.Machine) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tSTATE\tTEMPLATE\tCPU\tMEM\tIP\tAGE")
	now := a.now()
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\n",
			m.ID, m.State, m.Template, m.CPUCount, m.MemoryMB, dash(m.IP), formatAge(now, m.CreatedAt))
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
				{"Template", m.Template},
				{"CPU", strconv.Itoa(m.CPUCount)},
				{"Memory", strconv.Itoa(m.MemoryMB) + " MiB"},
				{"IP", m.IP},
				{"Internet", strconv.FormatBool(m.AllowInternet)},
				{"Env", formatPairs(m.Env)},
				{"Metadata", formatPairs(m.Metadata)},
				{"Created", formatTime(now, m.CreatedAt)},
			}
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
		Long:    "Kill machines. Every id is tried; the command fails if any of them fails.",
		Args:    minArgs(1, "ID..."),
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
