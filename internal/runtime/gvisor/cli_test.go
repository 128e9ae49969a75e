package gvisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFailure: a sandbox panic is reported by its message, not by the end
// of the goroutine dump that follows it.
func TestFailure(t *testing.T) {
	for _, tc := range []struct {
		name, log, want, notWant string
	}{
		{name: "plain error", log: "starting\ncreating container: no such file\n", want: "creating container: no such file"},
		{name: "panic", log: "W1124 restore\npanic: runtime error: index out of range [3] with length 3\n\ngoroutine 12 [running]:\nmain.f()\n\t/x.go:1\n" + strings.Repeat("frame\n", 400),
			want: "panic: runtime error: index out of range [3] with length 3", notWant: "frame"},
		{name: "fatal error", log: "x\nfatal error: concurrent map writes\n\ngoroutine 1 [running]:\n", want: "fatal error: concurrent map writes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "console.log")
			if err := os.WriteFile(p, []byte(tc.log), 0o600); err != nil {
				t.Fatal(err)
			}
			got := failure(p)
			if !strings.Contains(got, tc.want) || (tc.notWant != "" && strings.Contains(got, tc.notWant)) {
				t.Fatalf("failure() = %q, want it to hold %q and not %q", got, tc.want, tc.notWant)
			}
		})
	}
}
