package terminal

import (
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
)

func TestGone(t *testing.T) {
	for _, tc := range []struct {
		state, want string
	}{
		{api.StatePausing, "was paused (process 7 lives on in its state): come back"},
		{api.StatePaused, "was paused"},
		{api.StateStopping, "was stopped, which ended its processes"},
		{api.StateKilled, "was killed"},
		{"", "is no longer running"},
	} {
		got := Gone("mch_1", 7, tc.state, "come back")
		if !strings.Contains(got, tc.want) || !strings.HasPrefix(got, "machine mch_1 ") {
			t.Errorf("Gone(%q) = %q, want it to say %q", tc.state, got, tc.want)
		}
		if len(Gone("mch_0123456789abcdef0123", 99999, tc.state, "attach again with connect=true")) > 123 {
			t.Errorf("Gone(%q) is longer than a WebSocket close reason may be", tc.state)
		}
	}
}
