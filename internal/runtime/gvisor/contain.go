package gvisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/internal/runtime"
)

// A machine's sandbox must survive what runs inside it. gVisor has no OOM
// killer of its own, and when the host's memory cgroup OOM-kills any host
// process of a systrap sandbox the whole sandbox dies; so the server watches
// the sandbox's memory here (MemoryPressure, machine/memwatch.go) and has
// the agent kill the largest process before the machine's memory runs out,
// and the host cgroup is given headroom above memory_mb for the sentry
// itself and the watch's reaction time. The
// sentry sizes the machine (MemTotal, --total-memory) from the cgroup limit
// runsc finds when the sandbox boots, so the spec carries memory_mb and the
// limit is raised once the sandbox is up.

// memoryHeadroomMB is what a machine's host cgroup gets above its memory_mb:
// 128 MiB or a quarter, whichever is more. Measured: an idle sandbox's
// sentry and gofer take ~16 MB of the cgroup, and a filler reaches
// 1.5 GB/s, i.e. 8 MB in the memory watch's shortest interval; but the
// kill is a call into the agent, which on a loaded host (CI, two cores,
// the race detector) took long enough for a 512 MiB machine's filler to
// pass 64 MiB of headroom, and the host killed the sandbox. The headroom
// is a limit, not memory set aside: admission counts memory_mb.
func memoryHeadroomMB(memoryMB int) int { return max(128, memoryMB/4) }

// hostPidsLimit is the sandbox's pids.max on the host: a backstop for what
// the in-machine process limit does not hold (root's processes). Under
// systrap every guest address space is a host stub process, and the stub
// pool keeps about two per guest process.
func hostPidsLimit(memoryMB int) int64 { return int64(2*memoryMB + 512) }

// raiseMemoryLimit gives the sandbox's host cgroup its headroom (see above).
func (d *Driver) raiseMemoryLimit(spec runtime.Spec) error {
	if spec.MemoryMB <= 0 {
		return nil
	}
	limit := strconv.FormatInt(int64(spec.MemoryMB+memoryHeadroomMB(spec.MemoryMB))<<20, 10)
	cg := d.cfg.CgroupParent + "/" + spec.ID
	for _, p := range []string{
		"/sys/fs/cgroup/memory" + cg + "/memory.limit_in_bytes", // cgroup v1
		"/sys/fs/cgroup" + cg + "/memory.max",                   // cgroup v2
	} {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := os.WriteFile(p, []byte(limit), 0); err != nil {
			return fmt.Errorf("raise memory limit of container %s: %w", spec.ID, err)
		}
		return nil
	}
	return nil
}

// Reasons a sandbox was killed by its host cgroup, as ExitReason gives them.
const (
	ExitOOM  = "oom"  // the memory cgroup's OOM killer killed a process of it
	ExitPids = "pids" // a fork failed at the cgroup's pids limit
)

// ExitReason tells why a container's sandbox died, from its cgroup: ExitOOM,
// ExitPids, or "" when the cgroup shows neither (or is gone). It must be
// asked before Delete, which removes the cgroup.
func (d *Driver) ExitReason(id string) string {
	cg := d.cfg.CgroupParent + "/" + id
	if n, ok := keyedCounter("/sys/fs/cgroup/memory"+cg+"/memory.oom_control", "oom_kill"); ok && n > 0 {
		return ExitOOM
	}
	if n, ok := keyedCounter("/sys/fs/cgroup"+cg+"/memory.events", "oom_kill"); ok && n > 0 {
		return ExitOOM
	}
	for _, p := range []string{"/sys/fs/cgroup/pids" + cg + "/pids.events", "/sys/fs/cgroup" + cg + "/pids.events"} {
		if n, ok := keyedCounter(p, "max"); ok && n > 0 {
			return ExitPids
		}
	}
	return ""
}

// keyedCounter reads "key N" from a cgroup file of such lines.
func keyedCounter(path, key string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// MemoryPressure reads what a container's host cgroup holds that the host
// cannot reclaim, and its limit: anonymous memory (the sentry's own) and
// shared memory, which is where gVisor keeps the machine's memory (its
// memory file is a memfd: the processes' memory and in-memory files). Page
// cache is left out: the kernel drops it before it kills anything. One
// read of memory.stat and one of the limit, cheap on the host.
func (d *Driver) MemoryPressure(id string) (used, limit uint64, err error) {
	cg := d.cfg.CgroupParent + "/" + id
	if stat, err := os.ReadFile("/sys/fs/cgroup/memory" + cg + "/memory.stat"); err == nil { // cgroup v1
		used = statField(stat, "total_rss") + statField(stat, "total_shmem")
		limit, err = readUint("/sys/fs/cgroup/memory" + cg + "/memory.limit_in_bytes")
		return used, limit, err
	}
	stat, err := os.ReadFile("/sys/fs/cgroup" + cg + "/memory.stat") // cgroup v2
	if err != nil {
		return 0, 0, fmt.Errorf("memory of container %s: %w", id, err)
	}
	used = statField(stat, "anon") + statField(stat, "shmem")
	b, err := os.ReadFile("/sys/fs/cgroup" + cg + "/memory.max")
	if err != nil {
		return 0, 0, err
	}
	limit, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64) // "max": 0, no limit
	return used, limit, nil
}

// statField is the value of key in a memory.stat file, 0 when missing.
func statField(stat []byte, key string) uint64 {
	for _, line := range strings.Split(string(stat), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
