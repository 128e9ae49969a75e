// Command nullspace is the Nullspace binary: the server (serve) and the
// client verbs (machine, exec, files, template).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"nullspace.dev/nullspace/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(context.Background()))
}

// run builds the command tree and executes it, returning the exit code.
func run(ctx context.Context) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	root := cli.NewRootCommand(version)
	// Server-side commands are added here, one line each:
	root.AddCommand(cli.NewServeCommand(version), cli.NewEdgeCommand(), cli.NewStoreCommand())

	return cli.Execute(ctx, root)
}
