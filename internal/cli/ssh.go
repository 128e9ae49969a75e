package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
)

func (a *app) sshKeyCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "ssh-key",
		Aliases: []string{"ssh-keys"},
		Short:   "Register, list and remove SSH public keys",
		Long: `SSH public keys registered for the team sign in to any of its machines
through the SSH gateway (nullspace serve --ssh-addr):

  ssh -p PORT MACHINE-ID@HOST`,
	})
	cmd.AddCommand(a.sshKeyAddCommand(), a.sshKeyListCommand(), a.sshKeyRemoveCommand())
	return cmd
}

func (a *app) sshKeyAddCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "add [FILE|-]",
		Short: "Register a public key (default ~/.ssh/id_ed25519.pub, else id_rsa.pub); print its fingerprint",
		Example: `  nullspace ssh-key add
  nullspace ssh-key add ~/.ssh/work.pub --name work-laptop
  cat key.pub | nullspace ssh-key add -`,
		Args: rangeArgs(0, 1, "[FILE|-]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			line, err := readPublicKey(cmd.InOrStdin(), args)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			k, err := c.AddSSHKey(cmd.Context(), line, name)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s\n", k.ID, k.Fingerprint, k.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a name for the key (default: its comment)")
	return cmd
}

// readPublicKey reads the key to register: the file named, stdin for "-",
// or the user's default public key.
func readPublicKey(stdin io.Reader, args []string) (string, error) {
	var b []byte
	var err error
	switch {
	case len(args) == 1 && args[0] == "-":
		b, err = io.ReadAll(io.LimitReader(stdin, 64<<10))
	case len(args) == 1:
		b, err = os.ReadFile(args[0])
	default:
		home, _ := os.UserHomeDir()
		for _, name := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
			if b, err = os.ReadFile(filepath.Join(home, ".ssh", name)); err == nil {
				break
			}
		}
		if err != nil {
			return "", usageError{fmt.Errorf("no public key in %s/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): name the .pub file to add, or make one with ssh-keygen -t ed25519", home)}
		}
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (a *app) sshKeyListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the team's SSH keys",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			keys, err := c.ListSSHKeys(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if keys == nil {
					keys = []api.SSHKey{}
				}
				return printJSON(cmd.OutOrStdout(), keys)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tFINGERPRINT\tNAME\tAGE")
			now := a.now()
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.Fingerprint, k.Name, formatAge(now, k.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) sshKeyRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID|FINGERPRINT",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove an SSH key",
		Args:    exactArgs(1, "ID|FINGERPRINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteSSHKey(cmd.Context(), args[0])
		},
	}
}

func (a *app) sshTokenCommand() *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "ssh-token ID",
		Short: "Print a short-lived SSH password for a machine, and the ssh command to use it",
		Long: `Print a token that signs in to the machine through the SSH gateway as
the password (for a host without a registered key), and the ssh command
line on stderr. The token names the machine's lineage: it works across
pauses and resumes until it expires.`,
		Example: `  nullspace ssh-token $ID --ttl 1h`,
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			t, err := c.SSHToken(cmd.Context(), args[0], ttl)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "# %s  (password above, valid until %s)\n", t.Command, t.ExpiresAt.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token is valid (default 10m, at most 24h)")
	return cmd
}
