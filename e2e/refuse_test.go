package e2e

import (
	"fmt"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
)

// TestOutboundRefusedAtOnce: a machine without internet that connects past
// the host (here to another machine's address, a namespace the test made)
// is refused at once, not left to time out (issue 21: a connect hung 3 s).
// TCP gets a reset; a connected UDP socket gets ECONNREFUSED from the
// host's ICMP port unreachable.
func TestOutboundRefusedAtOnce(t *testing.T) {
	a := newMachine(t, api.CreateMachineRequest{Template: "base"})
	b := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	script := fmt.Sprintf(`
import socket, time
for kind, proto in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
    s = socket.socket(socket.AF_INET, proto)
    s.settimeout(5)
    t0 = time.monotonic()
    try:
        s.connect((%q, 8080))
        if kind == "udp":
            s.send(b"x")
            s.recv(16)
        print(kind, "connected", end=" ")
    except ConnectionRefusedError:
        print(kind, "refused", end=" ")
    except OSError as e:
        print(kind, type(e).__name__, end=" ")
    print("%%.3f" %% (time.monotonic() - t0))
`, b.IP)
	out := run(t, a.ID, "python3 - <<'EOF'\n"+script+"EOF")
	t.Logf("from a machine without internet: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	for _, kind := range []string{"tcp", "udp"} {
		var got string
		var took float64
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(line, kind+" ") {
				fmt.Sscanf(line, kind+" %s %f", &got, &took)
			}
		}
		if got != "refused" || took > 1 {
			t.Errorf("%s from a machine without internet to another machine: %s after %.3f s, want refused within 1 s (output %q)", kind, got, took, out)
		}
	}
}
