package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"nullspace.dev/nullspace/api"
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
//   - the host watches the sandbox's memory from its cgroup (machine's
//     memwatch.go, at no cost to the machine) and, before the machine's
//     memory is used up, asks the agent (POST /lifecycle/reclaim) to kill
//     the process with the largest resident set, as Linux's OOM killer
//     would. The server gives the sandbox's host cgroup headroom above
//     memory_mb for the sentry itself and the watch's reaction time
//     (runtime/gvisor).

// minProcessLimit is the smallest RLIMIT_NPROC given to user commands.
const minProcessLimit = 128

// ProcessLimitFor is the RLIMIT_NPROC of non-root commands in a machine of
// memTotal bytes: one task per 2 MiB, at least minProcessLimit. A fork bomb
// held there costs at most ~memTotal/4 of host memory (each guest process
// costs the host ~384 KiB of systrap stubs beyond what the sentry counts:
// 400 sleeping processes took 47 MB inside and 200 MB in the cgroup),
// which the host's memory watch sees.
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

// reclaim is POST /lifecycle/reclaim: the host saw the machine's sandbox
// near its memory limit (machine/memwatch.go) and asks for memory back
// before the host's OOM killer takes the whole sandbox. The agent kills the
// process with the largest resident set, as Linux's OOM killer would
// (oom_score_adj counts; never the agent), and says which. Polling from the
// host costs the machine nothing while it idles; a watcher in here woke the
// agent four times a second, 13 ms of CPU a second under systrap.
func (a *Agent) reclaim(w http.ResponseWriter, r *http.Request) error {
	mi, err := readMeminfo(filepath.Join(a.cfg.ProcRoot, "meminfo"))
	if err != nil {
		return err
	}
	res := api.AgentReclaimResult{}
	victim, ok := pickVictim(listProcs(a.cfg.ProcRoot), mi.total)
	if ok {
		err := syscall.Kill(victim.pid, syscall.SIGKILL)
		a.log.Warn("out of memory: killed process", "pid", victim.pid, "comm", victim.comm,
			"rss_bytes", victim.rss, "mem_available_bytes", mi.available, "err", err)
		if err == nil {
			res = api.AgentReclaimResult{PID: victim.pid, Command: victim.comm, RSSBytes: int64(victim.rss)}
		}
	} else {
		a.log.Error("out of memory and no process to kill", "mem_available_bytes", mi.available)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
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
