package devcluster

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	nsnet "nullspace.dev/nullspace/internal/netns"
)

// TestNetworkLive builds a two-node cluster's network for real (no
// PostgreSQL, no servers): node 1 reaches node 2 and the bridge, a
// partition cuts node 2 off and a heal brings it back, and Close leaves
// no object behind.
func TestNetworkLive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it creates a bridge, network namespaces and veths (run `make test` as root)")
	}
	pid := os.Getpid()
	// A name and subnet of this test run's own, so that it never meets a
	// developer's cluster (nsc, 10.213.0.0/24) or another run.
	o := Options{
		Nodes:   2,
		Name:    "nst" + strconv.Itoa(pid%100000),
		Subnet:  fmt.Sprintf("10.214.%d.0/24", pid%256),
		BaseDir: t.TempDir(),
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	l := testLayout(t, o)
	c := &Cluster{l: l, log: l.o.Logger, nodes: make([]*proc, l.o.Nodes)}
	t.Cleanup(func() {
		if err := c.Close(t.Context()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if err := setupNetwork(l); err != nil {
		t.Fatal(err)
	}

	// Node 2 serves; node 1 and the host dial it.
	ln := listenIn(t, l.netnsPath(2), netip.AddrPortFrom(nodeIP(l.subnet, 2), 0).String())
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, "node2\n")
			conn.Close()
		}
	}()
	target := ln.Addr().String()
	if err := dialFrom(l.netnsPath(1), target, 2*time.Second); err != nil {
		t.Fatalf("node 1 dials node 2 at %s: %v", target, err)
	}
	// Node 1 reaches the bridge address, where PostgreSQL and versitygw
	// listen.
	host, err := net.Listen("tcp", netip.AddrPortFrom(bridgeIP(l.subnet), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	go func() {
		for {
			conn, err := host.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, "host\n")
			conn.Close()
		}
	}()
	if err := dialFrom(l.netnsPath(1), host.Addr().String(), 2*time.Second); err != nil {
		t.Fatalf("node 1 dials the host at %s: %v", host.Addr(), err)
	}

	if err := c.Partition(2); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(l.netnsPath(1), target, time.Second); err == nil {
		t.Fatal("node 1 reached node 2 across a partition")
	}
	if err := c.Heal(2); err != nil {
		t.Fatal(err)
	}
	// The port forwards again at once (no STP), but give ARP a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := dialFrom(l.netnsPath(1), target, time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 does not reach node 2 after heal: %v", err)
		}
	}
	ln.Close()

	if err := c.Close(t.Context()); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := c.Close(t.Context()); err != nil {
		t.Fatalf("second close: %v", err)
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), o.Name+"-") {
			t.Errorf("close left namespace %s", e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, lk := range links {
		if strings.HasPrefix(lk.Attrs().Name, o.Name+"-") {
			t.Errorf("close left link %s", lk.Attrs().Name)
		}
	}
}

// listenIn opens a TCP listener inside the namespace at path; it stays
// there whichever goroutine accepts on it.
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := nsnet.Do(path, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialFrom connects from inside the namespace at path and reads a line.
func dialFrom(path, addr string, timeout time.Duration) error {
	return nsnet.Do(path, func() error {
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(timeout))
		b := make([]byte, 16)
		if _, err := conn.Read(b); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		return nil
	})
}

// testWriter sends the cluster's log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
