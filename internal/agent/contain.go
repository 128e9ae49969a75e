package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What runs inside a machine must not destroy it. gVisor has no OOM killer
// of its own (pkg/sentry/pgalloc grows the memory file until the host's
// memory cgroup says no), and the host's OOM killer kills a host process of
// the sandbox, which takes the whole sandbox down: systrap's stubs die with
// the sentry on SIGKILL ("it's simply not possible to safely handle a single
// stub getting killed", pkg/sentry/platform/systrap/subprocess_linux.go).
// So the agent contains the machine's processes itself:
//
//   - commands run as a non-root user start with a soft RLIMIT_NPROC, which
//     the sentry enforces per user, threads included (kernel.incRLimitNProc);
//   - an OOM watcher reads the sentry's memory accounting (/proc/meminfo,
//     whose MemTotal is the machine's memory_mb) and kills the process with
//     the largest resident set, as Linux's OOM killer would, before the
//     machine's memory is used up. The server gives the sandbox's host cgroup
//     headroom above memory_mb for the sentry itself and the watcher's
//     overshoot (runtime/gvisor).

const (
	// hostBytesPerProcess is what each guest process costs the host beyond
	// what the sentry accounts for it: under systrap every address space is
	// a host stub process, and the pool keeps about two per guest process.
	// Measured: 400 sleeping processes took 47 MB inside and 200 MB in the
	// sandbox's cgroup.
	hostBytesPerProcess = 384 << 10
	// fillBytesPerMilli is the fastest a process fills memory under gVisor
	// here, with margin: python appending 16 MiB strings measured 1.5 GB/s.
	fillBytesPerMilli = 2 << 20
	oomMinInterval    = 5 * time.Millisecond
	oomMaxInterval    = 250 * time.Millisecond
	// oomSettle bounds the wait for a killed process's memory to return.
	oomSettle = time.Second
	// minProcessLimit is the smallest RLIMIT_NPROC given to user commands.
	minProcessLimit = 128
)

// ProcessLimitFor is the RLIMIT_NPROC of non-root commands in a machine of
// memTotal bytes: one task per 2 MiB, at least minProcessLimit. A fork bomb
// held there costs at most ~memTotal/4 of host memory (see
// hostBytesPerProcess), which the OOM watcher accounts for.
func ProcessLimitFor(memTotal uint64) uint64 {
	n := memTotal / (2 << 20)
	if n < minProcessLimit {
		n = minProcessLimit
	}
	return n
}

// meminfo is the part of /proc/meminfo the OOM watcher reads.
type meminfo struct {
	total, available uint64 // bytes
}

func readMeminfo(path string) (meminfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return meminfo{}, err
	}
	return parseMeminfo(b)
}

func parseMeminfo(b []byte) (meminfo, error) {
	var mi meminfo
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "MemTotal":
			mi.total, haveTotal = v<<10, true
		case "MemAvailable":
			mi.available, haveAvail = v<<10, true
		}
	}
	if !haveTotal || !haveAvail {
		return mi, fmt.Errorf("meminfo without MemTotal and MemAvailable")
	}
	return mi, nil
}

// oomGuard is how much of the machine's memory the watcher keeps free:
// 1/32 of the machine, and at least what the fastest filler takes in two
// of the watcher's shortest intervals.
func oomGuard(total uint64) uint64 {
	g := total / 32
	if min := uint64(fillBytesPerMilli * oomMinInterval.Milliseconds() * 2); g < min {
		g = min
	}
	return g
}

// oomInterval is how long the watcher may sleep when free bytes remain
// before the guard: as long as the fastest filler needs to use them up.
func oomInterval(free uint64) time.Duration {
	d := time.Duration(free/fillBytesPerMilli) * time.Millisecond
	return min(max(d, oomMinInterval), oomMaxInterval)
}

// procInfo is one candidate of the OOM watcher.
type procInfo struct {
	pid      int
	comm     string
	rss      uint64 // bytes
	scoreAdj int
}

// badness orders victims the way Linux does: resident memory, shifted by
// oom_score_adj in thousandths of the machine's memory.
func (p procInfo) badness(total uint64) int64 {
	return int64(p.rss) + int64(p.scoreAdj)*int64(total/1000)
}

// pickVictim returns the process to kill, false when none may be (only
// init, or every process has oom_score_adj -1000).
func pickVictim(procs []procInfo, total uint64) (procInfo, bool) {
	var best procInfo
	found := false
	for _, p := range procs {
		if p.pid == 1 || p.scoreAdj <= -1000 {
			continue
		}
		if !found || p.badness(total) > best.badness(total) {
			best, found = p, true
		}
	}
	return best, found
}

// listProcs reads every process under procRoot but init.
func listProcs(procRoot string) []procInfo {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	procs := make([]procInfo, 0, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		statm, err := os.ReadFile(filepath.Join(dir, "statm"))
		if err != nil {
			continue // exited meanwhile
		}
		f := strings.Fields(string(statm))
		if len(f) < 2 {
			continue
		}
		pages, _ := strconv.ParseUint(f[1], 10, 64)
		p := procInfo{pid: pid, rss: pages * uint64(os.Getpagesize())}
		if b, err := os.ReadFile(filepath.Join(dir, "oom_score_adj")); err == nil {
			p.scoreAdj, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
			p.comm = strings.TrimSpace(string(b))
		}
		procs = append(procs, p)
	}
	return procs
}

// countProcs counts the processes under procRoot, init included.
func countProcs(procRoot string) int {
	f, err := os.Open(procRoot)
	if err != nil {
		return 0
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	n := 0
	for _, name := range names {
		if name[0] >= '0' && name[0] <= '9' {
			n++
		}
	}
	return n
}

// oomWatcher kills the largest process when the machine nears the end of
// its memory (see the top of this file).
type oomWatcher struct {
	log      *slog.Logger
	procRoot string // "/proc"
}

// usage is the watcher's view of the machine: what the sentry accounts
// for, plus the host-side cost of its processes.
func (w *oomWatcher) usage() (used, limit uint64, err error) {
	mi, err := readMeminfo(filepath.Join(w.procRoot, "meminfo"))
	if err != nil {
		return 0, 0, err
	}
	used = mi.total - min(mi.available, mi.total)
	used += uint64(countProcs(w.procRoot)) * hostBytesPerProcess
	return used, mi.total - oomGuard(mi.total), nil
}

// run watches until ctx is done.
func (w *oomWatcher) run(ctx context.Context) {
	for {
		wait := oomMaxInterval
		used, limit, err := w.usage()
		switch {
		case err != nil:
			w.log.Warn("oom watcher cannot read memory usage", "err", err)
			wait = 10 * oomMaxInterval
		case used >= limit:
			w.killOne(ctx, used, limit)
			continue
		default:
			wait = oomInterval(limit - used)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// killOne kills the worst process and waits for the memory to come back.
func (w *oomWatcher) killOne(ctx context.Context, used, limit uint64) {
	mi, _ := readMeminfo(filepath.Join(w.procRoot, "meminfo"))
	victim, ok := pickVictim(listProcs(w.procRoot), mi.total)
	if !ok {
		w.log.Error("out of memory and no process to kill", "used_bytes", used, "limit_bytes", limit)
		select {
		case <-ctx.Done():
		case <-time.After(oomMaxInterval):
		}
		return
	}
	err := syscall.Kill(victim.pid, syscall.SIGKILL)
	w.log.Warn("out of memory: killed process", "pid", victim.pid, "comm", victim.comm,
		"rss_bytes", victim.rss, "used_bytes", used, "limit_bytes", limit, "err", err)
	deadline := time.Now().Add(oomSettle)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
		if used, limit, err := w.usage(); err != nil || used < limit {
			return
		}
		if syscall.Kill(victim.pid, 0) != nil && time.Until(deadline) < oomSettle/2 {
			return // gone, and memory is still short: pick the next one
		}
	}
}

// rlimitNPROC is RLIMIT_NPROC, which package syscall does not name.
const rlimitNPROC = 6

// withProcessLimit runs spawn (a fork) with the agent's soft RLIMIT_NPROC
// lowered to limit, so that the child inherits it; the agent's own limit is
// back when it returns. The hard limit stays: lowering it would be for good
// (the agent has no CAP_SYS_RESOURCE), so a user may raise the soft limit
// on purpose, and the host's pids limit is then the backstop. The caller
// serialises calls (the reaper's lock). limit 0 runs spawn as it is.
func withProcessLimit(limit uint64, spawn func() (int, error)) (int, error) {
	if limit == 0 {
		return spawn()
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(rlimitNPROC, &old); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NPROC: %w", err)
	}
	lim := old
	lim.Cur = min(limit, old.Max)
	if err := syscall.Setrlimit(rlimitNPROC, &lim); err != nil {
		return 0, fmt.Errorf("set RLIMIT_NPROC: %w", err)
	}
	defer syscall.Setrlimit(rlimitNPROC, &old)
	return spawn()
}
