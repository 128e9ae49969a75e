package server

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/netns"
	"nullspace.dev/nullspace/internal/netns/firewall"
)

// network joins the namespace manager and the firewall into the machine
// manager's Network.
type network struct {
	ns *netns.Manager
	fw *firewall.Firewall
}

var _ machine.Network = (*network)(nil)

func newNetwork(cfg Config, logger *slog.Logger) (*network, error) {
	ns, err := netns.New(netns.Config{
		CIDR: cfg.NetworkCIDR, NetnsPrefix: cfg.Names.NetnsPrefix, VethPrefix: cfg.Names.VethPrefix, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	opts := []firewall.Option{firewall.WithLogger(logger)}
	if cfg.Names.FirewallTable != "" {
		opts = append(opts, firewall.WithTable(cfg.Names.FirewallTable))
	}
	if cfg.Names.VethPrefix != "" {
		opts = append(opts, firewall.WithInterfacePrefix(cfg.Names.VethPrefix))
	}
	fw, err := firewall.Init(cfg.AllowInternet, opts...)
	if err != nil {
		ns.Close()
		return nil, err
	}
	return &network{ns: ns, fw: fw}, nil
}

func (n *network) Setup(ctx context.Context, slot int) (machine.NetInfo, error) {
	nw, err := n.ns.Setup(ctx, slot, netns.SetupOptions{})
	if err != nil {
		return machine.NetInfo{}, err
	}
	return machine.NetInfo{NetnsPath: nw.NetnsPath, HostIP: nw.HostIP, GuestIP: nw.GuestIP}, nil
}

func (n *network) Teardown(ctx context.Context, slot int) error { return n.ns.Teardown(ctx, slot) }

func (n *network) SetInternet(ip netip.Addr, allow bool) error {
	if allow {
		return n.fw.AllowInternet(ip)
	}
	return n.fw.RevokeInternet(ip)
}

func (n *network) Slots() int { return n.ns.Pool().Size() }

func (n *network) GuestIP(slot int) (netip.Addr, error) {
	_, guest, err := n.ns.Pool().Addrs(slot)
	return guest, err
}

func (n *network) Existing() ([]int, error) { return n.ns.List() }

func (n *network) Close() error { return n.ns.Close() }

// Counters returns the bytes a slot's machine received and sent: the host
// side of its veth pair counts them the other way round.
func (n *network) Counters(slot int) (rx, tx uint64, err error) {
	dir := "/sys/class/net/" + n.ns.HostInterface(slot) + "/statistics/"
	hostTx, err := readCounter(dir + "tx_bytes")
	if err != nil {
		return 0, 0, err
	}
	hostRx, err := readCounter(dir + "rx_bytes")
	if err != nil {
		return 0, 0, err
	}
	return hostTx, hostRx, nil
}

func readCounter(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
