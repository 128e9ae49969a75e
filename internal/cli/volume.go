package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
)

func (a *app) volumeCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "volume",
		Aliases: []string{"volumes", "vol"},
		Short:   "Create, list and delete volumes",
		Long: `Volumes are named directories on the server host that machines mount
('nullspace machine create --volume NAME:/PATH'). They are not part of
snapshots: resumed machines and machines made from a snapshot mount them again.`,
	})
	cmd.AddCommand(a.volumeCreateCommand(), a.volumeListCommand(), a.volumeRemoveCommand())
	return cmd
}

func (a *app) volumeCreateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "create NAME",
		Short: "Create a volume; print its name",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			v, err := c.CreateVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.Name)
			return nil
		},
	}
}

func (a *app) volumeListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List volumes",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			vs, err := c.ListVolumes(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if vs == nil {
					vs = []api.Volume{}
				}
				return printJSON(cmd.OutOrStdout(), vs)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tSIZE\tMACHINES\tAGE")
			now := a.now()
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", v.Name, formatBytes(v.SizeBytes), v.Machines, formatAge(now, v.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) volumeRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete volumes and their files; prints each deleted name",
		Long: `Delete volumes and their files. A volume that a machine which is not killed
mounts, or that a snapshot records, is refused. Every name is tried; the
command fails if any of them fails.`,
		Args: minArgs(1, "NAME..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return a.forEach(cmd, args, func(name string) error { return c.DeleteVolume(cmd.Context(), name) })
		},
	}
}
