package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
)

func (a *app) nodeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "The nodes of the cluster: list them, drain one before maintenance (operator key)",
		Long: `The cluster is the servers that share one PostgreSQL database (--database-url)
and object store. Every node answers every call: a call on a machine is
forwarded to the node that runs it. Draining a node stops placements on it and
pauses its machines, which resume on other nodes when they are next used.`,
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the nodes, their state, heartbeat and room",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			nodes, err := c.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), nodes)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "NAME\tSTATE\tEPOCH\tHEARTBEAT\tMACHINES\tMEMORY\tSLOTS\tLOAD\tPEER\n")
			for _, n := range nodes {
				state := n.State
				if n.Drained {
					state += ",drained"
				}
				if n.Self {
					state += ",self"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s ago\t%d\t%d/%d MiB\t%d free of %d\t%.2f\t%s\n", n.Name, state, n.Epoch,
					(time.Duration(n.HeartbeatAgeMS) * time.Millisecond).Round(100*time.Millisecond), n.Capacity.Machines,
					n.Capacity.CommittedMB, n.Capacity.MemoryMB, n.Capacity.FreeSlots, n.Capacity.Slots, n.Capacity.Load, dash(n.PeerURL))
			}
			return tw.Flush()
		},
	}
	drain := func(use, short string, drained bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  exactArgs(1, "NAME"),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := a.client()
				if err != nil {
					return err
				}
				n, err := c.DrainNode(cmd.Context(), args[0], drained)
				if err != nil {
					return err
				}
				if a.json {
					return printJSON(cmd.OutOrStdout(), n)
				}
				return printNodeChange(a, cmd, n)
			},
		}
	}
	cmd.AddCommand(list,
		drain("drain", "Stop placements on a node and pause its machines, so that they resume elsewhere", true),
		drain("undrain", "Let machines be placed on a node again", false))
	return cmd
}

func printNodeChange(_ *app, cmd *cobra.Command, n *api.Node) error {
	what := "undrained: machines may be placed on it again"
	if n.Drained {
		what = "drained: no placements on it; it pauses its machines, which resume on other nodes"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "node %s %s\n", n.Name, what)
	return nil
}
