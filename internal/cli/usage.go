package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/client"
)

func (a *app) usageCommand() *cobra.Command {
	var from, to, groupBy, team string
	var csv bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show what the team used: running vCPU- and GiB-seconds, stored snapshots, creates, resumes, egress",
		Long: `Show the team's usage over a range (default: the last 24 hours), the basis
for billing: running time in vCPU-seconds and GiB-seconds of memory, stored
snapshots in GiB-seconds, creates, resumes and bytes sent, integrated from the
recorded transitions. --from and --to take RFC 3339 times or a duration
before now (2h, 30m).`,
		Example: `  nullspace usage --group-by machine
  nullspace usage --from 2026-12-01T00:00:00Z --to 2026-12-08T00:00:00Z --group-by team,day --csv
  nullspace usage --team '*' --group-by team     # every team (operator key)`,
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := client.UsageQuery{TeamID: team}
			if groupBy != "" {
				q.GroupBy = strings.Split(groupBy, ",")
			}
			now := time.Now()
			var err error
			if q.From, err = usageTime("--from", from, now); err != nil {
				return err
			}
			if q.To, err = usageTime("--to", to, now); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if csv {
				return c.UsageCSV(cmd.Context(), q, cmd.OutOrStdout())
			}
			u, err := c.Usage(cmd.Context(), q)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), u)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "TEAM\tMACHINE\tDAY\tRUNNING_S\tVCPU_S\tMEMORY_GIB_S\tSTORAGE_GIB_S\tCREATES\tRESUMES\tEGRESS_BYTES\n")
			dash := func(s string) string {
				if s == "" {
					return "-"
				}
				return s
			}
			for _, r := range u.Rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d\t%d\n", dash(r.TeamID), dash(r.MachineID), dash(r.Day),
					r.RunningSeconds, r.VCPUSeconds, r.MemoryGiBSeconds, r.StorageGiBSeconds, r.Creates, r.Resumes, r.EgressBytes)
			}
			fmt.Fprintf(tw, "(from %s to %s)\n", u.From.Format(time.RFC3339), u.To.Format(time.RFC3339))
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "start of the range: RFC 3339, or a duration before now (default: --to minus 24h)")
	f.StringVar(&to, "to", "", "end of the range, excluded: RFC 3339, or a duration before now (default: now)")
	f.StringVar(&groupBy, "group-by", "", "rows per team, machine and/or day (UTC), comma-separated (default: one row of totals)")
	f.BoolVar(&csv, "csv", false, "print CSV with a header line")
	f.StringVar(&team, "team", "", "another team, or '*' for every team (operator key)")
	return cmd
}

// usageTime reads a flag's RFC 3339 time or duration before now ("": zero).
func usageTime(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s %q is neither an RFC 3339 time (2026-12-01T00:00:00Z) nor a duration before now (24h)", flag, v)
}
