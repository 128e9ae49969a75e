package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) eventsCommand() *cobra.Command {
	var (
		q      client.EventQuery
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List lifecycle events, or follow them with -f",
		Long: `List the lifecycle events of your machines (created, paused, resumed,
timeout, killed, failed, snapshot created/deleted, lease updated), oldest
first, or with -f follow them as they happen. Every event has a sequence
number; after a disconnect, --after SEQ resumes where you were.`,
		Example: `  nullspace events
  nullspace events -f --machine mch_1a2b3c4d5e6f7a8b9c0d
  nullspace events --type machine.paused,machine.resumed --after 120 --json`,
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			print := func(ev api.Event) error {
				if a.json {
					b, err := json.Marshal(ev)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(out, "%s\n", b)
					return err
				}
				_, err := fmt.Fprintln(out, formatEvent(ev))
				return err
			}
			if follow {
				return c.FollowEvents(cmd.Context(), q, print)
			}
			evs, err := c.ListEvents(cmd.Context(), q)
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if err := print(ev); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing events as they happen")
	f.StringVar(&q.MachineID, "machine", "", "only this machine's events")
	f.StringSliceVar(&q.Types, "type", nil, "only these event types (comma-separated or repeated)")
	f.Int64Var(&q.After, "after", 0, "only events after this sequence number")
	f.IntVar(&q.Limit, "limit", 0, "at most this many events (1 to 1000; list only)")
	return cmd
}

// formatEvent is one line: seq, time, type, machine, cause, details.
func formatEvent(ev api.Event) string {
	var details []string
	keys := make([]string, 0, len(ev.Details))
	for k := range ev.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		details = append(details, k+"="+detailValue(ev.Details[k]))
	}
	return fmt.Sprintf("%-6d %s  %-22s %-24s %-12s %s", ev.Seq, ev.Time.Local().Format(time.DateTime), ev.Type,
		orDash(ev.MachineID), ev.Cause, strings.Join(details, " "))
}

// detailValue prints a detail as it came in the JSON: numbers as written
// (not 3.538569e+06), strings bare, objects and arrays as compact JSON.
func detailValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return "null"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
