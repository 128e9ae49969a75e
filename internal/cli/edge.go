package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/server"
)

// Public URLs of machine ports, served by the edge of `nullspace serve`.

func (a *app) machineURLCommand() *cobra.Command {
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "url ID PORT [--expires DURATION]",
		Short: "Print the public URL of a machine's port",
		Long: `Print the signed public URL of a port of a machine, served by the server's
edge. The URL names the machine, not one execution: it keeps working when the
machine is paused and resumed under new ids, and a request to it wakes a paused
machine that has auto_resume. Append any path and query to it.

With --json it prints every form: url (use this one), ws_url, origin_url (the
port as its own browser origin, {port}-{id}-{signature}.{domain}) and
path_url (needs no DNS). On the server host with the default localhost domain,
url is the path form, which every client resolves; browsers opening it are
redirected to origin_url.`,
		Example: `  nullspace machine url $ID 8080
  curl "$(nullspace machine url $ID 8080)/index.html"
  nullspace machine url $ID 3000 --expires 1h --json`,
		Args: exactArgs(2, "ID PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var port int
			if _, err := fmt.Sscan(args[1], &port); err != nil || fmt.Sprint(port) != args[1] {
				return usageErrorf("invalid PORT %q: give a port number from 1 to 65535", args[1])
			}
			if expires < 0 {
				return usageErrorf("invalid --expires %s: must not be negative", expires)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			u, err := c.MachineURL(cmd.Context(), args[0], port, expires)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), u)
			}
			fmt.Fprintln(cmd.OutOrStdout(), u.URL)
			return nil
		},
	}
	cmd.Flags().DurationVar(&expires, "expires", 0, "the URL stops working this long from now (default: never)")
	return cmd
}

// NewEdgeCommand returns `nullspace edge`, the operator's commands for the
// edge, run on the server host.
func NewEdgeCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{Use: "edge", Short: "Operate the edge that serves machine URLs (on the server host)"})
	dataDir := client.DefaultDataDir
	if d := os.Getenv(client.EnvDataDir); d != "" {
		dataDir = d
	}
	rotate := &cobra.Command{
		Use:   "rotate-secret [--data-dir DIR]",
		Short: "Replace the secret machine URLs are signed with; every URL issued before stops working",
		Long: `Write a new edge secret to <data dir>/edge-secret. A running server picks it up
within a second: from then on every signed machine URL issued before is
refused with 403 url_signature_invalid, and new URLs must be asked for. URLs
of machines with public ports carry no signature and keep working.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := filepath.Join(dataDir, server.EdgeSecretFile)
			if _, err := os.Stat(dataDir); err != nil {
				return fmt.Errorf("data dir %s: %w (pass --data-dir)", dataDir, err)
			}
			if err := edge.RotateSecret(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote a new edge secret to %s; every machine URL issued before is now refused\n", path)
			return nil
		},
	}
	rotate.Flags().StringVar(&dataDir, "data-dir", dataDir, "the server's data directory (env "+client.EnvDataDir+")")
	cmd.AddCommand(rotate)
	return cmd
}
