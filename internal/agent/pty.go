package agent

import (
	"fmt"
	"os"

	"github.com/creack/pty"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// stdio is the parent's and the child's ends of a command's standard files.
type stdio struct {
	stdin, stdout, stderr *os.File    // the agent's ends; stderr nil for a terminal
	child                 [3]*os.File // the command's 0, 1 and 2, closed in the agent once it started
	pty                   *os.File    // the terminal's master, for a command on one
}

func openPipes() (stdio, error) {
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return stdio{}, fmt.Errorf("create stdin pipe: %w", err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		closeAll(stdinR, stdinW)
		return stdio{}, fmt.Errorf("create stdout pipe: %w", err)
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		closeAll(stdinR, stdinW, stdoutR, stdoutW)
		return stdio{}, fmt.Errorf("create stderr pipe: %w", err)
	}
	return stdio{stdin: stdinW, stdout: stdoutR, stderr: stderrR, child: [3]*os.File{stdinR, stdoutW, stderrW}}, nil
}

// openPTY opens a pseudo-terminal of the given size whose terminal side
// belongs to the command's user (so that it can reopen /dev/tty).
func openPTY(size api.PTYSize, id identity) (stdio, error) {
	if err := checkPTYSize(size); err != nil {
		return stdio{}, err
	}
	master, tty, err := pty.Open()
	if err != nil {
		return stdio{}, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	if err := pty.Setsize(master, winsize(size)); err != nil {
		closeAll(master, tty)
		return stdio{}, fmt.Errorf("size the pseudo-terminal: %w", err)
	}
	if id.cred != nil {
		if err := os.Chown(tty.Name(), int(id.cred.Uid), int(id.cred.Gid)); err != nil {
			closeAll(master, tty)
			return stdio{}, fmt.Errorf("give the terminal to %s: %w", id.name, err)
		}
	}
	return stdio{stdin: master, stdout: master, pty: master, child: [3]*os.File{tty, tty, tty}}, nil
}

func checkPTYSize(s api.PTYSize) error {
	if s.Rows < 1 || s.Rows > api.MaxPTYRows || s.Cols < 1 || s.Cols > api.MaxPTYCols {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("terminal size %dx%d is out of range", s.Rows, s.Cols),
			fmt.Sprintf("rows 1 to %d, cols 1 to %d", api.MaxPTYRows, api.MaxPTYCols))
	}
	return nil
}

func winsize(s api.PTYSize) *pty.Winsize {
	return &pty.Winsize{Rows: uint16(s.Rows), Cols: uint16(s.Cols)}
}

// resize changes the size of the command's terminal; the kernel sends its
// foreground group SIGWINCH.
func (p *process) resize(size api.PTYSize) error {
	if err := checkPTYSize(size); err != nil {
		return err
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.pty == nil {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("process %d does not run on a terminal", p.pid), "start it with pty: {rows, cols} to resize it")
	}
	if p.hasExited() {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			fmt.Sprintf("process %d has exited", p.pid), "")
	}
	if err := pty.Setsize(p.pty, winsize(size)); err != nil {
		return fmt.Errorf("resize the terminal of process %d: %w", p.pid, err)
	}
	p.ptySize = &size
	return nil
}
