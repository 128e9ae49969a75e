// Package firewall keeps the host's nftables rules for machine networks.
//
// It owns one table, family inet, named nullspace by default, and programs it
// over netlink (no nft binary). Machine traffic is recognised by the input
// interface: the host-side veths, nsv* (see package netns). The table, as nft
// would print it (the nat chain and the @internet accept only when the
// operator allows internet):
//
//	table inet nullspace {
//	    set internet { type ipv4_addr; }
//	    chain prerouting { type filter hook prerouting priority raw; policy accept;
//	        iifname "nsv*" fib saddr . iif oif missing drop          # no spoofed sources
//	        iifname "nsv*" ip saddr @internet accept                 # internet, per machine
//	        iifname "nsv*" fib daddr type != { local, broadcast, multicast } meta l4proto tcp reject with tcp reset
//	        iifname "nsv*" fib daddr type != { local, broadcast, multicast } reject   # nothing else leaves, at once
//	    }
//	    chain input { type filter hook input priority filter; policy accept;
//	        iifname "nsv*" ct state established,related accept      # replies to the host's own connections
//	        iifname "nsv*" meta l4proto tcp reject with tcp reset   # machines never reach host services...
//	        iifname "nsv*" reject                                   # ...and fail fast (ICMP port unreachable)
//	    }
//	    chain forward { type filter hook forward priority filter; policy accept;
//	        oifname "nsv*" ct state established,related accept
//	        iifname "nsv*" oifname "nsv*" drop                      # machines never reach each other
//	        oifname "nsv*" drop                                     # nor does anyone else, except the host itself
//	        iifname "nsv*" ip daddr 169.254.0.0/16 reject           # nor link-local (cloud metadata services)
//	        iifname "nsv*" ip saddr @internet accept                # internet, per machine
//	        iifname "nsv*" meta l4proto tcp reject with tcp reset
//	        iifname "nsv*" reject
//	    }
//	    chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	        ip saddr @internet oifname != "nsv*" masquerade
//	    }
//	}
//
// Rejecting rather than dropping makes a machine's connection attempts (a
// DNS query to the gateway, a download without internet) fail at once
// instead of after a timeout. Init replaces the whole table in one
// transaction, so it is idempotent and never leaves a half-built table.
package firewall

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/netns"
)

const (
	// DefaultTable is the production table name.
	DefaultTable = "nullspace"
	// InternetSet is the set of machine IPs allowed out to the internet.
	InternetSet = "internet"

	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

// Option configures Init.
type Option func(*options)

type options struct {
	table  string
	prefix string
	log    *slog.Logger
}

// WithTable sets the table name. Default DefaultTable. Tests use their own
// so they never touch a running server's table.
func WithTable(name string) Option { return func(o *options) { o.table = name } }

// WithInterfacePrefix sets the host-side veth prefix that marks machine
// traffic. It must match the netns Manager's. Default netns.DefaultVethPrefix.
func WithInterfacePrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithLogger sets the logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Firewall is the installed table. Its methods are safe for concurrent use.
type Firewall struct {
	table         *nftables.Table
	set           *nftables.Set
	prefix        string
	allowInternet bool
	log           *slog.Logger

	mu   sync.Mutex // serialises batches: a Conn buffers messages until Flush
	conn *nftables.Conn
}

// Init installs the table, replacing any previous version atomically, and
// returns the Firewall. allowInternet is the operator's switch: when false
// no machine can reach the internet whatever AllowInternet is asked, and
// net.ipv4.ip_forward is left alone; when true Init enables ip_forward and
// machines whose IP is in the internet set get out through masquerade.
//
// The internet set starts empty: after a server restart the caller allows
// again the running machines that have internet. A slot reused after a crash
// therefore never inherits its previous owner's access.
func Init(allowInternet bool, opts ...Option) (*Firewall, error) {
	o := options{table: DefaultTable, prefix: netns.DefaultVethPrefix}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.table == "" || len(o.table) > unix.NFT_NAME_MAXLEN-1 || strings.ContainsRune(o.table, 0) {
		return nil, fmt.Errorf("init firewall: table name %q must be 1 to %d bytes: %w", o.table, unix.NFT_NAME_MAXLEN-1, errdefs.ErrInvalidArgument)
	}
	if o.prefix == "" || len(o.prefix) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("init firewall: interface prefix %q must be 1 to %d bytes: %w", o.prefix, unix.IFNAMSIZ-1, errdefs.ErrInvalidArgument)
	}
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("init firewall: open nftables netlink socket: %w", err)
	}
	table := &nftables.Table{Name: o.table, Family: nftables.TableFamilyINet}
	f := &Firewall{
		table:         table,
		set:           &nftables.Set{Table: table, Name: InternetSet, KeyType: nftables.TypeIPAddr},
		prefix:        o.prefix,
		allowInternet: allowInternet,
		log:           o.log,
		conn:          conn,
	}
	if err := f.install(); err != nil {
		return nil, fmt.Errorf("init firewall: install table inet %s: %w", o.table, err)
	}
	if allowInternet {
		if err := enableIPForward(f.log); err != nil {
			return nil, fmt.Errorf("init firewall: %w", err)
		}
	}
	f.log.Info("firewall installed", "table", o.table, "interface_prefix", o.prefix, "allow_internet", allowInternet)
	return f, nil
}

// InternetAllowed reports the operator's switch given to Init.
func (f *Firewall) InternetAllowed() bool { return f.allowInternet }

// AllowInternet lets the machine at ip reach the internet. It fails with
// code internet_not_allowed when the operator has not allowed internet.
// Allowing an IP twice is fine.
func (f *Firewall) AllowInternet(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.Is4() {
		return fmt.Errorf("allow internet for %s: not an IPv4 address: %w", ip, errdefs.ErrInvalidArgument)
	}
	if !f.allowInternet {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeInternetNotAllowed,
			"outbound internet access is disabled on this server",
			"create the machine without internet access, or ask the operator to allow internet for machines")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.conn.SetAddElements(f.set, []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return fmt.Errorf("allow internet for %s: %w", ip, err)
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("allow internet for %s: add to set %s: %w", ip, InternetSet, err)
	}
	return nil
}

// RevokeInternet takes the machine at ip off the internet. Revoking an IP
// that is not allowed is fine. Connections already established stay up until
// they close; new ones are refused.
func (f *Firewall) RevokeInternet(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.Is4() {
		return fmt.Errorf("revoke internet for %s: not an IPv4 address: %w", ip, errdefs.ErrInvalidArgument)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.conn.SetDeleteElements(f.set, []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return fmt.Errorf("revoke internet for %s: %w", ip, err)
	}
	if err := f.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("revoke internet for %s: delete from set %s: %w", ip, InternetSet, err)
	}
	return nil
}

// InternetIPs returns the IPs currently allowed out to the internet.
func (f *Firewall) InternetIPs() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	elems, err := f.conn.GetSetElements(f.set)
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", InternetSet, err)
	}
	ips := make([]netip.Addr, 0, len(elems))
	for _, e := range elems {
		if ip, ok := netip.AddrFromSlice(e.Key); ok {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// Remove deletes the table: machines lose their isolation and internet.
// It is for uninstalling and for tests, never for server shutdown (machines
// outlive the server). Removing a missing table is fine.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn.DelTable(f.table)
	if err := f.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove firewall table inet %s: %w", f.table.Name, err)
	}
	return nil
}

// install builds the table in one batch: add (so the delete cannot fail),
// delete, add again with everything in it. The kernel applies a batch
// atomically, so packets see either the old table or the new one.
func (f *Firewall) install() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, t := f.conn, f.table
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	if err := c.AddSet(f.set, nil); err != nil {
		return fmt.Errorf("add set %s: %w", InternetSet, err)
	}

	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: concat(exprs...)})
	}
	fromMachine := ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, f.prefix)
	toMachine := ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, f.prefix)
	notToMachine := ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, f.prefix)
	tcp := l4proto(unix.IPPROTO_TCP)

	pre := chain("prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	rule(pre, fromMachine, noReversePath(), verdict(expr.VerdictDrop))
	// What a machine without internet sends past the host is refused here,
	// before routing: with forwarding off on its interface (the host's
	// default, left alone when the operator disallows internet) the kernel
	// drops it silently before the forward chain, and a connection hangs
	// until its timeout.
	if f.allowInternet {
		rule(pre, fromMachine, ipv4(), saddrInSet(f.set), verdict(expr.VerdictAccept))
	}
	rule(pre, fromMachine, notForHost(), tcp, tcpReset())
	rule(pre, fromMachine, notForHost(), portUnreachable())

	in := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	rule(in, fromMachine, establishedOrRelated(), verdict(expr.VerdictAccept))
	rule(in, fromMachine, tcp, tcpReset())
	rule(in, fromMachine, portUnreachable())

	fwd := chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	rule(fwd, toMachine, establishedOrRelated(), verdict(expr.VerdictAccept))
	rule(fwd, fromMachine, toMachine, verdict(expr.VerdictDrop))
	rule(fwd, toMachine, verdict(expr.VerdictDrop))
	if f.allowInternet {
		rule(fwd, fromMachine, ipv4(), daddrIn(netip.MustParsePrefix("169.254.0.0/16")), portUnreachable())
		rule(fwd, fromMachine, ipv4(), saddrInSet(f.set), verdict(expr.VerdictAccept))
	}
	rule(fwd, fromMachine, tcp, tcpReset())
	rule(fwd, fromMachine, portUnreachable())

	if f.allowInternet {
		post := chain("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
		rule(post, ipv4(), saddrInSet(f.set), notToMachine, []expr.Any{&expr.Masq{}})
	}
	return c.Flush()
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifname matches an interface name by prefix: comparing only the prefix's
// bytes, without the terminating NUL, is how nft implements "nsv*".
func ifname(key expr.MetaKey, op expr.CmpOp, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(prefix)},
	}
}

func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// ipv4 guards IPv4 header matches: an inet table sees IPv6 packets too.
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

func establishedOrRelated() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// noReversePath matches packets whose source address is not routed back
// through the interface they came in on: "fib saddr . iif oif missing".
func noReversePath() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// notForHost matches packets the host would not take in itself: "fib
// daddr type != { local, broadcast, multicast }".
func notForHost() []expr.Any {
	out := []expr.Any{&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}}
	for _, typ := range []uint32{unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_MULTICAST} {
		out = append(out, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(typ)})
	}
	return out
}

func saddrInSet(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

func daddrIn(p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func verdict(kind expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: kind}} }

func tcpReset() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
}

func portUnreachable() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}
}

// enableIPForward turns on IPv4 forwarding, which masquerading machines out
// needs. It writes only when needed: a write that changes the value also
// resets per-interface forwarding settings.
func enableIPForward(log *slog.Logger) error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip forwarding: write %s: %w", ipForwardPath, err)
	}
	log.Info("enabled net.ipv4.ip_forward for machine internet access")
	return nil
}
