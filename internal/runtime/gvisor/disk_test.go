package gvisor

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nullspace.dev/nullspace/internal/runtime"
)

// TestOverlayCarriesDiskLimit: run, create and restore all give runsc the
// machine's overlay with its size limit (a restore without it would lift
// the limit), and a spec without one leaves the overlay unbounded. runsc
// is a script that records its arguments.
func TestOverlayCarriesDiskLimit(t *testing.T) {
	dir := t.TempDir()
	argsLog := filepath.Join(dir, "args")
	runsc := filepath.Join(dir, "runsc")
	script := "#!/bin/sh\necho \"$@\" >> " + argsLog + "\n"
	if err := os.WriteFile(runsc, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Runsc: runsc, Root: filepath.Join(dir, "root"), CgroupParent: "/nullspace-disk-test"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		diskMB int
		want   string // the --overlay2 value, after the machine's overlay dir
	}{
		{"limited", 64, ",size=64m"},
		{"unlimited", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(argsLog)
			spec := runtime.Spec{ID: "nsdisktest000000000000000", Dir: filepath.Join(dir, tc.name), Rootfs: dir,
				Args: []string{"/bin/true"}, Cwd: "/", DiskMB: tc.diskMB}
			ctx := t.Context()
			if err := d.Start(ctx, spec); err != nil {
				t.Fatalf("start: %v", err)
			}
			if err := d.Create(ctx, spec); err != nil {
				t.Fatalf("create: %v", err)
			}
			if err := d.Restore(ctx, spec, filepath.Join(dir, "image")); err != nil {
				t.Fatalf("restore: %v", err)
			}
			b, err := os.ReadFile(argsLog)
			if err != nil {
				t.Fatal(err)
			}
			want := "--overlay2=root:dir=" + filepath.Join(spec.Dir, "overlay") + tc.want + " "
			seen := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				for _, sub := range []string{"run", "create", "restore"} {
					if strings.Contains(line, " "+sub+" ") {
						seen[sub] = true
						if !strings.Contains(line, want) {
							t.Errorf("runsc %s got %q, want %q in it", sub, line, want)
						}
					}
				}
			}
			if len(seen) != 3 {
				t.Fatalf("runsc calls %q: want run, create and restore", b)
			}
		})
	}
}
