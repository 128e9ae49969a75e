// Command cluster runs several `nullspace serve` nodes on this host as one
// cluster (package internal/devcluster): a bridge and a network namespace
// per node, one PostgreSQL and one versitygw they share.
//
//	go run ./tools/cluster up [flags] [-- extra serve flags]
//	go run ./tools/cluster down [-name nsc] [-base-dir DIR]
//
// up prints the cluster's variables as shell exports, then runs until
// SIGINT or SIGTERM and removes the cluster. down removes what a run that
// died left behind. Both need root. `make cluster` runs up with the
// binaries of bin/.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"nullspace.dev/nullspace/internal/devcluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		os.Exit(1)
	}
}

func usage() error {
	return errors.New("usage: cluster up [flags] [-- serve flags] | cluster down [flags] (-h for the flags)")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("cluster "+verb, flag.ContinueOnError)
	var o devcluster.Options
	binDir := fs.String("bin-dir", "bin", "directory of nullspace, nullspace-agent, runsc and versitygw (`make build versitygw`)")
	fs.IntVar(&o.Nodes, "nodes", devcluster.DefaultNodes, "how many nodes")
	fs.StringVar(&o.Name, "name", devcluster.DefaultName, "prefix of the cluster's host objects (bridge NAME-br, namespaces NAME-nI, veths NAME-vI)")
	fs.StringVar(&o.Subnet, "subnet", devcluster.DefaultSubnet, "the nodes' network: the bridge is .1, node I is .(10+I)")
	fs.StringVar(&o.BaseDir, "base-dir", devcluster.DefaultBaseDir, "nodes' data dirs and logs (BASE/NAME-nI/serve.log)")
	fs.StringVar(&o.DatabaseURL, "database-url", "", "PostgreSQL the nodes share (default: a throwaway PostgreSQL 15 on the bridge)")
	fs.StringVar(&o.ObjectStore, "object-store", "", "S3 store the nodes share, with AWS_* in the environment (default: versitygw on the bridge)")
	peer := fs.Bool("peer-addr", true, "give each node --peer-addr IP:7946 (left out, with a warning, while serve has no such flag)")
	fs.DurationVar(&o.NodeTTL, "node-ttl", 0, "give each node --node-ttl (0: serve's default)")
	fs.BoolVar(&o.E2BCompat, "e2b", false, "serve the E2B-compatible API on IP:3000")
	templates := fs.String("templates", "minimal", "built-in templates each node makes ready at start (serve's --builtin-templates; base takes minutes the first time)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Logger = logger
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch verb {
	case "down":
		if fs.NArg() > 0 {
			return usage()
		}
		if err := devcluster.Down(ctx, o); err != nil {
			return err
		}
		logger.Info("cluster removed", "name", o.Name)
		return nil
	case "up":
	default:
		return usage()
	}

	dir, err := filepath.Abs(*binDir)
	if err != nil {
		return err
	}
	o.Bin = filepath.Join(dir, "nullspace")
	o.AgentBin = filepath.Join(dir, "nullspace-agent")
	o.Runsc = filepath.Join(dir, "runsc")
	o.Versitygw = filepath.Join(dir, "versitygw")
	if *templates != "" {
		o.ExtraFlags = append(o.ExtraFlags, "--builtin-templates", *templates)
	}
	o.ExtraFlags = append(o.ExtraFlags, fs.Args()...)
	// --peer-addr and --node-ttl are being added to serve; until a binary
	// has them, leave them out rather than fail every node's start.
	help := serveHelp(ctx, o.Bin)
	o.PeerAddr = *peer
	if o.PeerAddr && !strings.Contains(help, "--peer-addr") {
		logger.Warn("this nullspace serve has no --peer-addr; the nodes start without it", "bin", o.Bin)
		o.PeerAddr = false
	}
	if o.NodeTTL != 0 && !strings.Contains(help, "--node-ttl") {
		logger.Warn("this nullspace serve has no --node-ttl; the nodes start without it", "bin", o.Bin)
		o.NodeTTL = 0
	}

	c, err := devcluster.Up(ctx, o)
	if err != nil {
		return err
	}
	for _, kv := range c.Env() {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Printf("export %s=%s\n", k, shellQuote(v))
	}
	fmt.Println("# ready; Ctrl-C stops the cluster")
	<-ctx.Done()
	stop()

	logger.Info("stopping the cluster")
	// Past the signal: a second Ctrl-C now kills this process, and the
	// next up or down cleans what is left.
	closeCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return c.Close(closeCtx)
}

// serveHelp returns `bin serve --help`'s text ("" if it cannot run).
func serveHelp(ctx context.Context, bin string) string {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "serve", "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run()
	return out.String()
}

// shellQuote quotes v for a POSIX shell (object store URLs hold &).
func shellQuote(v string) string {
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}
