package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestParseMeminfo(t *testing.T) {
	mi, err := parseMeminfo([]byte("MemTotal:         524288 kB\nMemFree:          400000 kB\nMemAvailable:     400000 kB\n"))
	if err != nil {
		t.Fatal(err)
	}
	if mi.total != 512<<20 || mi.available != 400000<<10 {
		t.Errorf("got %+v, want total 512 MiB, available 400000 kB", mi)
	}
	if _, err := parseMeminfo([]byte("MemTotal: 1 kB\n")); err == nil {
		t.Error("meminfo without MemAvailable: got no error")
	}
}

func TestPickVictim(t *testing.T) {
	const total = 1000 << 20
	tests := []struct {
		name  string
		procs []procInfo
		want  int // 0: none
	}{
		{"largest rss", []procInfo{{pid: 5, rss: 10 << 20}, {pid: 7, rss: 300 << 20}, {pid: 9, rss: 20 << 20}}, 7},
		{"init never", []procInfo{{pid: 1, rss: 900 << 20}, {pid: 3, rss: 1 << 20}}, 3},
		{"oom_score_adj -1000 never", []procInfo{{pid: 7, rss: 300 << 20, scoreAdj: -1000}, {pid: 9, rss: 20 << 20}}, 9},
		{"oom_score_adj shifts", []procInfo{{pid: 7, rss: 300 << 20, scoreAdj: -500}, {pid: 9, rss: 20 << 20}}, 9},
		{"none", []procInfo{{pid: 1, rss: 1}}, 0},
	}
	for _, tt := range tests {
		got, ok := pickVictim(tt.procs, total)
		if (tt.want == 0) == ok || (ok && got.pid != tt.want) {
			t.Errorf("%s: got pid %d (ok %v), want %d", tt.name, got.pid, ok, tt.want)
		}
	}
}

func TestProcessLimit(t *testing.T) {
	if n := ProcessLimitFor(512 << 20); n != 256 {
		t.Errorf("ProcessLimitFor(512 MiB) = %d, want 256", n)
	}
	if n := ProcessLimitFor(64 << 20); n != minProcessLimit {
		t.Errorf("ProcessLimitFor(64 MiB) = %d, want %d", n, minProcessLimit)
	}
}

// TestListProcs reads a fake /proc: init is left out, RSS is in bytes.
func TestListProcs(t *testing.T) {
	root := t.TempDir()
	for pid, rss := range map[int]string{1: "100 50 0", 42: "100 25 0"} {
		dir := filepath.Join(root, strconv.Itoa(pid))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "statm"), []byte(rss), 0o644)
		os.WriteFile(filepath.Join(dir, "oom_score_adj"), []byte("0\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "comm"), []byte("python3\n"), 0o644)
	}
	os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal: 1024 kB\n"), 0o644)
	procs := listProcs(root)
	if len(procs) != 1 || procs[0].pid != 42 || procs[0].rss != 25*uint64(os.Getpagesize()) || procs[0].comm != "python3" {
		t.Errorf("listProcs = %+v, want pid 42 with 25 pages, comm python3", procs)
	}
}
