// Package cli implements the client verbs of the nullspace command (machine,
// exec, files, template, snapshot, checkpoint, volume) on top of the Go client
// in nullspace.dev/nullspace/client.
//
// NewRootCommand builds the command tree; main adds server-side commands
// (serve) with root.AddCommand and runs it with Execute, which prints errors
// and returns the process exit code:
//
//	0    success
//	1    any error (API, network, local file), printed as
//	     "error: <message> (<code>)" plus "hint: <suggested action>"
//	2    usage error (unknown command or flag, wrong arguments)
//	130  interrupted (SIGINT/SIGTERM)
//
// exec exits with the remote command's own exit code instead (see exec.go),
// and machine wait with the machine's main process's (see lifecycle.go).
package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/client"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitInterrupted = 130 // 128 + SIGINT
)

// app holds the global flags and what the commands share.
type app struct {
	version string
	apiURL  string
	apiKey  string
	json    bool
	now     func() time.Time // for AGE columns; replaced in tests
}

// NewRootCommand returns the nullspace command with the client verbs. Add
// more commands with AddCommand before running it with Execute.
func NewRootCommand(version string) *cobra.Command {
	return newRootCommand(&app{version: version, now: time.Now})
}

func newRootCommand(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "nullspace",
		Short: "Self-hostable sandbox machines on gVisor",
		Long: `nullspace creates and drives sandbox machines: isolated Linux machines
run by gVisor. The client commands talk to a nullspace server over HTTP;
on the server host they need no configuration.`,
		Version:       a.version,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	asGroup(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.apiURL, "api-url", "", "API server URL (default $"+client.EnvAPIURL+" or "+client.DefaultAPIURL+")")
	pf.StringVar(&a.apiKey, "api-key", "", "API key (default $"+client.EnvAPIKey+", else the server's key file $"+
		client.EnvDataDir+"/"+client.KeyFileName+", "+client.DefaultDataDir+"/"+client.KeyFileName+" by default)")
	pf.BoolVar(&a.json, "json", false, "print results as JSON")

	root.AddCommand(
		a.machineCommand(),
		a.execCommand(),
		a.shellCommand(),
		a.sshKeyCommand(),
		a.sshTokenCommand(),
		a.teamCommand(),
		a.keyCommand(),
		a.quotaCommand(),
		a.auditCommand(),
		a.usageCommand(),
		a.nodeCommand(),
		a.filesCommand(),
		a.templateCommand(),
		a.snapshotCommand(),
		a.checkpointCommand(),
		a.volumeCommand(),
		a.eventsCommand(),
		a.metricsCommand(),
		a.e2bCommand(),
	)
	return root
}

// Execute runs root under ctx, prints any error on root's stderr and returns
// the exit code for os.Exit.
func Execute(ctx context.Context, root *cobra.Command) int {
	root.SilenceErrors, root.SilenceUsage = true, true
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	w := root.ErrOrStderr()
	var ee *exitCodeError
	var ue usageError
	switch {
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(w, "error: %s\n", ee.msg)
		}
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintf(w, "error: %s\nRun '%s --help' for usage.\n", ue.err, cmd.CommandPath())
		return exitUsage
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		fmt.Fprintln(w, "error: interrupted")
		return exitInterrupted
	}
	printError(w, err)
	return exitError
}

// client returns an API client configured from the global flags and the
// environment.
func (a *app) client() (*client.Client, error) {
	base := a.apiURL
	if base == "" {
		base = client.URLFromEnv()
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid API URL %q: want http(s)://host:port, set with --api-url or %s", base, client.EnvAPIURL)
	}
	key := a.apiKey
	if key == "" {
		var err error
		if key, err = client.KeyFromEnv(); err != nil {
			return nil, err
		}
	}
	return client.New(base, key, client.WithUserAgent("nullspace-cli/"+a.version)), nil
}

// usageError is a command-line mistake; Execute exits 2 for it.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitCodeError makes Execute exit with code, printing msg when it is set.
type exitCodeError struct {
	code int
	msg  string
}

func (e *exitCodeError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return fmt.Sprintf("exit status %d", e.code)
}

// asGroup makes cmd a command that only holds subcommands: without
// arguments it prints its help, with an unknown one it is a usage error.
func asGroup(cmd *cobra.Command) *cobra.Command {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
			if s := c.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf("; did you mean %q?", s[0])
			}
			return usageError{errors.New(msg)}
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	return cmd
}

// Argument validators returning usage errors; names spells the expected
// arguments, e.g. "ID PATH".

func exactArgs(n int, names string) cobra.PositionalArgs {
	return checkArgs(func(got int) bool { return got == n }, names)
}

func minArgs(n int, names string) cobra.PositionalArgs {
	return checkArgs(func(got int) bool { return got >= n }, names)
}

func rangeArgs(lo, hi int, names string) cobra.PositionalArgs {
	return checkArgs(func(got int) bool { return got >= lo && got <= hi }, names)
}

func checkArgs(ok func(int) bool, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if ok(len(args)) {
			return nil
		}
		if names == "" {
			return usageErrorf("want no arguments, got %q", args)
		}
		return usageErrorf("want arguments %s, got %d", names, len(args))
	}
}

// parsePairs turns repeated K=V flag values into a map.
func parsePairs(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(vals))
	for _, v := range vals {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, usageErrorf("invalid --%s %q: want KEY=VALUE", flag, v)
		}
		m[k] = val
	}
	return m, nil
}
