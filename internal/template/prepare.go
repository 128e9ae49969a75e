package template

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/mountinfo"
)

// AgentDir is the directory, in every rootfs, where the runtime bind-mounts
// the agent read-only.
const AgentDir = "/.nullspace"

// Files the runtime bind-mounts per machine; each must be a regular file in
// the rootfs.
var machineFiles = []string{"etc/hosts", "etc/hostname", "etc/resolv.conf"}

// Prepare readies a root filesystem for the runtime: it makes sure the
// directories /.nullspace (the agent's mount point), /tmp, /proc, /sys and
// /dev exist, and that /etc/hosts, /etc/hostname and /etc/resolv.conf are
// regular files (bind-mounted per machine), replacing a symlink there by an
// empty file. It never writes outside rootfs, whatever symlinks it holds.
func Prepare(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("prepare rootfs %s: %w", rootfs, err)
	}
	defer root.Close()
	dirs := []struct {
		name string
		mode fs.FileMode
	}{
		{strings.TrimPrefix(AgentDir, "/"), 0o755},
		{"tmp", fs.ModeSticky | 0o777},
		{"proc", 0o555},
		{"sys", 0o555},
		{"dev", 0o755},
		{"etc", 0o755},
	}
	for _, d := range dirs {
		if err := ensureDir(root, d.name, d.mode); err != nil {
			return fmt.Errorf("prepare rootfs %s: %w", rootfs, err)
		}
	}
	for _, name := range machineFiles {
		if err := ensureFile(root, name); err != nil {
			return fmt.Errorf("prepare rootfs %s: %w", rootfs, err)
		}
	}
	return nil
}

// ensureDir makes name a directory, replacing a file or symlink, except /etc
// whose replacement would break the rootfs.
func ensureDir(root *os.Root, name string, mode fs.FileMode) error {
	fi, err := root.Lstat(name)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil && name == "etc":
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"the rootfs's /etc is not a directory", "make /etc a real directory in the root filesystem")
	case err == nil:
		if err := root.Remove(name); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := root.Mkdir(name, mode.Perm()); err != nil {
		return err
	}
	return root.Chmod(name, mode) // past the umask, with the sticky bit
}

// ensureFile makes name a regular file, replacing a symlink or device by an
// empty file.
func ensureFile(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return nil
	case err == nil && fi.IsDir():
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("/%s in the rootfs is a directory", name), "make it a regular file")
	case err == nil:
		if err := root.Remove(name); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// writeRootFile writes name in root, replacing whatever is there (a symlink
// is replaced, not followed).
func writeRootFile(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	if fi, err := root.Lstat(name); err == nil && !fi.Mode().IsRegular() {
		if err := root.Remove(name); err != nil {
			return err
		}
	}
	return root.WriteFile(name, data, perm)
}

// removeTree removes path and everything under it, first detaching any mount
// below it (debootstrap bind-mounts the host's /dev; a removal must never
// reach through such a mount).
func removeTree(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := mountinfo.UnmountUnder(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// command describes an external program to run.
type command struct {
	name string
	args []string
	env  []string // nil: inherit
	dir  string
	// newMountNS runs it in a private mount namespace, so that whatever it
	// mounts disappears with it.
	newMountNS bool
	// onLine receives each output line (stdout and stderr), if set.
	onLine func(string)
	// stdin is its standard input; nil: none.
	stdin io.Reader
	// extraFiles are open in it as file descriptors 3, 4, ...
	extraFiles []*os.File
}

// run runs c, killing its whole process group when ctx is done. A failure
// carries the tail of its output.
func (c command) run(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, c.name, c.args...)
	out := &outputTail{max: 8 << 10, onLine: c.onLine}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env, cmd.Dir = c.env, c.dir
	cmd.Stdin, cmd.ExtraFiles = c.stdin, c.extraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.newMountNS {
		// Go makes / recursively private in the child before exec.
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	out.flush()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", filepath.Base(c.name), ctx.Err())
	}
	if tail := out.tail(); tail != "" {
		return fmt.Errorf("%s: %w: %s", filepath.Base(c.name), err, tail)
	}
	return fmt.Errorf("%s: %w", filepath.Base(c.name), err)
}

// outputTail keeps the last max bytes written to it and passes complete lines
// to onLine.
type outputTail struct {
	max    int
	onLine func(string)

	mu      sync.Mutex
	buf     []byte
	partial []byte
}

func (o *outputTail) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if len(o.buf) > 2*o.max {
		o.buf = append(o.buf[:0], o.buf[len(o.buf)-o.max:]...)
	}
	if o.onLine != nil {
		o.partial = append(o.partial, p...)
		for {
			i := bytes.IndexByte(o.partial, '\n')
			if i < 0 {
				break
			}
			o.onLine(string(o.partial[:i]))
			o.partial = o.partial[i+1:]
		}
		if len(o.partial) > o.max {
			o.partial = o.partial[:0]
		}
	}
	return len(p), nil
}

func (o *outputTail) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.onLine != nil && len(o.partial) > 0 {
		o.onLine(string(o.partial))
		o.partial = nil
	}
}

func (o *outputTail) tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return lastBytes(strings.TrimSpace(string(o.buf)), o.max)
}

// lastBytes returns the last n bytes of s, cut at a line start when possible.
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		s = s[i+1:]
	}
	return "..." + s
}
