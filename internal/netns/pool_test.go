package netns

import (
	"errors"
	"net/netip"
	"testing"

	"nullspace.dev/nullspace/internal/errdefs"
)

func TestNewPool(t *testing.T) {
	tests := []struct {
		cidr     string
		wantSize int
		wantErr  bool
	}{
		{cidr: "10.200.0.0/16", wantSize: 16384},
		{cidr: "10.250.0.0/24", wantSize: 64},
		{cidr: "192.168.7.8/29", wantSize: 2},
		{cidr: "10.0.0.0/8", wantSize: 1 << 22},
		{cidr: "10.0.0.0/30", wantErr: true},         // one slot only
		{cidr: "10.0.0.0/32", wantErr: true},         // no slot
		{cidr: "10.0.0.0/7", wantErr: true},          // too large
		{cidr: "10.200.0.1/16", wantErr: true},       // host bits
		{cidr: "fd00::/64", wantErr: true},           // IPv6
		{cidr: "::ffff:10.0.0.0/104", wantErr: true}, // IPv4-mapped IPv6
		{cidr: "10.200.0.0", wantErr: true},          // no prefix length
		{cidr: "", wantErr: true},
		{cidr: "banana", wantErr: true},
	}
	for _, tt := range tests {
		p, err := NewPool(tt.cidr)
		if tt.wantErr {
			if err == nil {
				t.Errorf("NewPool(%q) = %v, want an error", tt.cidr, p)
			} else if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("NewPool(%q) error %v is not ErrInvalidArgument", tt.cidr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewPool(%q): %v", tt.cidr, err)
			continue
		}
		if got := p.Size(); got != tt.wantSize {
			t.Errorf("NewPool(%q).Size() = %d, want %d", tt.cidr, got, tt.wantSize)
		}
	}
}

func TestPoolAddrs(t *testing.T) {
	p, err := NewPool(DefaultCIDR)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		slot        int
		host, guest string
		block       string
		wantErr     bool
	}{
		{slot: 0, host: "10.200.0.1", guest: "10.200.0.2", block: "10.200.0.0/30"},
		{slot: 1, host: "10.200.0.5", guest: "10.200.0.6", block: "10.200.0.4/30"},
		{slot: 63, host: "10.200.0.253", guest: "10.200.0.254", block: "10.200.0.252/30"},
		{slot: 64, host: "10.200.1.1", guest: "10.200.1.2", block: "10.200.1.0/30"},
		{slot: 16383, host: "10.200.255.253", guest: "10.200.255.254", block: "10.200.255.252/30"},
		{slot: 16384, wantErr: true},
		{slot: -1, wantErr: true},
	}
	for _, tt := range tests {
		host, guest, err := p.Addrs(tt.slot)
		if tt.wantErr {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Addrs(%d) error = %v, want ErrInvalidArgument", tt.slot, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Addrs(%d): %v", tt.slot, err)
			continue
		}
		if host.String() != tt.host || guest.String() != tt.guest {
			t.Errorf("Addrs(%d) = %s, %s, want %s, %s", tt.slot, host, guest, tt.host, tt.guest)
		}
		block, err := p.Block(tt.slot)
		if err != nil || block.String() != tt.block {
			t.Errorf("Block(%d) = %s, %v, want %s", tt.slot, block, err, tt.block)
		}
		slot, err := p.SlotOf(guest)
		if err != nil || slot != tt.slot {
			t.Errorf("SlotOf(%s) = %d, %v, want %d", guest, slot, err, tt.slot)
		}
	}
}

func TestPoolSlotOf(t *testing.T) {
	p, err := NewPool("10.250.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ip      string
		want    int
		wantErr bool
	}{
		{ip: "10.250.0.2", want: 0},
		{ip: "10.250.0.6", want: 1},
		{ip: "10.250.0.254", want: 63},
		{ip: "::ffff:10.250.0.10", want: 2},
		{ip: "10.250.0.1", wantErr: true}, // host side
		{ip: "10.250.0.0", wantErr: true}, // network address
		{ip: "10.250.0.3", wantErr: true}, // broadcast
		{ip: "10.250.1.2", wantErr: true}, // outside
		{ip: "fd00::2", wantErr: true},    // IPv6
	}
	for _, tt := range tests {
		got, err := p.SlotOf(netip.MustParseAddr(tt.ip))
		if tt.wantErr {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("SlotOf(%s) = %d, %v, want ErrInvalidArgument", tt.ip, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("SlotOf(%s) = %d, %v, want %d", tt.ip, got, err, tt.want)
		}
	}
	if _, err := p.SlotOf(netip.Addr{}); err == nil {
		t.Errorf("SlotOf(zero Addr) succeeded, want an error")
	}
}

func TestParseSlot(t *testing.T) {
	tests := []struct {
		name   string
		want   int
		wantOK bool
	}{
		{"nsv0", 0, true},
		{"nsv12", 12, true},
		{"nsv", 0, false},
		{"nsv012", 0, false},
		{"nsv1a", 0, false},
		{"nsv-1", 0, false},
		{"nsvx1", 0, false},
		{"eth0", 0, false},
		{"nsv1234567890", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseSlot(tt.name, "nsv")
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseSlot(%q) = %d, %t, want %d, %t", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestMACFor(t *testing.T) {
	got := macFor(netip.MustParseAddr("10.200.1.2")).String()
	if want := "02:6e:0a:c8:01:02"; got != want {
		t.Errorf("macFor(10.200.1.2) = %s, want %s", got, want)
	}
}
