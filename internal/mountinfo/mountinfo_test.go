package mountinfo

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/a/b", "/a/b"},
		{`/a\040b`, "/a b"},
		{`/tab\011x`, "/tab\tx"},
		{`/trailing\04`, `/trailing\04`},
	}
	for _, tt := range tests {
		if got := unescape(tt.in); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestUnmountUnder mounts two tmpfs, one inside the other, under a directory
// with a space in its name and checks both are found and removed.
func TestUnmountUnder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts tmpfs and needs root; run it as root (make test does)")
	}
	dir := filepath.Join(t.TempDir(), "with space")
	inner := filepath.Join(dir, "inner")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	got, err := Under(dir)
	if err != nil || len(got) != 2 || got[0] != inner || got[1] != dir {
		t.Fatalf("Under = %v, %v; want [%s %s]", got, err, inner, dir)
	}
	if err := UnmountUnder(dir); err != nil {
		t.Fatalf("UnmountUnder: %v", err)
	}
	if got, _ := Under(dir); len(got) != 0 {
		t.Fatalf("mounts left: %v", got)
	}
}
