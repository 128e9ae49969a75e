package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
)

func (a *app) metricsCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "metrics ID",
		Short: "Show a running machine's CPU, memory, disk and network samples, or follow them with -f",
		Long: `Print the machine's recent samples (one every 5 s, the last 10 minutes):
CPU used in percent of its vCPUs, memory, disk written to its root overlay,
and network bytes. With -f, print each new sample as it is taken.`,
		Example: `  nullspace metrics mch_1a2b3c4d5e6f7a8b9c0d
  nullspace metrics -f mch_1a2b3c4d5e6f7a8b9c0d --json`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			print := func(s api.MetricSample) error {
				if a.json {
					b, err := json.Marshal(s)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(out, "%s\n", b)
					return err
				}
				_, err := fmt.Fprintf(out, "%s  cpu %5.1f%% of %d  mem %s/%s  disk %s  net rx %s tx %s\n",
					s.Timestamp.Local().Format(time.TimeOnly), s.CPUUsedPct, s.CPUCount, formatBytes(int64(s.MemUsed)),
					formatBytes(int64(s.MemTotal)), formatBytes(int64(s.DiskUsed)), formatBytes(int64(s.NetRxBytes)), formatBytes(int64(s.NetTxBytes)))
				return err
			}
			if follow {
				return c.Monitor(cmd.Context(), args[0], print)
			}
			samples, err := c.Metrics(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, s := range samples {
				if err := print(s); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing samples as they are taken")
	return cmd
}
