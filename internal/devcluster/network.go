package devcluster

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/internal/errdefs"
)

// netnsDir is where named network namespaces are bind-mounted, as by
// `ip netns add`; a variable for nothing but clarity in tests.
const netnsDir = "/run/netns"

// setupNetwork builds the bridge with the subnet's .1 and, for each node,
// a namespace and a veth pair: the host end on the bridge, the other end
// eth0 in the namespace with the node's address, lo up, and a default
// route via the bridge. On error the caller removes what was made.
func setupNetwork(l layout) error {
	if err := checkSubnetFree(l.subnet); err != nil {
		return err
	}
	if err := prepareNetnsDir(); err != nil {
		return fmt.Errorf("devcluster: prepare %s: %w", netnsDir, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.NewLinkAttrs()}
	br.Name = l.bridge()
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("devcluster: create bridge %s: %w", br.Name, err)
	}
	if err := netlink.AddrAdd(br, prefixAddr(bridgeIP(l.subnet), l.subnet.Bits())); err != nil {
		return fmt.Errorf("devcluster: add %s to %s: %w", bridgeIP(l.subnet), br.Name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("devcluster: bring %s up: %w", br.Name, err)
	}
	for i := 1; i <= l.o.Nodes; i++ {
		if err := setupNode(l, br, i); err != nil {
			return fmt.Errorf("devcluster: network of node %d: %w", i, err)
		}
	}
	return nil
}

func setupNode(l layout, br *netlink.Bridge, i int) error {
	name := l.netns(i)
	if err := createNetns(name); err != nil {
		return fmt.Errorf("create network namespace %s: %w", name, err)
	}
	ns, err := netns.GetFromPath(l.netnsPath(i))
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
	veth.Name = l.hostVeth(i)
	veth.MasterIndex = br.Attrs().Index
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/eth0: %w", veth.Name, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bring %s up: %w", veth.Name, err)
	}

	// Inside, through a netlink socket opened in the namespace: this
	// goroutine's thread never changes namespace.
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open rtnetlink socket in %s: %w", name, err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", name, err)
	}
	if err := h.AddrAdd(eth0, prefixAddr(nodeIP(l.subnet, i), l.subnet.Bits())); err != nil {
		return fmt.Errorf("add %s to eth0 in %s: %w", nodeIP(l.subnet, i), name, err)
	}
	for _, link := range []string{"lo", "eth0"} {
		lk, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", link, name, err)
		}
		if err := h.LinkSetUp(lk); err != nil {
			return fmt.Errorf("bring %s up in %s: %w", link, name, err)
		}
	}
	// Traffic beyond the subnet (a node's machines going to the internet)
	// leaves by the host, which forwards it only if the host itself was
	// set up to: the cluster does not turn forwarding on.
	route := &netlink.Route{
		LinkIndex: eth0.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        bridgeIP(l.subnet).AsSlice(),
	}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s in %s: %w", bridgeIP(l.subnet), name, err)
	}
	return nil
}

// checkSubnetFree fails when an address of the host is in subnet: the
// bridge's route would then fight another interface's (another cluster,
// a VPN), and the error says to pick another Subnet.
func checkSubnetFree(subnet netip.Prefix) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("devcluster: list the host's addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if p := netip.PrefixFrom(ip, ones).Masked(); p.Overlaps(subnet) {
			dev := "an interface"
			if link, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				dev = link.Attrs().Name
			}
			return fmt.Errorf("devcluster: subnet %s overlaps %s on %s (another cluster?): pass another subnet: %w",
				subnet, p, dev, errdefs.ErrConflict)
		}
	}
	return nil
}

// Partition sets node i's host-side veth down: the node loses PostgreSQL,
// the object store and its peers, and they lose it, until Heal.
func (c *Cluster) Partition(i int) error {
	if err := c.checkIndex(i); err != nil {
		return err
	}
	return setVeth(c.l.hostVeth(i), false)
}

// Heal undoes Partition.
func (c *Cluster) Heal(i int) error {
	if err := c.checkIndex(i); err != nil {
		return err
	}
	return setVeth(c.l.hostVeth(i), true)
}

func setVeth(name string, up bool) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("devcluster: find %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(link)
	} else {
		err = netlink.LinkSetDown(link)
	}
	if err != nil {
		return fmt.Errorf("devcluster: set %s up=%v: %w", name, up, err)
	}
	return nil
}

// ownObject reports whether a link or namespace name is one of cluster
// name's: <name>-br, <name>-v<N>, <name>-n<N>.
func ownObject(name, obj string) bool {
	rest, ok := strings.CutPrefix(obj, name+"-")
	if !ok {
		return false
	}
	if rest == "br" {
		return true
	}
	if len(rest) < 2 || (rest[0] != 'v' && rest[0] != 'n') {
		return false
	}
	n, err := strconv.Atoi(rest[1:])
	return err == nil && n >= 1 && strconv.Itoa(n) == rest[1:]
}

// removeNetwork deletes cluster name's veths (each takes its peer along),
// namespaces and bridge. Missing pieces are fine, so it is idempotent.
func removeNetwork(name string, log *slog.Logger) error {
	var errs []error
	links, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("devcluster: list links: %w", err))
	}
	// Veths before the bridge they are attached to.
	for _, kind := range []string{"veth", "bridge"} {
		for _, link := range links {
			a := link.Attrs()
			if link.Type() != kind || !ownObject(name, a.Name) {
				continue
			}
			if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("devcluster: delete %s: %w", a.Name, err))
				continue
			}
			log.Debug("removed link", "link", a.Name)
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("devcluster: list %s: %w", netnsDir, err))
	}
	for _, e := range entries {
		if !ownObject(name, e.Name()) {
			continue
		}
		if err := removeNetns(filepath.Join(netnsDir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("devcluster: %w", err))
			continue
		}
		log.Debug("removed network namespace", "netns", e.Name())
	}
	return errors.Join(errs...)
}

// createNetns creates the named namespace (bind-mounted at
// /run/netns/name) on a thread of its own, which is switched back before
// it is unlocked, or is left locked, so that the runtime throws it away,
// if it cannot be.
func createNetns(name string) error {
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
		// NewNamed switches the thread even when it fails later on.
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			done <- errors.Join(err, fmt.Errorf("switch back to the original network namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// removeNetns unmounts and removes a named namespace's file; the
// namespace goes once no process is in it.
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

// prepareNetnsDir makes /run/netns a shared mount point, as iproute2 and
// internal/netns do, so that removing a namespace there also unmounts the
// copies that mount namespaces made meanwhile hold.
func prepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

func prefixAddr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
}
