package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// proc is one run of a node's process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once Wait returned
	// tail returns the end of the node's output, for errors.
	tail func() string
	logf *os.File // the default log file, closed at exit; nil with Output
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exitedNow() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// signal sends sig to the process by its pid. A process that already
// exited is no error.
func (p *proc) signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// stop sends SIGTERM and waits up to timeout, then SIGKILL.
func (p *proc) stop(timeout time.Duration) error {
	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.exited
	return fmt.Errorf("pid %d did not stop in %v of SIGTERM; killed", p.pid(), timeout)
}

// Start starts node i with the arguments Up gave it and waits until it
// answers its health check. The node must not be running.
func (c *Cluster) Start(ctx context.Context, i int) error {
	if err := c.checkIndex(i); err != nil {
		return err
	}
	n := c.l.node(i)
	log := c.log.With("node", n.Name)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("devcluster: start node %d: the cluster is closed: %w", i, errdefs.ErrFailedPrecondition)
	}
	if p := c.nodes[i-1]; p != nil && !p.exitedNow() {
		c.mu.Unlock()
		return fmt.Errorf("devcluster: start node %d: it is running (pid %d); Stop or Kill it first: %w", i, p.pid(), errdefs.ErrFailedPrecondition)
	}
	p, err := c.spawn(i)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.nodes[i-1] = p
	c.mu.Unlock()

	log.Info("node starting", "pid", p.pid(), "api", n.APIURL)
	start := time.Now()
	if err := waitHealthy(ctx, n.APIURL, p, c.l.o.StartTimeout); err != nil {
		return fmt.Errorf("devcluster: node %s (pid %d) did not become healthy: %w; the end of its log:\n%s", n.Name, p.pid(), err, p.tail())
	}
	log.Info("node ready", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// spawn starts node i's process. c.mu is held.
func (c *Cluster) spawn(i int) (*proc, error) {
	n := c.l.node(i)
	if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("devcluster: make data dir of node %s: %w", n.Name, err)
	}
	p := &proc{exited: make(chan struct{})}
	args := c.l.nodeArgs(i)
	cmd := exec.Command(args[0], args[1:]...)
	if c.l.o.Output != nil {
		tail := &tailBuffer{max: tailBytes}
		cmd.Stdout = io.MultiWriter(c.l.o.Output(n.Name), tail)
		p.tail = tail.String
	} else {
		// The file itself, not a pipe through this process: a node
		// outlives a cluster process that crashed (until the next Up or
		// Down stops it by its pid file) instead of dying of SIGPIPE at
		// its next log line.
		path := filepath.Join(n.DataDir, "serve.log")
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("devcluster: open log of node %s: %w", n.Name, err)
		}
		p.logf, cmd.Stdout = f, f
		p.tail = func() string { return fileTail(path, tailBytes) }
	}
	cmd.Stderr = cmd.Stdout
	cmd.Env = append(os.Environ(), c.env...)
	// A process group of its own: Ctrl-C at the terminal reaches the
	// cluster, which stops the nodes in order, not each node at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		if p.logf != nil {
			p.logf.Close()
		}
		return nil, fmt.Errorf("devcluster: start node %s: %w", n.Name, err)
	}
	go func() {
		_ = cmd.Wait()
		if p.logf != nil {
			p.logf.Close()
		}
		close(p.exited)
	}()
	// nsenter execs serve in the same process, so this pid is the node's.
	if err := os.WriteFile(c.l.pidFile(i), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		_ = p.signal(syscall.SIGKILL)
		<-p.exited
		return nil, fmt.Errorf("devcluster: record node %s's pid: %w", n.Name, err)
	}
	return p, nil
}

// Stop sends node i SIGTERM and waits for it to exit, up to StopTimeout;
// then it is killed and Stop says so.
func (c *Cluster) Stop(ctx context.Context, i int) error {
	p, err := c.running(i)
	if err != nil {
		return err
	}
	c.log.Info("node stopping", "node", c.l.node(i).Name, "pid", p.pid())
	if err := p.stop(c.l.o.StopTimeout); err != nil {
		return fmt.Errorf("devcluster: stop node %d: %w", i, err)
	}
	return nil
}

// Kill sends node i SIGKILL and waits for it to exit: a crash, for tests
// of what the others do about it.
func (c *Cluster) Kill(ctx context.Context, i int) error {
	p, err := c.running(i)
	if err != nil {
		return err
	}
	c.log.Info("node killed", "node", c.l.node(i).Name, "pid", p.pid())
	if err := p.signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("devcluster: kill node %d: %w", i, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("devcluster: kill node %d: wait for exit: %w", i, ctx.Err())
	}
}

func (c *Cluster) running(i int) (*proc, error) {
	if err := c.checkIndex(i); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.nodes[i-1]
	if p == nil || p.exitedNow() {
		return nil, fmt.Errorf("devcluster: node %d is not running: %w", i, errdefs.ErrFailedPrecondition)
	}
	return p, nil
}

func (c *Cluster) checkIndex(i int) error {
	if i < 1 || i > c.l.o.Nodes {
		return fmt.Errorf("devcluster: node %d: nodes are 1 to %d: %w", i, c.l.o.Nodes, errdefs.ErrInvalidArgument)
	}
	return nil
}

// waitHealthy polls GET /v1/health until it answers 200, the process
// exits, ctx ends or timeout passes.
func waitHealthy(ctx context.Context, apiURL string, p *proc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// No proxy: the node's address is on the host's own bridge.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/v1/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /v1/health: %s", resp.Status)
		}
		last = err
		select {
		case <-p.exited:
			return fmt.Errorf("it exited (%v)", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("no healthy answer in %v (last: %v)", timeout, last)
		case <-tick.C:
		}
	}
}

// readAPIKey reads the operator key node 1 wrote into its data dir.
func readAPIKey(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "api-key"))
	if err != nil {
		return "", fmt.Errorf("devcluster: read node 1's API key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// stopRecorded stops the process whose pid file is at path, if it is
// alive and its command line holds mark (a pid may have been reused since
// the file was written), then removes the file: SIGTERM, SIGKILL after
// timeout. The process is a dead run's child, so it is polled, not waited.
func stopRecorded(ctx context.Context, path, mark string, timeout time.Duration, log *slog.Logger) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return os.Remove(path)
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(mark)) {
		log.Warn("stopping a process a previous run left", "pid", pid, "pid_file", path)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitGone(ctx, pid, timeout) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			if !waitGone(ctx, pid, 10*time.Second) {
				return fmt.Errorf("pid %d (from %s) is still there after SIGKILL", pid, path)
			}
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// waitGone polls until pid is gone, for up to d or until ctx ends, and
// reports whether it is gone.
func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for alive(pid) {
		select {
		case <-ctx.Done():
			return !alive(pid)
		case <-tick.C:
		}
	}
	return true
}

// alive reports whether pid runs and is not a zombie (a dead run's
// children are reaped by init, maybe late).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// tailBytes is how much of a node's output its start error shows.
const tailBytes = 8 << 10

// fileTail returns the last n bytes of the file at path.
func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	return string(b)
}

// tailBuffer keeps the last max bytes written to it, for errors.
type tailBuffer struct {
	max int

	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
