package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/apikey"
)

func (a *app) e2bCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "e2b",
		Short: "Use E2B's SDKs with this server (serve --e2b-compat)",
	}
	asGroup(cmd)
	cmd.AddCommand(a.e2bEnvCommand())
	return cmd
}

func (a *app) e2bEnvCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "env",
		Short: "Print E2B's environment variables for this server as export lines",
		Long: `env prints the variables that point E2B's unmodified SDKs at this server's
E2B-compatible API (nullspace serve --e2b-compat): E2B_API_URL and
E2B_SANDBOX_URL (the one listener for the control plane and envd),
E2B_API_KEY (this CLI's Nullspace API key, in its E2B form e2b_... that
every E2B SDK release accepts) and, with an edge,
E2B_DOMAIN, so that sandbox.getHost(port) reaches ports through it.`,
		Example: `  eval "$(nullspace e2b env)"
  node agent.mjs   # uses the e2b package, unchanged`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			h, err := c.Health(cmd.Context())
			if err != nil {
				return err
			}
			if h.E2B == nil {
				return errors.New("this server does not serve the E2B-compatible API: restart it with `nullspace serve --e2b-compat`")
			}
			key := a.apiKey
			if key == "" {
				if key, err = client.KeyFromEnv(); err != nil {
					return err
				}
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "export E2B_API_URL=%s\n", shellQuote(h.E2B.URL))
			fmt.Fprintf(w, "export E2B_SANDBOX_URL=%s\n", shellQuote(h.E2B.URL))
			// The E2B form of the same key: E2B's SDKs from 2.27.0 to
			// 2.45.0 refuse keys not spelt e2b_ + hex.
			fmt.Fprintf(w, "export E2B_API_KEY=%s\n", shellQuote(apikey.E2BForm(key)))
			if h.E2B.Domain != "" {
				fmt.Fprintf(w, "export E2B_DOMAIN=%s\n", shellQuote(h.E2B.Domain))
			}
			return nil
		},
	}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./-_", r)) {
			return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
		}
	}
	if s == "" {
		return "''"
	}
	return s
}
