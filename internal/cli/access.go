package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) teamCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "team",
		Aliases: []string{"teams"},
		Short:   "Create, list and delete teams (operator key)",
		Long: `A team owns machines, snapshots, volumes, templates and API keys; a key
of one team never sees another's. Managing teams needs the operator's key
(the one the server wrote at its first start).`,
	})
	cmd.AddCommand(a.teamCreateCommand(), a.teamListCommand(), a.teamDeleteCommand())
	return cmd
}

func (a *app) teamCreateCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a team; give it keys with: nullspace key create --team ID",
		Example: `  nullspace team create acme`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			t, err := c.CreateTeam(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", t.ID, t.Name)
			return nil
		},
	}
}

func (a *app) teamListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the teams",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			teams, err := c.ListTeams(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if teams == nil {
					teams = []api.Team{}
				}
				return printJSON(cmd.OutOrStdout(), teams)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tNAME\tAGE")
			now := a.now()
			for _, t := range teams {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.ID, t.Name, formatAge(now, t.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) teamDeleteCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm ID",
		Aliases: []string{"remove", "delete"},
		Short:   "Delete a team and revoke its keys",
		Long: `Deletes a team and revokes its keys. A team that still has machines is
refused unless --force: then its machines are killed and its snapshots and
volumes deleted.`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteTeam(cmd.Context(), args[0], force)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the team's machines and delete its snapshots and volumes")
	return cmd
}

func (a *app) keyCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "key",
		Aliases: []string{"keys"},
		Short:   "Create, list and revoke API keys",
		Long: `Each API key belongs to a team and has scopes:

  machines:read    read machines, snapshots, volumes, events, files, output
  machines:write   everything a machine does (implies machines:read)
  templates:write  build and delete the team's templates
  keys:admin       the team's own keys
  operator         all of the above, teams, every team's keys, metrics

A key can make keys with no more scopes than its own.`,
	})
	cmd.AddCommand(a.keyCreateCommand(), a.keyListCommand(), a.keyCurrentCommand(), a.keyRevokeCommand())
	return cmd
}

func (a *app) keyCreateCommand() *cobra.Command {
	var (
		team, name string
		scopes     []string
		expiresIn  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create an API key and print it (it is shown once)",
		Example: `  nullspace key create --name ci --scope machines:write
  nullspace key create --team team_1a2b --scope machines:write --scope keys:admin --expires-in 720h`,
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if expiresIn < 0 {
				return usageError{fmt.Errorf("--expires-in %s is negative", expiresIn)}
			}
			req := api.CreateAPIKeyRequest{Name: name, TeamID: team, Scopes: scopes}
			if expiresIn > 0 {
				at := a.now().Add(expiresIn).UTC()
				req.ExpiresAt = &at
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			k, err := c.CreateKey(cmd.Context(), req)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s of team %s, scopes %s; it is not shown again\n", k.ID, k.TeamID, strings.Join(k.Scopes, ","))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "a name for the key")
	f.StringVar(&team, "team", "", "the team the key acts for (default: the caller's; another team needs the operator key)")
	f.StringSliceVar(&scopes, "scope", []string{"machines:write"}, "a scope (repeat, or comma-separate): machines:read, machines:write, templates:write, keys:admin, operator")
	f.DurationVar(&expiresIn, "expires-in", 0, "how long until the key stops working, e.g. 720h (default: never)")
	return cmd
}

func (a *app) keyListCommand() *cobra.Command {
	var team string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List a team's API keys (never the keys themselves)",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			keys, err := c.ListKeys(cmd.Context(), team)
			if err != nil {
				return err
			}
			if a.json {
				if keys == nil {
					keys = []api.APIKey{}
				}
				return printJSON(cmd.OutOrStdout(), keys)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tPREFIX\tNAME\tSCOPES\tAGE\tLAST USED\tSTATE")
			now := a.now()
			for _, k := range keys {
				used := "never"
				if k.LastUsedAt != nil {
					used = formatAge(now, *k.LastUsedAt) + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, k.Name, strings.Join(k.Scopes, ","),
					formatAge(now, k.CreatedAt), used, keyState(now, k))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&team, "team", "", "the team whose keys to list (default: the caller's; another team needs the operator key)")
	return cmd
}

func keyState(now time.Time, k api.APIKey) string {
	switch {
	case k.RevokedAt != nil:
		return "revoked"
	case k.ExpiresAt != nil && !now.Before(*k.ExpiresAt):
		return "expired"
	case k.ExpiresAt != nil:
		return "expires in " + formatAge(*k.ExpiresAt, now)
	}
	return "active"
}

func (a *app) keyCurrentCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "current",
		Short: "Describe the key this CLI uses (its team and scopes)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			k, err := c.CurrentKey(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s team %s scopes %s\n", k.ID, k.Prefix, k.TeamID, strings.Join(k.Scopes, ","))
			return nil
		},
	}
}

func (a *app) keyRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Aliases: []string{"rm"},
		Short:   "Revoke an API key: every request with it is refused from now on",
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			k, err := c.RevokeKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (%s)\n", k.ID, k.Prefix)
			return nil
		},
	}
}

func (a *app) quotaCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "quota",
		Aliases: []string{"quotas"},
		Short:   "Show a team's quotas and use; set them (operator key)",
	})
	cmd.AddCommand(a.quotaShowCommand(), a.quotaSetCommand())
	return cmd
}

func (a *app) quotaShowCommand() *cobra.Command {
	var team string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the limits in force and the use (0: no limit)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			q, err := c.Quotas(cmd.Context(), team)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), q)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "QUOTA\tUSED\tLIMIT\t(team %s)\n", q.TeamID)
			limit := func(v int64) string {
				if v == 0 {
					return "none"
				}
				return fmt.Sprint(v)
			}
			for _, r := range []struct {
				name        string
				used, limit int64
			}{
				{"running_machines", q.Usage.RunningMachines, q.Limits.RunningMachines},
				{"vcpus", q.Usage.VCPUs, q.Limits.VCPUs},
				{"memory_mb", q.Usage.MemoryMB, q.Limits.MemoryMB},
				{"snapshot_bytes", q.Usage.SnapshotBytes, q.Limits.SnapshotBytes},
				{"creates_per_minute", q.Usage.CreatesPerMinute, q.Limits.CreatesPerMinute},
			} {
				fmt.Fprintf(tw, "%s\t%d\t%s\t\n", r.name, r.used, limit(r.limit))
			}
			fmt.Fprintf(tw, "api_rate\t-\t%s\t(per key, a second; burst %d)\n", limit(q.Limits.APIRate), q.Limits.APIBurst)
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&team, "team", "", "another team (operator key)")
	return cmd
}

func (a *app) quotaSetCommand() *cobra.Command {
	var running, vcpus, memory, snapshotBytes, creates, apiRate, apiBurst int64
	cmd := &cobra.Command{
		Use:     "set TEAM-ID",
		Short:   "Set a team's own limits; a limit not given takes the server's default, 0 is none",
		Example: `  nullspace quota set team_1a2b --running-machines 10 --memory-mb 8192 --creates-per-minute 30`,
		Args:    exactArgs(1, "TEAM-ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.SetQuotaRequest
			for name, dst := range map[string]**int64{"running-machines": &req.RunningMachines, "vcpus": &req.VCPUs,
				"memory-mb": &req.MemoryMB, "snapshot-bytes": &req.SnapshotBytes, "creates-per-minute": &req.CreatesPerMinute,
				"api-rate": &req.APIRate, "api-burst": &req.APIBurst} {
				if cmd.Flags().Changed(name) {
					v, _ := cmd.Flags().GetInt64(name)
					*dst = &v
				}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			q, err := c.SetQuota(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), q)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "team %s: running_machines %d, vcpus %d, memory_mb %d, snapshot_bytes %d, creates_per_minute %d (0: none)\n",
				q.TeamID, q.Limits.RunningMachines, q.Limits.VCPUs, q.Limits.MemoryMB, q.Limits.SnapshotBytes, q.Limits.CreatesPerMinute)
			return nil
		},
	}
	f := cmd.Flags()
	f.Int64Var(&running, "running-machines", 0, "machines with a sandbox")
	f.Int64Var(&vcpus, "vcpus", 0, "vCPUs of those machines")
	f.Int64Var(&memory, "memory-mb", 0, "MiB of memory of those machines")
	f.Int64Var(&snapshotBytes, "snapshot-bytes", 0, "bytes of paused states, snapshots and checkpoints")
	f.Int64Var(&creates, "creates-per-minute", 0, "machines created a minute")
	f.Int64Var(&apiRate, "api-rate", 0, "requests a second of each of the team's API keys")
	f.Int64Var(&apiBurst, "api-burst", 0, "requests at once of each of the team's API keys")
	return cmd
}

func (a *app) auditCommand() *cobra.Command {
	var q client.AuditQuery
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: team, key and quota changes, refused requests (operator key)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			l, err := c.Audit(cmd.Context(), q)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), l)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "TIME\tACTION\tTARGET\tOUTCOME\tTEAM\tBY\tFROM\tDETAILS")
			for _, e := range l.Entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Action, e.Target, e.Outcome,
					e.TeamID, e.ActorKeyID, e.Source, string(e.Details))
			}
			if l.Before != "" {
				fmt.Fprintf(tw, "(older: --before %s)\n", l.Before)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.TeamID, "team", "", "entries about this team")
	f.StringVar(&q.Action, "action", "", "entries of this action (key.create, key.revoke, team.create, team.delete, quota.set, request.denied)")
	f.StringVar(&q.Before, "before", "", "older than this entry id (the previous page's last)")
	f.IntVar(&q.Limit, "limit", 50, "entries to show")
	return cmd
}
