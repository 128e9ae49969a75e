package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

const (
	// defaultForegroundTimeout bounds foreground and streamed commands that
	// ask for no timeout; background commands run until they end.
	defaultForegroundTimeout = 60 * time.Second
	// drainGrace is how long output is still collected after a command has
	// exited. A grandchild left running in the background (sh -c 'server &')
	// keeps the pipes open forever; the command is over all the same.
	drainGrace = 100 * time.Millisecond
	// keepExited is how many exited commands stay listed with their output.
	keepExited = 64
	// readChunk is the pipe read size, and the largest output event.
	readChunk = 32 << 10
	// defaultPath is PATH for commands when the environment has none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// processManager starts user commands and keeps track of them: running ones
// and the last keepExited that ended, with their output.
type processManager struct {
	log         *slog.Logger
	outputBytes int
	workdir     string
	// processLimit is the soft RLIMIT_NPROC of commands run as a non-root
	// user (contain.go); 0 leaves it alone.
	processLimit uint64

	// envMu guards baseEnv, which a restore changes (the machine's id).
	envMu   sync.Mutex
	baseEnv []string // KEY=VALUE, without NULLSPACE_AGENT_*; replaced, never modified

	mu       sync.Mutex
	procs    map[int]*process
	finished []*process // oldest first; may hold entries already replaced in procs
	// main is the machine's main process (see startMain): it stays listed
	// after it exits, however many commands exit after it, so a wait can
	// always tell how it ended.
	main *process
}

func newProcessManager(log *slog.Logger, outputBytes int, baseEnv []string, workdir string) *processManager {
	return &processManager{
		log:         log,
		outputBytes: outputBytes,
		baseEnv:     baseEnv,
		workdir:     workdir,
		procs:       make(map[int]*process),
	}
}

// process is one command started by the agent. Its pid is also its process
// group id: signals go to the whole group.
type process struct {
	pid       int
	cmd       []string
	cwd       string
	user      string
	startedAt time.Time
	exitedAt  time.Time // set before exited is closed

	// exited is closed by the reaper once the command's own process has
	// exited; status is set before.
	exited chan struct{}
	status syscall.WaitStatus
	// done is closed once exited is and the output is fully collected.
	done     chan struct{}
	timedOut atomic.Bool
	timer    *time.Timer // nil without a timeout; set before the process can exit

	stdin *os.File // write end of the command's stdin; see writeStdin
	// stdinMu serialises writes to stdin and guards stdinOpen.
	stdinMu   sync.Mutex
	stdinOpen bool

	// pty is the terminal's master side for a command run on one (also
	// stdin, and its output); nil otherwise. ptySize is its size, under
	// stdinMu.
	pty     *os.File
	ptySize *api.PTYSize

	out output
}

// output is the buffered stdout and stderr of a process and its final state.
type output struct {
	mu     sync.Mutex
	stdout ringBuffer
	stderr ringBuffer
	// changed is closed, and replaced, whenever data arrives or the process
	// finishes: a reader that saw nothing new waits on it.
	changed  chan struct{}
	finished bool
	exit     exitStatus
}

// exitStatus is how a command ended.
type exitStatus struct {
	code     int    // the exit status, or 128+signal when killed by one
	signal   string // e.g. "SIGKILL"; empty for a normal exit
	timedOut bool
}

// startMain starts the machine's main process in the background and keeps
// its record for good (see processManager.main).
func (m *processManager) startMain(argv []string) (*process, error) {
	m.mu.Lock()
	cur := m.main
	m.mu.Unlock()
	if cur != nil && !cur.hasExited() {
		return nil, errdefs.New(errdefs.ErrConflict, errdefs.CodeConflict,
			fmt.Sprintf("the main process (pid %d) is running", cur.pid), "stop the machine first")
	}
	p, err := m.start(api.RunCommandRequest{Cmd: argv, Background: true})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.main = p
	m.mu.Unlock()
	return p, nil
}

// start validates req, starts the command and registers it. The returned
// process is already running.
func (m *processManager) start(req api.RunCommandRequest) (*process, error) {
	argv, err := commandArgv(req)
	if err != nil {
		return nil, err
	}
	if req.TimeoutMS < 0 || req.TimeoutMS > api.MaxDurationMS {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("timeout_ms %d is out of range", req.TimeoutMS),
			fmt.Sprintf("pass 0 for the default or up to %d milliseconds (a year)", api.MaxDurationMS))
	}
	id, err := lookupIdentity(req.User)
	if err != nil {
		return nil, err
	}
	env, err := m.commandEnv(id, req.Env)
	if err != nil {
		return nil, err
	}
	cwd, err := m.commandCwd(req.Cwd, id)
	if err != nil {
		return nil, err
	}
	path, err := lookPath(argv[0], envValue(env, "PATH"), cwd)
	if err != nil {
		return nil, err
	}

	var ends stdio
	if req.PTY != nil {
		env = setEnvDefault(env, "TERM", "xterm-256color")
		ends, err = openPTY(*req.PTY, id)
	} else {
		ends, err = openPipes()
	}
	if err != nil {
		return nil, err
	}

	p := &process{
		cmd:       argv,
		cwd:       cwd,
		user:      id.name,
		startedAt: time.Now(),
		exited:    make(chan struct{}),
		done:      make(chan struct{}),
		stdin:     ends.stdin,
		stdinOpen: true,
		pty:       ends.pty,
		ptySize:   req.PTY,
		out: output{
			stdout:  newRingBuffer(m.outputBytes),
			stderr:  newRingBuffer(m.outputBytes),
			changed: make(chan struct{}),
		},
	}
	sys := &syscall.SysProcAttr{Setpgid: true, Credential: id.cred}
	if ends.pty != nil {
		// A session of its own with the terminal as its controlling one,
		// so that the line discipline delivers ^C, ^Z and SIGWINCH to its
		// foreground group. The session leader leads its group too.
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: id.cred}
	}
	attr := &syscall.ProcAttr{
		Dir:   cwd,
		Env:   env,
		Files: []uintptr{ends.child[0].Fd(), ends.child[1].Fd(), ends.child[2].Fd()},
		Sys:   sys,
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout == 0 && !req.Background {
		timeout = defaultForegroundTimeout
	}
	limit := uint64(0)
	if id.cred != nil && id.cred.Uid != 0 {
		limit = m.processLimit
	}
	pid, err := procReaper.start(func() (int, error) {
		pid, err := withProcessLimit(limit, func() (int, error) {
			pid, _, err := syscall.StartProcess(path, argv, attr)
			return pid, err
		})
		if err != nil {
			return 0, err
		}
		// Set before the reaper can see the exit, so onExit can stop the
		// timer and the timer knows whom to kill.
		p.pid = pid
		if timeout > 0 {
			p.timer = time.AfterFunc(timeout, p.timeout)
		}
		return pid, nil
	}, p.onExit)
	closeAll(ends.child[:]...) // the child holds its own copies
	if err != nil {
		closeAll(ends.stdin, ends.stdout, ends.stderr)
		return nil, startError(err, argv[0], path, cwd, id.name)
	}

	m.mu.Lock()
	m.procs[pid] = p // a pid is only reused after its owner was reaped
	m.mu.Unlock()

	// Hold stdin until the initial data is written, so that later writes
	// through POST /commands/{pid}/stdin come after it.
	p.stdinMu.Lock()
	go p.writeInitialStdin(req.Stdin, req.KeepStdinOpen || ends.pty != nil)
	go m.collect(p, ends.stdout, ends.stderr)

	m.log.Info("command started", "pid", pid, "path", path, "user", id.name, "cwd", cwd,
		"background", req.Background, "timeout", timeout.String())
	return p, nil
}

func commandArgv(req api.RunCommandRequest) ([]string, error) {
	switch {
	case len(req.Cmd) > 0 && req.Shell != "":
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"cmd and shell are both set", "pass either cmd (an argv array) or shell (a string run with /bin/sh -c)")
	case strings.IndexByte(req.Shell, 0) >= 0:
		// The kernel takes arguments as C strings: exec would fail.
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"shell contains a NUL byte", "remove NUL bytes from the command line")
	case req.Shell != "":
		return []string{"/bin/sh", "-c", req.Shell}, nil
	case len(req.Cmd) == 0 || req.Cmd[0] == "":
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"no command given", "pass cmd (an argv array) or shell (a string run with /bin/sh -c)")
	}
	for _, a := range req.Cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"cmd contains a NUL byte", "remove NUL bytes from the arguments")
		}
	}
	return slices.Clone(req.Cmd), nil
}

// identity is the user a command runs as.
type identity struct {
	name string
	home string
	cred *syscall.Credential // nil: run as the agent's own user
}

// lookupIdentity resolves a user name or uid in the machine's /etc/passwd.
// The empty name is the agent's own user (root). A numeric uid that has no
// passwd entry is accepted, with the same gid and / as home.
func lookupIdentity(name string) (identity, error) {
	if name == "" {
		uid := strconv.Itoa(os.Getuid())
		if u, err := user.LookupId(uid); err == nil {
			return identity{name: u.Username, home: u.HomeDir}, nil
		}
		if os.Getuid() == 0 {
			return identity{name: "root", home: "/root"}, nil
		}
		return identity{name: uid, home: "/"}, nil
	}
	if strings.IndexByte(name, 0) >= 0 {
		// getpwnam would read "root\x00x" as root.
		return identity{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("user %q contains a NUL byte", name), "pass a user name or uid without NUL bytes")
	}
	var u *user.User
	var err error
	numeric, convErr := strconv.ParseUint(name, 10, 32)
	if convErr == nil {
		u, err = user.LookupId(name)
		if err != nil {
			n := uint32(numeric)
			return identity{name: name, home: "/", cred: &syscall.Credential{Uid: n, Gid: n}}, nil
		}
	} else if u, err = user.Lookup(name); err != nil {
		return identity{}, errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("user %q does not exist in the machine", name),
			"pass a user from the machine's /etc/passwd (for example root) or a numeric uid")
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return identity{}, fmt.Errorf("parse ids of user %s: %w", name, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	if len(cred.Groups) == 0 {
		cred.Groups = []uint32{uint32(gid)}
	}
	return identity{name: u.Username, home: u.HomeDir, cred: cred}, nil
}

// commandEnv is the agent's environment, then the user's HOME, USER and
// LOGNAME, then the request's variables, each overriding the one before.
func (m *processManager) commandEnv(id identity, extra map[string]string) ([]string, error) {
	m.envMu.Lock()
	env := slices.Clone(m.baseEnv)
	m.envMu.Unlock()
	env = setEnv(env, "HOME", id.home)
	env = setEnv(env, "USER", id.name)
	env = setEnv(env, "LOGNAME", id.name)
	if envValue(env, "PATH") == "" {
		env = setEnv(env, "PATH", defaultPath)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := extra[k]
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("invalid environment variable %q", k),
				"use names without '=' and values without NUL bytes")
		}
		env = setEnv(env, k, v)
	}
	return env, nil
}

// setBaseEnv sets key in the environment of the commands started from now.
func (m *processManager) setBaseEnv(key, value string) {
	m.envMu.Lock()
	defer m.envMu.Unlock()
	m.baseEnv = setEnv(slices.Clone(m.baseEnv), key, value)
}

func setEnv(env []string, key, value string) []string {
	prefix := key + "="
	for i, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			env[i] = prefix + value
			return env
		}
	}
	return append(env, prefix+value)
}

// setEnvDefault sets key unless env has it already.
func setEnvDefault(env []string, key, value string) []string {
	if envValue(env, key) != "" {
		return env
	}
	return setEnv(env, key, value)
}

func envValue(env []string, key string) string {
	prefix := key + "="
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, prefix); ok {
			return v
		}
	}
	return ""
}

// commandCwd is the requested directory, or else the machine's workdir, the
// user's home or /, whichever exists first.
func (m *processManager) commandCwd(cwd string, id identity) (string, error) {
	if cwd == "" {
		for _, dir := range []string{m.workdir, id.home} {
			if dir != "" && isDir(dir) {
				return dir, nil
			}
		}
		return "/", nil
	}
	if !filepath.IsAbs(cwd) || strings.IndexByte(cwd, 0) >= 0 {
		return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("cwd %q is not an absolute path", cwd), "pass an absolute path such as /workspace")
	}
	cwd = filepath.Clean(cwd)
	fi, err := os.Stat(cwd)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("cwd %s does not exist", cwd), "create it first (POST /files/mkdir) or pass an existing directory")
	case err != nil:
		return "", errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("cwd %s cannot be used", cwd), "pass an existing directory")
	case !fi.IsDir():
		return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory,
			fmt.Sprintf("cwd %s is not a directory", cwd), "pass an existing directory")
	}
	return cwd, nil
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// lookPath finds file like a shell would with the command's own PATH, not
// the agent's. Relative entries are taken from cwd.
func lookPath(file, pathEnv, cwd string) (string, error) {
	if strings.Contains(file, "/") {
		path := file
		if !filepath.IsAbs(path) {
			path = filepath.Join(cwd, path)
		}
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			return "", errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
				fmt.Sprintf("command %s not found", file), "check the path, or install the program in the machine or its template")
		case fi.IsDir():
			return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
				fmt.Sprintf("command %s is a directory", file), "pass the path of an executable file")
		case fi.Mode()&0o111 == 0:
			return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
				fmt.Sprintf("command %s is not executable", file), "make it executable (chmod +x) or run it through its interpreter")
		}
		return path, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		path := filepath.Join(dir, file)
		if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
		fmt.Sprintf("command %q not found in PATH %s", file, pathEnv),
		"install it in the machine or its template, pass its absolute path, or set PATH in env")
}

// startError explains why the kernel refused to start a command whose
// executable and cwd looked fine.
func startError(err error, name, path, cwd, user string) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("start %s: %w", path, err)
	}
	switch errno {
	case syscall.ENOENT:
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
			fmt.Sprintf("cannot run %s: it or its interpreter does not exist", name),
			"check that the file exists and that the program on its #! line is installed")
	case syscall.EACCES:
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
			fmt.Sprintf("cannot run %s as user %s in %s: permission denied", name, user, cwd),
			"check that the user may execute the file and enter the cwd")
	case syscall.ENOEXEC:
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeCommandNotFound,
			fmt.Sprintf("cannot run %s: not an executable format", name),
			"add a #! line to the script or run it with shell=true")
	case syscall.EPERM:
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("cannot switch to user %s", user), "run the command as the agent's user (omit user)")
	}
	return fmt.Errorf("start %s: %w", path, err)
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// onExit is called by the reaper with the exit status of the process.
func (p *process) onExit(ws syscall.WaitStatus) {
	if p.timer != nil {
		p.timer.Stop()
	}
	p.status = ws
	p.exitedAt = time.Now()
	close(p.exited)
}

// timeout kills the process group when the command ran too long.
func (p *process) timeout() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.timedOut.Store(true)
	p.signal(syscall.SIGKILL)
}

// signal sends sig to the process group of the command.
func (p *process) signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		// The group is gone, or the command moved itself to another group.
		err = nil
		if !p.hasExited() {
			err = syscall.Kill(p.pid, sig)
		}
		if errors.Is(err, syscall.ESRCH) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("signal process %d: %w", p.pid, err)
	}
	return nil
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// exitStatus is only meaningful once exited is closed.
func (p *process) exitStatus() exitStatus {
	es := exitStatus{timedOut: p.timedOut.Load()}
	switch ws := p.status; {
	case ws.Exited():
		es.code = ws.ExitStatus()
	case ws.Signaled():
		es.code = 128 + int(ws.Signal())
		es.signal = signalName(ws.Signal())
	}
	return es
}

// collect copies the command's output into its buffers until the command
// has exited and its pipes are drained, or drainGrace after its exit.
func (m *processManager) collect(p *process, stdout, stderr *os.File) {
	var wg sync.WaitGroup
	wg.Add(1)
	go p.pump(stdout, &p.out.stdout, &wg)
	if stderr != nil { // a terminal has one output
		wg.Add(1)
		go p.pump(stderr, &p.out.stderr, &wg)
	}
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()

	<-p.exited
	grace := time.NewTimer(drainGrace)
	select {
	case <-drained:
	case <-grace.C:
		// Closing unblocks the readers; whatever the grandchildren write
		// from now on is lost to us (they get EPIPE). A terminal's master
		// may not be pollable, so its read is not waited for long.
		closeAll(stdout, stderr)
		select {
		case <-drained:
		case <-time.After(time.Second):
		}
	}
	grace.Stop()
	p.closeStdin()

	es := p.exitStatus()
	p.out.mu.Lock()
	p.out.finished = true
	p.out.exit = es
	p.out.notifyLocked()
	p.out.mu.Unlock()

	m.mu.Lock()
	m.finished = append(m.finished, p)
	if len(m.finished) > keepExited {
		i := 0
		if m.finished[0] == m.main {
			i = 1
		}
		old := m.finished[i]
		m.finished = slices.Delete(m.finished, i, i+1)
		if m.procs[old.pid] == old {
			delete(m.procs, old.pid)
		}
	}
	m.mu.Unlock()
	close(p.done)
	m.log.Info("command exited", "pid", p.pid, "exit_code", es.code, "signal", es.signal,
		"timed_out", es.timedOut, "duration", time.Since(p.startedAt).Round(time.Millisecond).String())
}

func (p *process) pump(f *os.File, rb *ringBuffer, wg *sync.WaitGroup) {
	defer wg.Done()
	defer f.Close()
	buf := make([]byte, readChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			p.out.mu.Lock()
			rb.write(buf[:n])
			p.out.notifyLocked()
			p.out.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (o *output) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (p *process) writeInitialStdin(data string, keepOpen bool) {
	defer p.stdinMu.Unlock()
	if data != "" {
		if _, err := p.stdin.WriteString(data); err != nil {
			keepOpen = false // the command closed its stdin or exited
		}
	}
	if !keepOpen && p.stdinOpen {
		p.stdinOpen = false
		p.stdin.Close()
	}
}

// writeStdin writes data to the command's stdin and closes it if asked.
func (p *process) writeStdin(ctx context.Context, data []byte, closeAfter bool) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if closeAfter && p.pty != nil {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("process %d runs on a terminal, whose input cannot be closed", p.pid),
			`send end-of-file as a keystroke instead: bytes "BA==" (Ctrl-D)`)
	}
	if !p.stdinOpen {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			fmt.Sprintf("stdin of process %d is not open", p.pid),
			"start the command with keep_stdin_open=true to write to its stdin later")
	}
	if len(data) > 0 {
		p.stdin.SetWriteDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { p.stdin.SetWriteDeadline(time.Now()) })
		_, err := p.stdin.Write(data)
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("write stdin of process %d: %w", p.pid, ctx.Err())
			}
			p.stdinOpen = false
			p.stdin.Close()
			return errdefs.Wrap(err, errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
				fmt.Sprintf("stdin of process %d was closed by the process", p.pid), "")
		}
	}
	if closeAfter {
		p.stdinOpen = false
		p.stdin.Close()
	}
	return nil
}

// closeStdin closes stdin for good, even if a writer is stuck on a full pipe.
func (p *process) closeStdin() {
	p.stdin.SetWriteDeadline(time.Now())
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdinOpen {
		p.stdinOpen = false
		p.stdin.Close()
	}
}

// result is the foreground response; only valid once done is closed.
func (p *process) result() api.CommandResult {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	es := p.out.exit
	return api.CommandResult{
		PID:       p.pid,
		ExitCode:  es.code,
		Stdout:    string(p.out.stdout.bytes()),
		Stderr:    string(p.out.stderr.bytes()),
		Signal:    es.signal,
		TimedOut:  es.timedOut,
		Truncated: p.out.stdout.truncated() || p.out.stderr.truncated(),
	}
}

func (p *process) info() api.Process {
	ap := api.Process{
		PID:       p.pid,
		Cmd:       p.cmd,
		Cwd:       p.cwd,
		User:      p.user,
		StartedAt: p.startedAt,
		Running:   !p.hasExited(),
	}
	p.stdinMu.Lock()
	if p.ptySize != nil {
		size := *p.ptySize
		ap.PTY = &size
	}
	p.stdinMu.Unlock()
	if !ap.Running {
		code := p.exitStatus().code
		ap.ExitCode = &code
	}
	return ap
}

func (m *processManager) get(pid int) (*process, error) {
	m.mu.Lock()
	p := m.procs[pid]
	m.mu.Unlock()
	if p == nil {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeProcessNotFound,
			fmt.Sprintf("process %d not found", pid),
			"list processes with GET /commands; exited ones are kept only for a while")
	}
	return p, nil
}

func (m *processManager) list() []api.Process {
	procs := m.all()
	slices.SortFunc(procs, func(a, b *process) int {
		if c := a.startedAt.Compare(b.startedAt); c != 0 {
			return c
		}
		return a.pid - b.pid
	})
	out := make([]api.Process, len(procs))
	for i, p := range procs {
		out[i] = p.info()
	}
	return out
}

// all returns every tracked process.
func (m *processManager) all() []*process {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*process, 0, len(m.procs))
	for _, p := range m.procs {
		out = append(out, p)
	}
	return out
}

// stopKillWait bounds how long stopAll waits for processes to vanish after
// SIGKILL; gVisor delivers it at once, so this is only a backstop.
const stopKillWait = 5 * time.Second

// stopAll ends every process (a stop, and the agent's own shutdown):
// SIGTERM, and SIGKILL for whatever is left after grace. As PID 1 it
// signals every process in the machine, like any init, and waits until no
// process but itself remains; otherwise it signals the process groups of
// the commands it started, including those whose leader already exited (a
// server left behind by sh -c 'server &'), and waits for the commands. It
// then forgets every command, so that the machine starts again with none,
// and reports how the main process ended.
func (m *processManager) stopAll(ctx context.Context, grace time.Duration) api.AgentStopResult {
	all := m.all()
	var running []*process
	for _, p := range all {
		if !p.hasExited() {
			running = append(running, p)
		}
	}
	gone := func() bool {
		for _, p := range running {
			select {
			case <-p.done:
			default:
				return false
			}
		}
		return os.Getpid() != 1 || onlyInit()
	}
	var res api.AgentStopResult
	m.mu.Lock()
	main := m.main
	m.mu.Unlock()
	m.signalAll(all, syscall.SIGTERM)
	if !waitFor(ctx, grace, gone) {
		res.Killed = true
		m.signalAll(all, syscall.SIGKILL)
		waitFor(ctx, stopKillWait, gone)
	}
	res.Ended = len(running)
	if main != nil && main.hasExited() {
		es := main.exitStatus()
		res.Main = &api.MainExit{ExitCode: es.code, Signal: es.signal, At: main.exitedAt.UTC()}
	}
	m.mu.Lock()
	m.procs = make(map[int]*process)
	m.finished = nil
	m.main = nil
	m.mu.Unlock()
	return res
}

// waitFor polls cond until it holds (true), or d or ctx ends (false).
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// onlyInit reports whether the calling process (PID 1) is the only one
// left in its pid namespace.
func onlyInit() bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != 1 {
			return false
		}
	}
	return true
}

func (m *processManager) signalAll(procs []*process, sig syscall.Signal) {
	if os.Getpid() == 1 {
		syscall.Kill(-1, sig) // every process but init itself
		return
	}
	for _, p := range procs {
		p.signal(sig)
	}
}

// signals maps the names of the Linux signals to their numbers.
var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGILL": syscall.SIGILL, "SIGTRAP": syscall.SIGTRAP, "SIGABRT": syscall.SIGABRT,
	"SIGBUS": syscall.SIGBUS, "SIGFPE": syscall.SIGFPE, "SIGKILL": syscall.SIGKILL,
	"SIGUSR1": syscall.SIGUSR1, "SIGSEGV": syscall.SIGSEGV, "SIGUSR2": syscall.SIGUSR2,
	"SIGPIPE": syscall.SIGPIPE, "SIGALRM": syscall.SIGALRM, "SIGTERM": syscall.SIGTERM,
	"SIGSTKFLT": syscall.Signal(16), "SIGCHLD": syscall.SIGCHLD, "SIGCONT": syscall.SIGCONT,
	"SIGSTOP": syscall.SIGSTOP, "SIGTSTP": syscall.SIGTSTP, "SIGTTIN": syscall.SIGTTIN,
	"SIGTTOU": syscall.SIGTTOU, "SIGURG": syscall.SIGURG, "SIGXCPU": syscall.SIGXCPU,
	"SIGXFSZ": syscall.SIGXFSZ, "SIGVTALRM": syscall.SIGVTALRM, "SIGPROF": syscall.SIGPROF,
	"SIGWINCH": syscall.SIGWINCH, "SIGIO": syscall.SIGIO, "SIGPWR": syscall.SIGPWR,
	"SIGSYS": syscall.SIGSYS,
}

// parseSignal accepts "SIGTERM", "TERM", "term" or "15".
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n <= 64 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig, ok := signals[name]; ok {
		return sig, nil
	}
	return 0, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		fmt.Sprintf("unknown signal %q", s), "pass a signal name such as SIGTERM, TERM or KILL, or its number")
}

func signalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return "SIG" + strconv.Itoa(int(sig))
}
