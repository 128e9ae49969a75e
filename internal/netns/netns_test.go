package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Test networks live in their own pool and under their own names, so they
// never collide with a server running on the same host, and the production
// firewall (which matches nsv*) never sees their traffic.
var testConfig = Config{CIDR: "10.250.0.0/24", NetnsPrefix: "nstest-", VethPrefix: "nst"}

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Geteuid() == 0 {
		// Belt and braces: every test cleans up after itself; this catches
		// a bug in that and still leaves the host clean.
		if left := sweep(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: tests left networks behind for slots %v (removed now)\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

func sweep() []int {
	m, err := New(testConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep:", err)
		return nil
	}
	defer m.Close()
	defer m.DropPoolRoute()
	slots, err := m.List()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep:", err)
	}
	for _, s := range slots {
		if err := m.Teardown(context.Background(), s); err != nil {
			fmt.Fprintln(os.Stderr, "sweep:", err)
		}
	}
	return slots
}

func newTestManager(t *testing.T) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and interfaces")
	}
	cfg := testConfig
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.DropPoolRoute(); m.Close() })
	return m
}

// setup runs Setup and registers the Teardown before it, so that the
// network is removed even if Setup or the test fails half-way.
func setup(t *testing.T, m *Manager, slot int) *Network {
	t.Helper()
	t.Cleanup(func() {
		if err := m.Teardown(context.WithoutCancel(t.Context()), slot); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	n, err := m.Setup(t.Context(), slot, SetupOptions{})
	if err != nil {
		t.Fatalf("Setup(%d): %v", slot, err)
	}
	return n
}

func TestSetupTeardown(t *testing.T) {
	m := newTestManager(t)
	ctx := t.Context()
	n := setup(t, m, 1)

	want := &Network{
		Slot:           1,
		NetnsName:      "nstest-1",
		NetnsPath:      "/run/netns/nstest-1",
		HostInterface:  "nst1",
		GuestInterface: "eth0",
		Block:          netip.MustParsePrefix("10.250.0.4/30"),
		HostIP:         netip.MustParseAddr("10.250.0.5"),
		GuestIP:        netip.MustParseAddr("10.250.0.6"),
		GuestMAC:       net.HardwareAddr{0x02, 0x6e, 10, 250, 0, 6},
	}
	if fmt.Sprint(n) != fmt.Sprint(want) {
		t.Errorf("Setup(1) = %+v, want %+v", n, want)
	}
	if _, err := os.Stat("/var/run/netns/nstest-1"); err != nil {
		t.Errorf("namespace file: %v", err)
	}
	checkHostSide(t, n)
	checkGuestSide(t, n)
	checkReachable(t, n)
	if slots, err := m.List(); err != nil || !slices.Equal(slots, []int{1}) {
		t.Errorf("List() = %v, %v, want [1]", slots, err)
	}

	if err := m.Teardown(ctx, 1); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	checkGone(t, m, 1)
	if err := m.Teardown(ctx, 1); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if err := m.Teardown(ctx, 42); err != nil {
		t.Errorf("Teardown of a slot never set up: %v", err)
	}
}

func checkHostSide(t *testing.T, n *Network) {
	t.Helper()
	link, err := netlink.LinkByName(n.HostInterface)
	if err != nil {
		t.Fatalf("host interface: %v", err)
	}
	a := link.Attrs()
	if link.Type() != "veth" || a.Flags&net.FlagUp == 0 || a.MTU != 1500 {
		t.Errorf("host interface %s: type %s, flags %v, mtu %d; want an up veth with mtu 1500", a.Name, link.Type(), a.Flags, a.MTU)
	}
	if got, want := a.HardwareAddr.String(), macFor(n.HostIP).String(); got != want {
		t.Errorf("host interface MAC = %s, want %s", got, want)
	}
	checkAddrs(t, link, n.HostIP)
	for key, want := range map[string]string{
		"ipv6/conf/" + n.HostInterface + "/disable_ipv6": "1",
		"ipv4/conf/" + n.HostInterface + "/arp_ignore":   "1",
		"ipv4/conf/" + n.HostInterface + "/arp_announce": "2",
	} {
		if got := readSysctl(t, key); got != want {
			t.Errorf("sysctl %s = %s, want %s", key, got, want)
		}
	}
}

func checkGuestSide(t *testing.T, n *Network) {
	t.Helper()
	err := Do(n.NetnsPath, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
			if l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s in %s is down", l.Attrs().Name, n.NetnsName)
			}
		}
		sort.Strings(names)
		if !slices.Equal(names, []string{"eth0", "lo"}) {
			t.Errorf("links in %s = %v, want [eth0 lo]", n.NetnsName, names)
		}
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if got := eth0.Attrs().HardwareAddr.String(); got != n.GuestMAC.String() {
			t.Errorf("eth0 MAC = %s, want %s", got, n.GuestMAC)
		}
		checkAddrs(t, eth0, n.GuestIP)
		if got := readSysctl(t, "ipv6/conf/eth0/disable_ipv6"); got != "1" {
			t.Errorf("eth0 disable_ipv6 = %s, want 1", got)
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var def []string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				def = append(def, fmt.Sprintf("via %s dev %d", r.Gw, r.LinkIndex))
			}
		}
		if want := fmt.Sprintf("via %s dev %d", n.HostIP, eth0.Attrs().Index); !slices.Equal(def, []string{want}) {
			t.Errorf("default routes in %s = %v, want [%s]", n.NetnsName, def, want)
		}
		return nil
	})
	if err != nil {
		t.Errorf("inspect %s: %v", n.NetnsName, err)
	}
}

// checkAddrs checks that link has exactly ip/30 and no IPv6 address at all
// (no link-local autoconfiguration).
func checkAddrs(t *testing.T, link netlink.Link, ip netip.Addr) {
	t.Helper()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Errorf("addresses of %s: %v", link.Attrs().Name, err)
		return
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if want := []string{ip.String() + "/30"}; !slices.Equal(got, want) {
		t.Errorf("addresses of %s = %v, want %v", link.Attrs().Name, got, want)
	}
}

func readSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/sys/net", key))
	if err != nil {
		t.Errorf("read sysctl: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// checkReachable listens inside the namespace on the machine's IP and dials
// it from the root namespace.
func checkReachable(t *testing.T, n *Network) {
	t.Helper()
	var ln net.Listener
	if err := Do(n.NetnsPath, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(n.GuestIP, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", n.NetnsName, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "hello")
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("dial %s from the host: %v", ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Errorf("read from %s = %q, %v, want hello", ln.Addr(), b, err)
	}
}

func checkGone(t *testing.T, m *Manager, slot int) {
	t.Helper()
	if _, err := os.Lstat(m.NetnsPath(slot)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists (stat: %v)", m.NetnsPath(slot), err)
	}
	if _, err := netlink.LinkByName(m.HostInterface(slot)); err == nil {
		t.Errorf("%s still exists", m.HostInterface(slot))
	}
	if slots, err := m.List(); err != nil || slices.Contains(slots, slot) {
		t.Errorf("List() = %v, %v, want no slot %d", slots, err, slot)
	}
}

func TestSetupOverLeftovers(t *testing.T) {
	m := newTestManager(t)

	t.Run("whole network", func(t *testing.T) {
		setup(t, m, 2)
		n := setup(t, m, 2)
		checkHostSide(t, n)
		checkGuestSide(t, n)
		checkReachable(t, n)
	})
	t.Run("unmounted namespace file", func(t *testing.T) {
		t.Cleanup(func() { m.Teardown(context.Background(), 3) })
		if err := os.WriteFile(m.NetnsPath(3), nil, 0o444); err != nil {
			t.Fatal(err)
		}
		n := setup(t, m, 3)
		checkReachable(t, n)
	})
	t.Run("veth without namespace", func(t *testing.T) {
		t.Cleanup(func() { m.Teardown(context.Background(), 4) })
		v := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: "nst4peer"}
		v.Name = m.HostInterface(4)
		if err := netlink.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
		n := setup(t, m, 4)
		checkReachable(t, n)
		if _, err := netlink.LinkByName("nst4peer"); err == nil {
			t.Errorf("old peer nst4peer still exists")
		}
	})
	t.Run("foreign interface is kept", func(t *testing.T) {
		t.Cleanup(func() { m.Teardown(context.Background(), 5) })
		d := &netlink.Bridge{LinkAttrs: netlink.NewLinkAttrs()}
		d.Name = m.HostInterface(5)
		if err := netlink.LinkAdd(d); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netlink.LinkDel(d) })
		_, err := m.Setup(t.Context(), 5, SetupOptions{})
		if !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("Setup over a bridge: error %v, want ErrConflict", err)
		}
		if _, err := netlink.LinkByName(d.Name); err != nil {
			t.Errorf("bridge was removed: %v", err)
		}
	})
}

func TestSetupFailureCleansUp(t *testing.T) {
	m := newTestManager(t)
	for _, step := range []string{"netns", "veth", "host", "guest"} {
		t.Run(step, func(t *testing.T) {
			t.Cleanup(func() { m.Teardown(context.Background(), 6) })
			injected := errors.New("injected failure")
			m.hook = func(s string) error {
				if s == step {
					return injected
				}
				return nil
			}
			defer func() { m.hook = nil }()
			if _, err := m.Setup(t.Context(), 6, SetupOptions{}); !errors.Is(err, injected) {
				t.Fatalf("Setup error = %v, want the injected failure", err)
			}
			checkGone(t, m, 6)
		})
	}
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := m.Setup(ctx, 6, SetupOptions{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Setup error = %v, want context.Canceled", err)
		}
		checkGone(t, m, 6)
	})
	t.Run("invalid", func(t *testing.T) {
		for _, tt := range []struct {
			slot int
			opts SetupOptions
		}{
			{slot: -1},
			{slot: 64},
			{slot: 6, opts: SetupOptions{MTU: 10}},
			{slot: 6, opts: SetupOptions{GuestMAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}}},
		} {
			if _, err := m.Setup(t.Context(), tt.slot, tt.opts); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Setup(%d, %+v) error = %v, want ErrInvalidArgument", tt.slot, tt.opts, err)
			}
		}
		checkGone(t, m, 6)
	})
}

func TestSetupOptions(t *testing.T) {
	m := newTestManager(t)
	t.Cleanup(func() { m.Teardown(context.Background(), 7) })
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	n, err := m.Setup(t.Context(), 7, SetupOptions{MTU: 1400, GuestMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if n.GuestMAC.String() != mac.String() {
		t.Errorf("GuestMAC = %s, want %s", n.GuestMAC, mac)
	}
	err = Do(n.NetnsPath, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if a := eth0.Attrs(); a.MTU != 1400 || a.HardwareAddr.String() != mac.String() {
			t.Errorf("eth0 mtu %d, MAC %s; want 1400, %s", a.MTU, a.HardwareAddr, mac)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestConcurrent sets up and tears down many slots at once, then checks that
// no thread of the process was left in a machine's namespace.
func TestConcurrent(t *testing.T) {
	m := newTestManager(t)
	slots := make([]int, 24)
	for i := range slots {
		slots[i] = 10 + i
		t.Cleanup(func() { m.Teardown(context.Background(), 10+i) })
	}
	var wg sync.WaitGroup
	for _, s := range slots {
		wg.Go(func() {
			if _, err := m.Setup(t.Context(), s, SetupOptions{}); err != nil {
				t.Errorf("Setup(%d): %v", s, err)
			}
		})
	}
	wg.Wait()
	got, err := m.List()
	if err != nil || !slices.Equal(got, slots) {
		t.Errorf("List() = %v, %v, want %v", got, err, slots)
	}
	for _, s := range slots {
		wg.Go(func() {
			if err := m.Teardown(t.Context(), s); err != nil {
				t.Errorf("Teardown(%d): %v", s, err)
			}
		})
	}
	wg.Wait()
	if got, err := m.List(); err != nil || len(got) != 0 {
		t.Errorf("List() after teardown = %v, %v, want none", got, err)
	}
	checkThreadsInRootNetns(t)
}

func checkThreadsInRootNetns(t *testing.T) {
	t.Helper()
	want, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		got, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // thread exited
		}
		if got != want {
			t.Errorf("thread %s is in %s, want %s", task.Name(), got, want)
		}
	}
}

// TestTiming measures Setup and Teardown; the numbers go in the log.
func TestTiming(t *testing.T) {
	m := newTestManager(t)
	const runs = 30
	t.Cleanup(func() { m.Teardown(context.Background(), 8) })
	var setups, teardowns []time.Duration
	for range runs {
		start := time.Now()
		if _, err := m.Setup(t.Context(), 8, SetupOptions{}); err != nil {
			t.Fatal(err)
		}
		setups = append(setups, time.Since(start))
		start = time.Now()
		if err := m.Teardown(t.Context(), 8); err != nil {
			t.Fatal(err)
		}
		teardowns = append(teardowns, time.Since(start))
	}
	slices.Sort(setups)
	slices.Sort(teardowns)
	t.Logf("Setup:    median %v, p90 %v, max %v", setups[runs/2], setups[runs*9/10], setups[runs-1])
	t.Logf("Teardown: median %v, p90 %v, max %v", teardowns[runs/2], teardowns[runs*9/10], teardowns[runs-1])
	if setups[runs/2] > time.Second {
		t.Errorf("median Setup took %v; expected a few milliseconds", setups[runs/2])
	}
}

func BenchmarkSetupTeardown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	m, err := New(testConfig)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	defer m.Teardown(context.Background(), 9)
	for b.Loop() {
		if _, err := m.Setup(b.Context(), 9, SetupOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := m.Teardown(b.Context(), 9); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPoolUnreachable: the host reaches no address of the pool that no
// slot holds: a connection fails at once instead of leaving by the
// default route.
func TestPoolUnreachable(t *testing.T) {
	m := newTestManager(t)
	_, guest, err := m.Pool().Addrs(m.Pool().Size() - 1) // a slot no test sets up
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(guest, 80).String(), 5*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("dialed %s, a slot nobody holds", guest)
	}
	if d := time.Since(start); d > time.Second || !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dial %s: %v after %v, want unreachable at once", guest, err, d)
	}
}
