package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupV2 reports whether /sys/fs/cgroup is the unified (v2) hierarchy.
func cgroupV2() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// memoryCgroupRoot is the root of the hierarchy with the memory controller.
func memoryCgroupRoot() string {
	if cgroupV2() {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/memory"
}

// idleWindow is how long an idle sandbox's CPU time is measured.
const idleWindow = 2 * time.Second

// idleCPU measures the CPU time the idle sandbox in cgroup <parent>/<id>
// takes per second (cgroup v1 cpuacct.usage, v2 cpu.stat usage_usec): what
// a host pays for each machine that waits.
func idleCPU(ctx context.Context, parent, id string) (time.Duration, error) {
	read := func() (time.Duration, error) {
		if cgroupV2() {
			stat, err := readKeyed(filepath.Join("/sys/fs/cgroup", parent, id, "cpu.stat"), 1)
			return time.Duration(stat["usage_usec"]) * time.Microsecond, err
		}
		n, err := readInt(filepath.Join("/sys/fs/cgroup/cpuacct", parent, id, "cpuacct.usage"))
		return time.Duration(n), err
	}
	before, err := read()
	if err != nil {
		return 0, fmt.Errorf("cpu time of container %s: %w", id, err)
	}
	start := time.Now()
	if err := sleep(ctx, idleWindow); err != nil {
		return 0, err
	}
	after, err := read()
	if err != nil {
		return 0, fmt.Errorf("cpu time of container %s: %w", id, err)
	}
	return time.Duration(float64(after-before) / time.Since(start).Seconds()), nil
}

// memSample is one idle sandbox's memory.
type memSample struct {
	// CgroupUsage is memory.usage_in_bytes (v1) or memory.current (v2):
	// what the limit is charged with, page cache included.
	CgroupUsage int64 `json:"cgroup_usage_bytes"`
	// CgroupRSS and CgroupCache split it (memory.stat total_rss and
	// total_cache; anon and file on v2).
	CgroupRSS   int64 `json:"cgroup_rss_bytes"`
	CgroupCache int64 `json:"cgroup_cache_bytes"`
	// RSS and PSS sum /proc/<pid>/smaps_rollup over the cgroup's processes
	// (runsc-sandbox, the gofer and, on systrap, the stub processes),
	// counting each address space once: systrap runs several stub processes
	// in one address space (one mm), and each would report all of it.
	RSS   int64     `json:"rss_bytes"`
	PSS   int64     `json:"pss_bytes"`
	Procs []procMem `json:"processes"`
}

type procMem struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	RSS  int64  `json:"rss_bytes"`
	PSS  int64  `json:"pss_bytes"`
	// SameMMAs is the pid of an earlier process with the same address
	// space; this one is not summed.
	SameMMAs int `json:"same_mm_as,omitempty"`
}

// readMemory samples the cgroup <parent>/<id> and its processes.
func readMemory(parent, id string) (memSample, error) {
	dir := filepath.Join(memoryCgroupRoot(), parent, id)
	var s memSample
	var err error
	usageFile, rssKey, cacheKey := "memory.usage_in_bytes", "total_rss", "total_cache"
	if cgroupV2() {
		usageFile, rssKey, cacheKey = "memory.current", "anon", "file"
	}
	if s.CgroupUsage, err = readInt(filepath.Join(dir, usageFile)); err != nil {
		return s, fmt.Errorf("memory of container %s: %w", id, err)
	}
	stat, err := readKeyed(filepath.Join(dir, "memory.stat"), 1)
	if err != nil {
		return s, fmt.Errorf("memory of container %s: %w", id, err)
	}
	s.CgroupRSS, s.CgroupCache = stat[rssKey], stat[cacheKey]

	pids, err := cgroupPIDs(dir)
	if err != nil {
		return s, fmt.Errorf("processes of container %s: %w", id, err)
	}
	if len(pids) == 0 {
		return s, fmt.Errorf("processes of container %s: cgroup %s is empty", id, dir)
	}
	for _, pid := range pids {
		p, err := readProcMem(pid)
		if errors.Is(err, fs.ErrNotExist) {
			continue // exited meanwhile
		}
		if err != nil {
			return s, err
		}
		for _, q := range s.Procs {
			if q.SameMMAs == 0 && sameMM(q.PID, pid) {
				p.SameMMAs = q.PID
				break
			}
		}
		s.Procs = append(s.Procs, p)
		if p.SameMMAs == 0 {
			s.RSS += p.RSS
			s.PSS += p.PSS
		}
	}
	return s, nil
}

// kcmpVM is KCMP_VM of kcmp(2): do two processes share an address space?
const kcmpVM = 1

// sameMM reports whether processes a and b share their address space. It
// reports false when kcmp(2) is unavailable (then shared ones are summed).
func sameMM(a, b int) bool {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), kcmpVM, 0, 0, 0)
	return errno == 0 && r == 0
}

// cgroupPIDs returns the processes of a cgroup and of its descendants.
func cgroupPIDs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	slices.Sort(pids)
	return slices.Compact(pids), err
}

func readProcMem(pid int) (procMem, error) {
	p := procMem{PID: pid}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return p, err
	}
	p.Comm = strings.TrimSpace(string(comm))
	// runsc re-executes itself (comm "exe") and names its processes in
	// argv[0]: runsc-sandbox, runsc-gofer. The sandbox's children with an
	// empty command line are systrap's stub processes, which hold the
	// sandboxed address spaces.
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != "" {
			p.Comm = filepath.Base(argv0)
		} else if p.Comm == "exe" {
			p.Comm = "systrap-stub"
		}
	}
	kb, err := readKeyed(fmt.Sprintf("/proc/%d/smaps_rollup", pid), 1024)
	if err != nil {
		return p, err
	}
	p.RSS, p.PSS = kb["Rss:"], kb["Pss:"]
	return p, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// readKeyed reads "key value [unit]" lines, multiplying values by scale.
func readKeyed(path string, scale int64) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if v, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
			m[fields[0]] = v * scale
		}
	}
	return m, sc.Err()
}

// cgroupDirs returns a parent cgroup's directory in every hierarchy.
func cgroupDirs(parent string) []string {
	if cgroupV2() {
		return []string{filepath.Join("/sys/fs/cgroup", parent)}
	}
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil
	}
	var dirs []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		d := filepath.Join("/sys/fs/cgroup", e.Name(), parent)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// removeCgroupParent removes a parent cgroup runsc left behind (it removes
// the containers' own cgroups, not their parent). A parent that still has
// children is an error: something was not deleted.
func removeCgroupParent(parent string) error {
	var errs []error
	for _, d := range cgroupDirs(parent) {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// otherSandboxes counts the runsc sandboxes on the host whose --root is not
// under work: someone else's machines, competing with the benchmark.
func otherSandboxes(work string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(string(b), "runsc-sandbox\x00") {
			continue
		}
		if !strings.Contains(string(b), "--root="+work+"/") {
			n++
		}
	}
	return n
}
