package gvisor

import (
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDeleteRemovesLeftCgroup: a `runsc create` whose sandbox died while
// starting leaves the container's cgroup and no container that runsc
// delete could find; Delete removes the cgroup all the same. (Found when a
// spare was being created for a volume deleted meanwhile.)
func TestDeleteRemovesLeftCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test makes a cgroup under /sys/fs/cgroup: run it as root (make test)")
	}
	runsc := os.Getenv("NULLSPACE_RUNSC")
	if runsc == "" {
		t.Fatal("NULLSPACE_RUNSC is not set: run it through make test, which builds runsc")
	}
	const parent, id = "/nullspace-gvisor-test", "nsleftcgroup0000000000000"
	d, err := New(Config{Runsc: runsc, Root: t.TempDir(), CgroupParent: parent}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	base := "/sys/fs/cgroup/memory" // cgroup v1
	if _, err := os.Stat(base); err != nil {
		base = "/sys/fs/cgroup" // v2
	}
	dir := filepath.Join(base+parent, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Rmdir(dir)
		syscall.Rmdir(base + parent)
	})
	if err := d.Delete(t.Context(), id, ""); err != nil {
		t.Fatalf("delete of a container runsc never recorded: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s is still there after Delete (stat: %v)", dir, err)
	}
}

func TestKeyedCounter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.oom_control")
	os.WriteFile(p, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 0o644)
	if n, ok := keyedCounter(p, "oom_kill"); !ok || n != 2 {
		t.Errorf("oom_kill = %d, %v; want 2", n, ok)
	}
	if _, ok := keyedCounter(p, "max"); ok {
		t.Error("a missing key was found")
	}
}
