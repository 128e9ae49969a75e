package gvisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// CLI invokes runsc the way every caller in this project must: the same
// global flags on every subcommand, each call in its own session (a Ctrl-C
// on the caller never reaches a sandbox), and *os.File stdio for calls whose
// stdio the sandbox inherits. The driver uses it, and so does the benchmark
// for its raw-runsc baseline, so both run runsc identically.
type CLI struct {
	// Bin is the runsc binary.
	Bin string
	// Root is runsc's state directory (--root).
	Root string
	// Platform is the gVisor platform; default "systrap".
	Platform string
}

// GlobalFlags are passed to every subcommand. overlay, the root overlay
// (--overlay2), only matters to run and restore; other subcommands pass "".
func (c *CLI) GlobalFlags(overlay string) []string {
	platform := c.Platform
	if platform == "" {
		platform = "systrap"
	}
	flags := []string{
		"--root=" + c.Root,
		"--platform=" + platform,
		"--network=sandbox",
		// The vCPU count seen inside follows the cgroup CPU quota.
		"--cpu-num-from-quota",
		// Honour setuid and setgid bits, as Linux does: without it runsc
		// ignores them, and sudo as the template's user fails ("effective
		// uid is not 0"). Root inside is the machine's own, and any API
		// caller may already run commands as root: gVisor is the boundary.
		// The kernel keeps the setting in a checkpoint, so a machine
		// paused before it came resumes without it.
		"--allow-suid",
	}
	if overlay != "" {
		flags = append(flags, "--overlay2="+overlay)
	}
	return flags
}

// Command builds a runsc invocation in its own session.
func (c *CLI) Command(ctx context.Context, overlay string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Bin, append(c.GlobalFlags(overlay), args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// Output runs a short subcommand (state, list, kill, delete) and returns its
// stdout. These exit before anything inherits their stdio, so buffers do.
func (c *CLI) Output(ctx context.Context, args ...string) ([]byte, error) {
	cmd := c.Command(ctx, "", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("runsc %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// RunLogged runs a subcommand whose stdio the sandbox may inherit (run
// --detach, restore --detach, exec) with stdin from /dev/null and output
// appended to logPath: files, not pipes, since a pipe held by the sandbox
// would keep Wait hanging for as long as it lives. On failure the error
// carries the log's tail.
func (c *CLI) RunLogged(ctx context.Context, overlay, logPath string, args ...string) error {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("runsc log: %w", err)
	}
	defer log.Close()
	cmd := c.Command(ctx, overlay, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runsc %s: %w: %s", args[0], err, failure(logPath))
	}
	return nil
}

// failure summarizes why a logged runsc call failed: the end of the log,
// unless the sandbox panicked, whose message would be lost behind the
// goroutine dump that follows it.
func failure(logPath string) string {
	tail := Tail(logPath, 256<<10)
	for _, marker := range []string{"\npanic: ", "\nfatal error: "} {
		if i := strings.LastIndex(tail, marker); i >= 0 {
			msg := tail[i+1:]
			if j := strings.Index(msg, "\ngoroutine "); j >= 0 {
				msg = msg[:j]
			}
			if len(msg) > 2048 {
				msg = msg[:2048]
			}
			return strings.TrimSpace(msg) + " (full trace in " + logPath + ")"
		}
	}
	if len(tail) > 1024 {
		tail = tail[len(tail)-1024:]
	}
	return tail
}

// List returns the ids of the containers under Root; none when the root was
// never made.
func (c *CLI) List(ctx context.Context) ([]string, error) {
	if _, err := os.Stat(c.Root); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := c.Output(ctx, "list", "--quiet")
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// Tail returns up to n bytes from the end of a file, for error messages.
func Tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(-n, 2)
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	return strings.TrimSpace(string(b[:k]))
}
