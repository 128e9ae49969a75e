package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"nullspace.dev/nullspace/api"
)

// The limit of the disk-filling machines, and what the host may see above
// it: the filestore's blocks are the tmpfs's pages, plus a little
// allocation slack. The host's free space is also moved by whatever else
// writes to its file system meanwhile (logs, the database, builds beside
// the test), hence a wider slack there; the machine tries to write
// fillMB, far past both.
const (
	diskLimitMB = 64
	diskSlack   = 8 << 20
	hostSlack   = 64 << 20
	fillMB      = 400
)

// TestDiskLimit: a machine created with a small disk_mb fills its disk:
// the write fails with ENOSPC inside, `df /` shows the limit, its overlay
// file on the host and the host's free space stay within the limit, and
// the metrics report the machine's own limit. A machine beside it keeps
// writing files and running commands. After a pause and resume, in a
// fork's child, and after a stop and start, the limit still holds.
func TestDiskLimit(t *testing.T) {
	const limit = diskLimitMB << 20
	healthy := newMachine(t, api.CreateMachineRequest{Template: "base"})
	full := newMachine(t, api.CreateMachineRequest{Template: "base", DiskMB: diskLimitMB})
	if full.DiskMB != diskLimitMB || healthy.DiskMB != env.cfg.DiskDefaultMB {
		t.Fatalf("disk_mb: %d and %d, want %d and the server's default %d", full.DiskMB, healthy.DiskMB, diskLimitMB, env.cfg.DiskDefaultMB)
	}

	freeBefore := hostFree(t)
	fillDisk(t, full.ID, "created")
	if drop := freeBefore - hostFree(t); drop > limit+hostSlack {
		t.Errorf("the host's free space dropped by %d MiB while a machine limited to %d MiB tried to write %d MiB", drop>>20, diskLimitMB, fillMB)
	}
	sample := waitSample(t, full.ID, func(s api.MetricSample) bool { return s.DiskUsed >= limit/2 })
	if sample.DiskTotal != limit || sample.DiskUsed > limit+diskSlack {
		t.Errorf("metrics of the full machine: disk_used %d, disk_total %d; want at most %d of its own limit %d", sample.DiskUsed, sample.DiskTotal, limit+diskSlack, limit)
	}

	// The healthy machine beside it writes more than the full one may,
	// and runs commands.
	run(t, healthy.ID, "dd if=/dev/zero of=/root/big bs=1M count=100 conv=fsync 2>/dev/null && echo more > /root/note && cat /root/note")
	if got := strings.TrimSpace(run(t, healthy.ID, "stat -c %s /root/big")); got != strconv.Itoa(100<<20) {
		t.Errorf("the healthy machine's 100 MiB file has %s bytes", got)
	}
	// The full machine still runs commands; freeing space lets it write again.
	run(t, full.ID, "rm /root/big && echo again > /root/small && cat /root/small")

	if _, err := env.client.Pause(t.Context(), full.ID); err != nil {
		t.Fatalf("pause: %v", err)
	}
	resumed, err := env.client.Connect(t.Context(), full.ID)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if resumed.DiskMB != diskLimitMB {
		t.Errorf("resumed machine's disk_mb %d, want %d", resumed.DiskMB, diskLimitMB)
	}
	if got := strings.TrimSpace(run(t, resumed.ID, "cat /root/small")); got != "again" {
		t.Errorf("a file written before the pause reads %q after the resume, want again", got)
	}
	fillDisk(t, resumed.ID, "resumed")
	run(t, resumed.ID, "rm /root/big")

	fork, err := env.client.Fork(t.Context(), resumed.ID, 1)
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	child := fork.Machines[0]
	t.Cleanup(func() { env.client.KillMachine(t.Context(), child.ID) })
	if child.DiskMB != diskLimitMB {
		t.Errorf("fork child's disk_mb %d, want its parent's %d", child.DiskMB, diskLimitMB)
	}
	fillDisk(t, child.ID, "fork child")
	run(t, child.ID, "rm /root/big")

	// A stop drops the processes and keeps the files; the start boots
	// from them with the same limit.
	if _, err := env.client.Stop(t.Context(), child.ID, nil); err != nil {
		t.Fatalf("stop: %v", err)
	}
	started, err := env.client.Start(t.Context(), child.ID)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if started.DiskMB != diskLimitMB {
		t.Errorf("started machine's disk_mb %d, want %d", started.DiskMB, diskLimitMB)
	}
	fillDisk(t, started.ID, "stopped and started")
	run(t, healthy.ID, "echo still fine")
}

// fillDisk writes past a machine's disk limit and checks that the write
// fails with ENOSPC inside, that df shows the limit, and that the
// machine's overlay file on the host stays within it.
func fillDisk(t *testing.T, id, what string) {
	t.Helper()
	const limit = diskLimitMB << 20
	if got := dfTotal(t, id); got > limit || got < limit-(4<<20) {
		t.Errorf("%s: df / inside reports %d MiB, want the limit, %d MiB", what, got>>20, diskLimitMB)
	}
	res, err := env.client.RunCommand(t.Context(), id, api.RunCommandRequest{
		Shell: fmt.Sprintf("dd if=/dev/zero of=/root/big bs=1M count=%d conv=fsync", fillMB), TimeoutMS: 60000})
	if err != nil {
		t.Fatalf("%s: dd: %v", what, err)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "No space left on device") {
		t.Fatalf("%s: dd of %d MiB into a %d MiB disk: exit %d, stderr %q; want it to fail with ENOSPC", what, fillMB, diskLimitMB, res.ExitCode, res.Stderr)
	}
	if got := hostOverlayBytes(t, id); got > limit+diskSlack {
		t.Errorf("%s: the machine's overlay file takes %d MiB on the host, over its limit of %d MiB", what, got>>20, diskLimitMB)
	} else {
		t.Logf("%s: dd: %s; overlay file on the host: %.1f MiB", what, lastLine(res.Stderr), float64(got)/(1<<20))
	}
	// A machine with a full disk still runs commands.
	if out := strings.TrimSpace(run(t, id, "echo alive")); out != "alive" {
		t.Fatalf("%s: echo alive printed %q", what, out)
	}
}

// dfTotal is the size of the root file system as df shows it inside.
func dfTotal(t *testing.T, id string) int64 {
	t.Helper()
	out := strings.TrimSpace(run(t, id, "df -k / | tail -1 | awk '{print $2}'"))
	kb, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("df -k /: %q", out)
	}
	return kb << 10
}

// hostOverlayBytes is what a machine's overlay file store takes on the
// host, found among its sandbox's open files (runsc unlinks it).
func hostOverlayBytes(t *testing.T, id string) int64 {
	t.Helper()
	cg := env.cfg.Names.CgroupParent + "/" + containerOf(t, id)
	procs, err := os.ReadFile("/sys/fs/cgroup/pids" + cg + "/cgroup.procs")
	if err != nil {
		if procs, err = os.ReadFile("/sys/fs/cgroup" + cg + "/cgroup.procs"); err != nil {
			t.Fatalf("sandbox of %s: %v", id, err)
		}
	}
	for _, pid := range strings.Fields(string(procs)) {
		fds, _ := filepath.Glob("/proc/" + pid + "/fd/*")
		for _, fd := range fds {
			if target, err := os.Readlink(fd); err == nil && strings.Contains(target, "runsc-filestore-") {
				var st syscall.Stat_t
				if err := syscall.Stat(fd, &st); err != nil {
					t.Fatal(err)
				}
				return st.Blocks * 512
			}
		}
	}
	t.Fatalf("no overlay file store open in the sandbox of %s", id)
	return 0
}

// hostFree is the free space of the file system holding the machines'
// overlays.
func hostFree(t *testing.T) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(env.cfg.DataDir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}
