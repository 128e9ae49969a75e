// Package netns gives every machine its own network namespace.
//
// Slot N of the address pool (see Pool) owns a /30. Setup creates the named
// namespace nullspace-N (bind-mounted at /run/netns, which /var/run points
// to, as `ip netns` does), a veth pair whose host end nsvN keeps the .1
// address in the root namespace and whose other end is eth0 with the .2
// address inside the namespace, brings the links up (lo too) and routes the
// machine's default traffic through .1. runsc then runs the sandbox in that
// namespace and its netstack takes over eth0's address, MAC and routes.
//
// Everything is done over netlink: no `ip` binary. The only thread that ever
// changes namespace is a dedicated, locked OS thread that switches back
// before it is unlocked, or is thrown away if it cannot.
//
// What machines may reach is the firewall's business: see package
// nullspace.dev/nullspace/internal/netns/firewall.
package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Names.
const (
	// NetnsDir is where named network namespaces are bind-mounted. It is
	// where `ip netns` and the netns library look, and what /var/run/netns
	// resolves to.
	NetnsDir = "/run/netns"
	// DefaultNetnsPrefix names slot N's namespace DefaultNetnsPrefix+N.
	DefaultNetnsPrefix = "nullspace-"
	// DefaultVethPrefix names slot N's host-side veth DefaultVethPrefix+N. The
	// firewall matches machine traffic by this prefix.
	DefaultVethPrefix = "nsv"
	// GuestInterface is the machine-side veth's name inside its namespace.
	GuestInterface = "eth0"

	defaultMTU   = 1500
	maxIfNameLen = unix.IFNAMSIZ - 1 // 15
)

// Config configures a Manager. The zero value gives the production defaults.
type Config struct {
	// CIDR is the IPv4 address pool cut into one /30 per slot.
	// Default DefaultCIDR.
	CIDR string
	// NetnsPrefix prefixes namespace names. Default DefaultNetnsPrefix.
	NetnsPrefix string
	// VethPrefix prefixes host-side interface names; it must match the
	// firewall's interface prefix. Default DefaultVethPrefix.
	VethPrefix string
	// Logger receives debug lines for every setup and teardown and warnings
	// for leftovers. Default: discard.
	Logger *slog.Logger
}

// Manager creates and removes machine networks. It holds no per-slot state:
// the kernel is the record, so a Manager built after a crash sees what the
// previous one left (List). Calls for different slots may run concurrently;
// calls for the same slot must not. Call it from ordinary goroutines, not
// from inside Do: host-side sysctls go through /proc/sys, which belongs to
// the calling thread's namespace.
type Manager struct {
	pool        *Pool
	netnsPrefix string
	vethPrefix  string
	log         *slog.Logger
	nl          *netlink.Handle // rtnetlink socket in the root namespace; safe for concurrent use

	// hook, when set by tests, runs after each setup step and can fail it.
	hook func(step string) error
}

// New validates cfg and returns a Manager. It needs root: it prepares
// NetnsDir the way `ip netns add` does (a shared bind mount, so that removing
// a namespace propagates to mount namespaces created meanwhile).
func New(cfg Config) (*Manager, error) {
	if cfg.CIDR == "" {
		cfg.CIDR = DefaultCIDR
	}
	if cfg.NetnsPrefix == "" {
		cfg.NetnsPrefix = DefaultNetnsPrefix
	}
	if cfg.VethPrefix == "" {
		cfg.VethPrefix = DefaultVethPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pool, err := NewPool(cfg.CIDR)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(cfg.NetnsPrefix, "/\x00") || cfg.NetnsPrefix == "." || cfg.NetnsPrefix == ".." {
		return nil, fmt.Errorf("network namespace prefix %q is not a valid file name: %w", cfg.NetnsPrefix, errdefs.ErrInvalidArgument)
	}
	if n := len(cfg.VethPrefix) + len(strconv.Itoa(pool.Size()-1)); n > maxIfNameLen {
		return nil, fmt.Errorf("interface prefix %q with pool %s gives %d-character names; Linux allows %d: %w",
			cfg.VethPrefix, pool, n, maxIfNameLen, errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(cfg.VethPrefix, "/: \t\n\x00") {
		return nil, fmt.Errorf("interface prefix %q is not a valid interface name: %w", cfg.VethPrefix, errdefs.ErrInvalidArgument)
	}
	if err := prepareNetnsDir(); err != nil {
		return nil, fmt.Errorf("prepare %s: %w", NetnsDir, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	// Traffic from the host to an address of the pool that no machine
	// holds now (one that just went away, while the edge or the API still
	// dials it) fails at once on the host instead of leaving by the
	// default route: the pool is unreachable but for the slots' own /30
	// routes, which are more specific.
	m := &Manager{pool: pool, netnsPrefix: cfg.NetnsPrefix, vethPrefix: cfg.VethPrefix, log: cfg.Logger, nl: h}
	if err := h.RouteReplace(m.poolRoute()); err != nil {
		h.Close()
		return nil, fmt.Errorf("route the address pool %s as unreachable: %w", pool, err)
	}
	return m, nil
}

// poolRoute is the unreachable route of the whole pool (see New).
func (m *Manager) poolRoute() *netlink.Route {
	pfx := m.pool.Prefix()
	return &netlink.Route{Dst: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 32)}, Type: unix.RTN_UNREACHABLE}
}

// DropPoolRoute removes the pool's unreachable route, for a pool no server
// will use again (tests). A server keeps it, like its firewall table.
func (m *Manager) DropPoolRoute() error { return m.nl.RouteDel(m.poolRoute()) }

// Close releases the Manager's netlink socket. Networks stay as they are.
func (m *Manager) Close() error {
	m.nl.Close()
	return nil
}

// Pool returns the address pool.
func (m *Manager) Pool() *Pool { return m.pool }

// NetnsName returns slot's namespace name, e.g. nullspace-3.
func (m *Manager) NetnsName(slot int) string { return m.netnsPrefix + strconv.Itoa(slot) }

// NetnsPath returns slot's namespace path, e.g. /run/netns/nullspace-3: the
// path to put in the OCI spec's network namespace.
func (m *Manager) NetnsPath(slot int) string { return filepath.Join(NetnsDir, m.NetnsName(slot)) }

// HostInterface returns slot's host-side veth name, e.g. nsv3.
func (m *Manager) HostInterface(slot int) string { return m.vethPrefix + strconv.Itoa(slot) }

// Network describes one machine's network.
type Network struct {
	Slot           int
	NetnsName      string           // nullspace-N
	NetnsPath      string           // /run/netns/nullspace-N
	HostInterface  string           // nsvN, in the root namespace
	GuestInterface string           // eth0, inside the namespace
	Block          netip.Prefix     // the slot's /30
	HostIP         netip.Addr       // .1: the machine's gateway, on HostInterface
	GuestIP        netip.Addr       // .2: the machine's address, on GuestInterface
	GuestMAC       net.HardwareAddr // GuestInterface's MAC
}

// Network returns what Setup builds for slot, without touching the system.
func (m *Manager) Network(slot int) (*Network, error) {
	host, guest, err := m.pool.Addrs(slot)
	if err != nil {
		return nil, err
	}
	block, _ := m.pool.Block(slot)
	return &Network{
		Slot:           slot,
		NetnsName:      m.NetnsName(slot),
		NetnsPath:      m.NetnsPath(slot),
		HostInterface:  m.HostInterface(slot),
		GuestInterface: GuestInterface,
		Block:          block,
		HostIP:         host,
		GuestIP:        guest,
		GuestMAC:       macFor(guest),
	}, nil
}

// SetupOptions tunes one Setup. The zero value is the default.
type SetupOptions struct {
	// MTU of both veth ends. Default 1500.
	MTU int
	// GuestMAC overrides eth0's MAC. Default: derived from the guest IP
	// (02:6e:a:b:c:d), so it is the same every time a slot is set up.
	GuestMAC net.HardwareAddr
}

// Setup builds slot's network: namespace, veth pair, addresses, links up,
// default route. Leftovers of the same slot (from a crash) are removed first.
// If any step fails, everything Setup made is removed before it returns.
func (m *Manager) Setup(ctx context.Context, slot int, opts SetupOptions) (*Network, error) {
	start := time.Now()
	n, err := m.Network(slot)
	if err != nil {
		return nil, fmt.Errorf("set up network for slot %d: %w", slot, err)
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = defaultMTU
	}
	if mtu < 68 || mtu > 65535 {
		return nil, fmt.Errorf("set up network for slot %d: mtu %d is outside 68 to 65535: %w", slot, mtu, errdefs.ErrInvalidArgument)
	}
	if opts.GuestMAC != nil {
		if len(opts.GuestMAC) != 6 || opts.GuestMAC[0]&1 != 0 {
			return nil, fmt.Errorf("set up network for slot %d: guest mac %s is not a unicast ethernet address: %w",
				slot, opts.GuestMAC, errdefs.ErrInvalidArgument)
		}
		n.GuestMAC = slices.Clone(opts.GuestMAC)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("set up network for slot %d: %w", slot, err)
	}

	if err := m.removeLeftovers(ctx, n); err != nil {
		return nil, fmt.Errorf("set up network for slot %d: %w", slot, err)
	}
	if err := m.build(ctx, n, mtu); err != nil {
		if cerr := m.teardown(n.HostInterface, n.NetnsPath); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
		return nil, fmt.Errorf("set up network for slot %d: %w", slot, err)
	}
	m.log.DebugContext(ctx, "machine network set up", "slot", slot, "netns", n.NetnsPath,
		"guest_ip", n.GuestIP, "duration", time.Since(start))
	return n, nil
}

// build does Setup's work. On error the caller removes whatever was made.
func (m *Manager) build(ctx context.Context, n *Network, mtu int) error {
	ns, nsnl, err := createNetns(n.NetnsName)
	if err != nil {
		return fmt.Errorf("create network namespace %s: %w", n.NetnsName, err)
	}
	defer ns.Close()
	defer nsnl.Close()
	if err := m.step(ctx, "netns"); err != nil {
		return err
	}

	veth := &netlink.Veth{
		LinkAttrs:        netlink.NewLinkAttrs(),
		PeerName:         GuestInterface,
		PeerHardwareAddr: n.GuestMAC,
		PeerNamespace:    netlink.NsFd(ns),
	}
	veth.Name = n.HostInterface
	veth.MTU = mtu
	veth.HardwareAddr = macFor(n.HostIP)
	if err := m.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", n.HostInterface, GuestInterface, err)
	}
	if err := m.step(ctx, "veth"); err != nil {
		return err
	}

	// Host side. Settings go in before the link is up: with IPv6 disabled,
	// no link-local address, DAD or router solicitations ever happen on it.
	// arp_ignore/arp_announce keep ARP on the link about the link's own /30.
	for _, s := range []struct{ key, val string }{
		{"ipv6/conf/" + n.HostInterface + "/disable_ipv6", "1"},
		{"ipv4/conf/" + n.HostInterface + "/arp_ignore", "1"},
		{"ipv4/conf/" + n.HostInterface + "/arp_announce", "2"},
	} {
		if err := writeSysctl(s.key, s.val); err != nil {
			return err
		}
	}
	if err := m.nl.AddrAdd(veth, addr(n.HostIP)); err != nil {
		return fmt.Errorf("add %s to %s: %w", n.HostIP, n.HostInterface, err)
	}
	if err := m.nl.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bring %s up: %w", n.HostInterface, err)
	}
	if err := m.step(ctx, "host"); err != nil {
		return err
	}

	// Machine side, through a netlink socket opened inside the namespace.
	eth0, err := nsnl.LinkByName(GuestInterface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", GuestInterface, n.NetnsName, err)
	}
	if err := nsnl.AddrAdd(eth0, addr(n.GuestIP)); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", n.GuestIP, GuestInterface, n.NetnsName, err)
	}
	if err := nsnl.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring %s up in %s: %w", GuestInterface, n.NetnsName, err)
	}
	lo, err := nsnl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", n.NetnsName, err)
	}
	if err := nsnl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up in %s: %w", n.NetnsName, err)
	}
	route := &netlink.Route{
		LinkIndex: eth0.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        n.HostIP.AsSlice(),
	}
	if err := nsnl.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s in %s: %w", n.HostIP, n.NetnsName, err)
	}
	return m.step(ctx, "guest")
}

func (m *Manager) step(ctx context.Context, name string) error {
	if m.hook != nil {
		if err := m.hook(name); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// removeLeftovers removes what a crashed Setup or a missed Teardown left of
// n's slot.
func (m *Manager) removeLeftovers(ctx context.Context, n *Network) error {
	_, err := m.nl.LinkByName(n.HostInterface)
	linkExists := err == nil
	if err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("look up %s: %w", n.HostInterface, err)
	}
	_, err = os.Lstat(n.NetnsPath)
	nsExists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("look up %s: %w", n.NetnsPath, err)
	}
	if !linkExists && !nsExists {
		return nil
	}
	m.log.WarnContext(ctx, "removing leftover machine network", "slot", n.Slot,
		"interface", n.HostInterface, "interface_exists", linkExists, "netns", n.NetnsPath, "netns_exists", nsExists)
	if err := m.teardown(n.HostInterface, n.NetnsPath); err != nil {
		return fmt.Errorf("remove leftovers: %w", err)
	}
	return nil
}

// Teardown removes slot's veth pair and namespace. Missing pieces are not an
// error, so it is safe to call twice or after a partial Setup. It does not
// stop early when ctx is cancelled: a half-removed network helps no one.
func (m *Manager) Teardown(ctx context.Context, slot int) error {
	if slot < 0 {
		return fmt.Errorf("tear down network for slot %d: negative slot: %w", slot, errdefs.ErrInvalidArgument)
	}
	start := time.Now()
	if err := m.teardown(m.HostInterface(slot), m.NetnsPath(slot)); err != nil {
		return fmt.Errorf("tear down network for slot %d: %w", slot, err)
	}
	m.log.DebugContext(ctx, "machine network torn down", "slot", slot, "duration", time.Since(start))
	return nil
}

// teardown deletes the veth pair (deleting one end deletes both, whichever
// namespace the peer is in) and then the namespace's bind mount and file. The
// namespace itself goes away once no process uses it.
func (m *Manager) teardown(ifname, nsPath string) error {
	var errs []error
	if link, err := m.nl.LinkByName(ifname); err == nil {
		if link.Type() != "veth" {
			errs = append(errs, fmt.Errorf("interface %s is a %s, not a veth; remove it by hand: %w",
				ifname, link.Type(), errdefs.ErrConflict))
		} else if err := m.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", ifname, err))
		}
	} else if !isLinkNotFound(err) {
		errs = append(errs, fmt.Errorf("look up %s: %w", ifname, err))
	}
	if err := removeNetns(nsPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// List returns the slots, in order, for which a namespace or a host-side veth
// exists, whether or not they fall inside the pool: after a crash, the caller
// tears down those it has no record of.
func (m *Manager) List() ([]int, error) {
	seen := map[int]bool{}
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	for _, e := range entries {
		if slot, ok := parseSlot(e.Name(), m.netnsPrefix); ok {
			seen[slot] = true
		}
	}
	links, err := m.linkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		if slot, ok := parseSlot(l.Attrs().Name, m.vethPrefix); ok {
			seen[slot] = true
		}
	}
	slots := make([]int, 0, len(seen))
	for s := range seen {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	return slots, nil
}

// linkList dumps the links, retrying when a concurrent change interrupted
// the dump (netlink then returns possibly incomplete results).
func (m *Manager) linkList() ([]netlink.Link, error) {
	for range 5 {
		links, err := m.nl.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return nil, fmt.Errorf("link dump kept being interrupted by concurrent changes: %w", errdefs.ErrUnavailable)
}

// parseSlot parses prefix followed by a slot number in canonical decimal.
func parseSlot(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" || len(rest) > 9 || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	slot, err := strconv.Atoi(rest)
	return slot, err == nil
}

// createNetns creates the named namespace and, from inside it, opens an
// rtnetlink socket bound to it and makes interfaces created there start with
// IPv6 disabled.
func createNetns(name string) (netns.NsHandle, *netlink.Handle, error) {
	ns, h := netns.None(), (*netlink.Handle)(nil)
	err := onNetnsThread(
		func() (err error) {
			// NewNamed switches the thread even when it fails later on.
			ns, err = netns.NewNamed(name)
			return err
		},
		func() (err error) {
			if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
				return fmt.Errorf("open rtnetlink socket: %w", err)
			}
			return writeSysctl("ipv6/conf/default/disable_ipv6", "1")
		})
	if err != nil {
		if h != nil {
			h.Close()
		}
		if ns.IsOpen() {
			ns.Close()
		}
		return netns.None(), nil, err
	}
	return ns, h, nil
}

// Do runs fn on an OS thread that is inside the network namespace at path
// (such as Network.NetnsPath) and returns fn's error. Sockets fn opens stay in
// that namespace and may be used from anywhere afterwards; goroutines fn
// starts do not run in it.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	return onNetnsThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", path, err)
		}
		return nil
	}, fn)
}

// onNetnsThread runs enter, which may switch the thread's network namespace,
// then fn if enter succeeded, on a fresh goroutine locked to its OS thread.
// The thread is switched back to its original namespace before it is
// unlocked; if that fails it stays locked, so the runtime destroys it when
// the goroutine exits instead of running other goroutines in the wrong
// namespace. The caller's own thread never changes namespace.
func onNetnsThread(enter, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		err = enter()
		if err == nil {
			err = fn()
		}
		if rerr := netns.Set(orig); rerr != nil {
			done <- errors.Join(err, fmt.Errorf("switch back to the original network namespace: %w", rerr))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// removeNetns unmounts and removes a named namespace's file. A missing file
// or one that is not mounted (a crash between create and mount) is fine.
func removeNetns(path string) error {
	for range 8 { // a file can be mounted over more than once
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// prepareNetnsDir makes NetnsDir a shared mount point, as iproute2 does, so
// that unmounting a namespace there also unmounts the copies that mount
// namespaces created in the meantime hold (and which would otherwise keep the
// namespace alive).
func prepareNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Not a mount point yet: bind-mount it onto itself and try again.
	if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

// writeSysctl writes a /proc/sys/net key for the calling thread's network
// namespace. IPv6 keys are skipped on kernels without IPv6.
func writeSysctl(key, val string) error {
	path := "/proc/sys/net/" + key
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(key, "ipv6/") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("set %s: %w", path, err)
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("set %s: %w", path, err)
	}
	return nil
}

func addr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(blockBits, 32)}}
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
