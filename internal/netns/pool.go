package netns

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"nullspace.dev/nullspace/internal/errdefs"
)

// DefaultCIDR is the address pool used when the operator configures none.
const DefaultCIDR = "10.200.0.0/16"

const (
	blockBits = 30 // every slot owns one /30
	blockSize = 1 << (32 - blockBits)
	minBits   = 8             // larger pools would shadow too much of the address space
	maxBits   = blockBits - 1 // at least two slots
)

// Pool is an IPv4 CIDR cut into /30 blocks, one per slot. Slot N's block
// starts at base+4N; the host side of the machine's veth pair is base+4N+1 and
// the machine side base+4N+2. Pool only does the arithmetic: which slots are
// in use is the caller's bookkeeping. A Pool is immutable and safe for
// concurrent use.
type Pool struct {
	prefix netip.Prefix
	size   int
}

// NewPool parses an IPv4 CIDR such as DefaultCIDR. The prefix must be between
// /8 and /29 and have no host bits set.
func NewPool(cidr string) (*Pool, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("address pool %q is not a CIDR such as %s: %w", cidr, DefaultCIDR, errdefs.ErrInvalidArgument)
	}
	if !p.Addr().Is4() {
		return nil, fmt.Errorf("address pool %q is not IPv4; use an IPv4 CIDR such as %s: %w", cidr, DefaultCIDR, errdefs.ErrInvalidArgument)
	}
	if p.Bits() > maxBits {
		return nil, fmt.Errorf("address pool %q is too small: it holds fewer than two /30 blocks; use a prefix of /%d or shorter: %w",
			cidr, maxBits, errdefs.ErrInvalidArgument)
	}
	if p.Bits() < minBits {
		return nil, fmt.Errorf("address pool %q is too large; use a prefix between /%d and /%d: %w",
			cidr, minBits, maxBits, errdefs.ErrInvalidArgument)
	}
	if m := p.Masked(); m != p {
		return nil, fmt.Errorf("address pool %q has host bits set; did you mean %s: %w", cidr, m, errdefs.ErrInvalidArgument)
	}
	return &Pool{prefix: p, size: 1 << (blockBits - p.Bits())}, nil
}

// Prefix returns the pool's CIDR.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// String returns the pool's CIDR.
func (p *Pool) String() string { return p.prefix.String() }

// Size returns the number of slots: valid slots are 0 to Size()-1.
func (p *Pool) Size() int { return p.size }

// Addrs returns the host-side (gateway) and machine-side addresses of slot.
func (p *Pool) Addrs(slot int) (host, guest netip.Addr, err error) {
	if slot < 0 || slot >= p.size {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("slot %d is outside address pool %s (slots 0 to %d): %w",
			slot, p.prefix, p.size-1, errdefs.ErrInvalidArgument)
	}
	base := p.base() + uint32(slot)*blockSize
	return addrFrom(base + 1), addrFrom(base + 2), nil
}

// Block returns slot's /30.
func (p *Pool) Block(slot int) (netip.Prefix, error) {
	host, _, err := p.Addrs(slot)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(addrFrom(toUint32(host)-1), blockBits), nil
}

// SlotOf returns the slot whose machine-side address is guest.
func (p *Pool) SlotOf(guest netip.Addr) (int, error) {
	guest = guest.Unmap()
	if !guest.Is4() || !p.prefix.Contains(guest) {
		return 0, fmt.Errorf("address %s is not in address pool %s: %w", guest, p.prefix, errdefs.ErrInvalidArgument)
	}
	off := toUint32(guest) - p.base()
	if off%blockSize != 2 {
		return 0, fmt.Errorf("address %s is not a machine address (the machine side is .2 of its /30): %w",
			guest, errdefs.ErrInvalidArgument)
	}
	return int(off / blockSize), nil
}

func (p *Pool) base() uint32 { return toUint32(p.prefix.Addr()) }

func toUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrFrom(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// macFor returns a stable, locally administered unicast MAC for an IPv4
// address: 02:6e followed by the four address bytes. Stable MACs keep neighbour
// caches (the host's and the restored sandbox's) valid across a re-setup of
// the same slot.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x6e, b[0], b[1], b[2], b[3]}
}
