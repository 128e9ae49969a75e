// Command nullspace-agent is the in-machine agent: the init (PID 1) of
// every Nullspace machine. It is configured by the environment:
//
//	NULLSPACE_AGENT_TOKEN           bearer token (required)
//	NULLSPACE_AGENT_ADDR            listen address (default :49983)
//	NULLSPACE_AGENT_MAX_FILE_BYTES  largest file upload (default 1 GiB)
//	NULLSPACE_AGENT_OUTPUT_BYTES    output kept per process and stream (default 1 MiB)
//	NULLSPACE_WORKDIR               default cwd of commands, when it exists
//	NULLSPACE_MACHINE_ID            the machine's id (a restore replaces it)
//	NULLSPACE_AGENT_CONTAIN         0 turns off the process limit and OOM watcher (default on as PID 1)
//
// NULLSPACE_AGENT_* variables are not passed on to commands. See package
// nullspace.dev/nullspace/internal/agent.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"nullspace.dev/nullspace/internal/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// startupProcsEnv, set to 1, says GOMAXPROCS was set by the server for the
// agent's start-up only.
const startupProcsEnv = "NULLSPACE_AGENT_STARTUP_GOMAXPROCS"

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", "nullspace-agent")
	environ := os.Environ()
	if os.Getenv(startupProcsEnv) == "1" {
		// The server runs us with GOMAXPROCS=1. The agent is I/O-bound (a
		// goroutine blocked in a syscall still gets its own thread), and one
		// P means fewer threads, each costly to create under gVisor's
		// systrap: the agent answers ~8 ms sooner after `runsc run` (the
		// create path) and idles in less memory. User commands must not
		// inherit the setting.
		environ = slices.DeleteFunc(environ, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	swallowStraySignals(log)
	if err := run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg agent.Config, log *slog.Logger) error {
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// swallowStraySignals keeps the agent alive when a user signals init
// (kill -HUP 1): the Go runtime would otherwise exit on these and take the
// machine down. Notify rather than signal.Ignore: ignored dispositions
// would be inherited by every command.
func swallowStraySignals(log *slog.Logger) {
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU,
		syscall.SIGVTALRM, syscall.SIGPROF, syscall.SIGXCPU, syscall.SIGXFSZ)
	go func() {
		for sig := range sigc {
			log.Info("ignoring signal", "signal", sig.String())
		}
	}()
}

// loadConfig reads the configuration from environ (KEY=VALUE entries).
func loadConfig(environ []string) (agent.Config, error) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	cfg := agent.Config{
		Token:     env["NULLSPACE_AGENT_TOKEN"],
		MachineID: env["NULLSPACE_MACHINE_ID"],
		Addr:      env["NULLSPACE_AGENT_ADDR"],
		Workdir:   env["NULLSPACE_WORKDIR"],
		Env:       environ,
		Version:   version,
		// In a machine (PID 1) the agent contains what runs inside it.
		Contain: os.Getpid() == 1 && env["NULLSPACE_AGENT_CONTAIN"] != "0",
	}
	if s := env["NULLSPACE_AGENT_MAX_FILE_BYTES"]; s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("NULLSPACE_AGENT_MAX_FILE_BYTES=%q: want a positive number of bytes", s)
		}
		cfg.MaxFileBytes = n
	}
	if s := env["NULLSPACE_AGENT_OUTPUT_BYTES"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("NULLSPACE_AGENT_OUTPUT_BYTES=%q: want a positive number of bytes", s)
		}
		cfg.OutputBytes = n
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}
