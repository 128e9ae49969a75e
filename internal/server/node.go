package server

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/atomicfile"
	"nullspace.dev/nullspace/internal/hostlock"
)

// A server's host objects (network namespaces, host-side veths, its
// nftables table, the parent cgroup of its machines) are named after its
// node name, so that servers with different node names on one host never
// take each other's objects for orphans. Two locks keep two servers apart:
//
//   - <data dir>/serve.lock, exclusive: one server per data directory.
//   - LockDir/node-<name>.lock, in a registry of live servers: one server per
//     node name, and none whose host object names or address pool (in the
//     same network namespace) would clash with a live server's.
//
// Each lock file holds its holder's record (JSON: pid, start, data dir,
// node, names, pool), which a refused server names in its error.

const (
	// DefaultNodeName is the node name whose host objects carry the names
	// of servers from before node names (nullspace-N, nsvN, table
	// nullspace, cgroup /nullspace).
	DefaultNodeName = "local"
	// DefaultDataDir is the data directory whose default node name is
	// DefaultNodeName.
	DefaultDataDir = "/var/lib/nullspace"
	// LockDir holds the host-wide registry of live servers.
	LockDir = "/run/nullspace"

	nodeNameFile = "node-name"
	dataLockFile = "serve.lock"
	// vethTokenLen bounds the node's part of veth names: "nv" + token +
	// "-" is 8 bytes at most, which leaves the 7 digits of a /8 pool's
	// slots within Linux's 15.
	vethTokenLen = 5
)

var validNodeName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// ValidateNodeName checks a node name: 1 to 32 lower-case letters, digits
// and inner dashes.
func ValidateNodeName(name string) error {
	if !validNodeName.MatchString(name) {
		return fmt.Errorf("--node-name %q: use 1 to 32 lower-case letters, digits and dashes, starting and ending with a letter or digit", name)
	}
	return nil
}

// DefaultHostNames are the names of node DefaultNodeName.
var DefaultHostNames = HostNames{
	NetnsPrefix:   "nullspace-",
	VethPrefix:    "nsv",
	FirewallTable: "nullspace",
	CgroupParent:  "/nullspace",
}

// NodeHostNames returns the host object names of node:
//
//	node     netns prefix    veth prefix   nftables table   cgroup parent
//	local    nullspace-      nsv           nullspace        /nullspace
//	b        nullspace-b-    nvb-          nullspace-b      /nullspace-b
//	node-7   nullspace-node-7-  nv<hash>-  nullspace-node-7 /nullspace-node-7
//
// Veth names are short (Linux allows 15 bytes, the slot number included),
// so a node name longer than 5 bytes or with a dash is replaced there by 5
// characters of its hash. The firewall matches a server's veths by prefix:
// no derived veth prefix is the prefix of another's, nor starts with nsv.
func NodeHostNames(node string) HostNames {
	if node == DefaultNodeName {
		return DefaultHostNames
	}
	return HostNames{
		NetnsPrefix:   "nullspace-" + node + "-",
		VethPrefix:    "nv" + vethToken(node) + "-",
		FirewallTable: "nullspace-" + node,
		CgroupParent:  "/nullspace-" + node,
	}
}

func vethToken(node string) string {
	if len(node) <= vethTokenLen && !strings.Contains(node, "-") {
		return node
	}
	sum := sha256.Sum256([]byte(node))
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:vethTokenLen]
}

// or returns n with its empty fields taken from d.
func (n HostNames) or(d HostNames) HostNames {
	n.NetnsPrefix = orDefault(n.NetnsPrefix, d.NetnsPrefix)
	n.VethPrefix = orDefault(n.VethPrefix, d.VethPrefix)
	n.FirewallTable = orDefault(n.FirewallTable, d.FirewallTable)
	n.CgroupParent = orDefault(n.CgroupParent, d.CgroupParent)
	return n
}

// resolveNodeName returns the data directory's node name: the one given,
// else the one recorded in it, else DefaultNodeName for DefaultDataDir or
// a data directory a server older than node names used (its machines'
// objects carry the default names), else one derived from its path. A
// given name that differs from the recorded one is refused: the machines
// of the data directory carry the recorded one. recordNodeName records it
// once the name is claimed.
func resolveNodeName(dataDir, given string) (string, error) {
	file := filepath.Join(dataDir, nodeNameFile)
	recorded := ""
	if b, err := os.ReadFile(file); err == nil {
		recorded = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read node name: %w", err)
	}
	name := given
	switch {
	case given != "" && recorded != "" && given != recorded:
		return "", fmt.Errorf("--node-name %q: data dir %s belongs to node %q, whose name its machines' network namespaces, interfaces and cgroups carry: "+
			"pass --node-name %s, or, with none of its machines running, remove %s to rename it", given, dataDir, recorded, recorded, file)
	case given != "":
	case recorded != "":
		name = recorded
	default:
		name = derivedNodeName(dataDir)
	}
	if err := ValidateNodeName(name); err != nil {
		return "", fmt.Errorf("node name of data dir %s (recorded in %s): %w", dataDir, file, err)
	}
	return name, nil
}

// recordNodeName records the data directory's node name.
func recordNodeName(dataDir, name string) error {
	file := filepath.Join(dataDir, nodeNameFile)
	if b, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(b)) == name {
		return nil
	}
	if err := atomicfile.Write(file, []byte(name+"\n"), 0o644); err != nil {
		return fmt.Errorf("record node name: %w", err)
	}
	return nil
}

// derivedNodeName is a data directory's default node name: DefaultNodeName
// for DefaultDataDir and for directories that already hold a database;
// otherwise its base name (sanitised, at most 20 bytes) and 6 hex digits
// of its path's hash, e.g. "srv-a-1f3c9e" for /data/srv-a.
func derivedNodeName(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = filepath.Clean(dataDir)
	}
	if abs == DefaultDataDir {
		return DefaultNodeName
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	if _, err := os.Stat(filepath.Join(abs, "nullspace.db")); err == nil {
		return DefaultNodeName
	}
	var b strings.Builder
	for _, r := range strings.ToLower(filepath.Base(abs)) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	base := strings.Trim(b.String(), "-")
	if len(base) > 20 {
		base = strings.TrimRight(base[:20], "-")
	}
	if base == "" {
		base = "node"
	}
	sum := sha256.Sum256([]byte(abs))
	return base + "-" + hex.EncodeToString(sum[:3])
}

// holder is the record in a server's lock files.
type holder struct {
	PID         int       `json:"pid"`
	Started     time.Time `json:"started"`
	DataDir     string    `json:"data_dir"`
	Node        string    `json:"node,omitempty"`
	Names       HostNames `json:"names"`
	NetworkCIDR string    `json:"network_cidr,omitempty"`
	// NetNS is the server's network namespace (/proc/self/ns/net): its
	// routes are the namespace's, so pools clash only within one.
	NetNS string `json:"netns,omitempty"`
}

func (h holder) String() string {
	s := fmt.Sprintf("nullspace serve pid %d", h.PID)
	if h.Node != "" {
		s += fmt.Sprintf(", node %q", h.Node)
	}
	return s + ", data dir " + h.DataDir
}

func parseHolder(b []byte) (holder, bool) {
	var h holder
	return h, len(b) > 0 && json.Unmarshal(b, &h) == nil && h.PID > 0
}

// hostLocks are the locks a running server holds.
type hostLocks struct {
	dataDir, node *hostlock.Lock
}

func (l *hostLocks) Close() error {
	return errors.Join(l.node.Close(), l.dataDir.Close())
}

// lockDataDir takes the data directory's exclusive lock.
func lockDataDir(dataDir string, self holder) (*hostlock.Lock, error) {
	rec, _ := json.Marshal(self)
	l, err := hostlock.Acquire(filepath.Join(dataDir, dataLockFile), append(rec, '\n'))
	var held *hostlock.HeldError
	if errors.As(err, &held) {
		who := "another nullspace serve"
		if h, ok := parseHolder(held.Record); ok {
			who = fmt.Sprintf("nullspace serve pid %d (started %s)", h.PID, h.Started.Local().Format(time.DateTime))
		}
		return nil, fmt.Errorf("data dir %s is in use by %s: stop it first, or give this server its own --data-dir", dataDir, who)
	}
	return l, err
}

// claimNode registers self in the host's registry of live servers, unless
// another live server has its node name, host object names that clash
// with its own, or an address pool that overlaps its own in the same
// network namespace.
func claimNode(dir string, self holder) (*hostlock.Lock, error) {
	rec, _ := json.Marshal(self)
	mine, err := netip.ParsePrefix(self.NetworkCIDR)
	mine = mine.Masked()
	if err != nil {
		return nil, fmt.Errorf("--network-cidr %q: %w", self.NetworkCIDR, err)
	}
	reg := hostlock.Registry{Dir: dir}
	l, err := reg.Claim("node-"+self.Node, append(rec, '\n'), func(records [][]byte) error {
		var live []holder
		for _, r := range records {
			if h, ok := parseHolder(r); ok {
				live = append(live, h)
			}
		}
		for _, h := range live {
			if what := clash(self.Names, h.Names); what != "" {
				return fmt.Errorf("node %q's host objects clash with those of %s: %s; give this server another --node-name", self.Node, h, what)
			}
		}
		for _, h := range live {
			theirs, err := netip.ParsePrefix(h.NetworkCIDR)
			if err != nil || h.NetNS != self.NetNS || !mine.Overlaps(theirs) {
				continue
			}
			return fmt.Errorf("--network-cidr %s overlaps %s of %s in the same network namespace (each pool is routed on the host): "+
				"give this server a pool of its own, e.g. --network-cidr %s", mine, theirs, h, freePool(mine, live, self.NetNS))
		}
		return nil
	})
	var held *hostlock.HeldError
	if errors.As(err, &held) {
		who := "another nullspace serve"
		if h, ok := parseHolder(held.Record); ok {
			who = h.String()
		}
		return nil, fmt.Errorf("node name %q is in use on this host by %s: give this server another --node-name", self.Node, who)
	}
	return l, err
}

// clash says how two servers' host object names would make one take the
// other's objects for its own, or "".
func clash(a, b HostNames) string {
	switch {
	case slotNamesOverlap(a.NetnsPrefix, b.NetnsPrefix):
		return fmt.Sprintf("network namespaces %sN and %sN", a.NetnsPrefix, b.NetnsPrefix)
	case strings.HasPrefix(a.VethPrefix, b.VethPrefix) || strings.HasPrefix(b.VethPrefix, a.VethPrefix):
		// The firewall matches machine traffic by the prefix alone.
		return fmt.Sprintf("interfaces %sN and %sN", a.VethPrefix, b.VethPrefix)
	case a.FirewallTable == b.FirewallTable:
		return fmt.Sprintf("nftables table %s", a.FirewallTable)
	case cgroupNested(a.CgroupParent, b.CgroupParent):
		return fmt.Sprintf("cgroups %s and %s", a.CgroupParent, b.CgroupParent)
	}
	return ""
}

// slotNamesOverlap says whether some prefix+N of one is also the other's
// prefix+M: a server lists its slots as its prefix and a number.
func slotNamesOverlap(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	if !strings.HasPrefix(b, a) {
		return false
	}
	return strings.Trim(b[len(a):], "0123456789") == ""
}

func cgroupNested(a, b string) bool {
	a, b = filepath.Clean("/"+a), filepath.Clean("/"+b)
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}

// freePool suggests a pool of mine's size in 10.0.0.0/8 that overlaps no
// live server's in netns.
func freePool(mine netip.Prefix, live []holder, netns string) string {
	bits := max(mine.Bits(), 8)
	step := 1 << (32 - bits)
	start := netip.MustParseAddr("10.201.0.0").As4()
	first := int(start[0])<<24 | int(start[1])<<16 | int(start[2])<<8 | int(start[3])
	for a := first; a < 11<<24; a += step {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits).Masked()
		free := !p.Overlaps(mine)
		for _, h := range live {
			if theirs, err := netip.ParsePrefix(h.NetworkCIDR); err == nil && h.NetNS == netns && p.Overlaps(theirs) {
				free = false
			}
		}
		if free {
			return p.String()
		}
	}
	return "a /16 of your own"
}

// netNS names the calling process's network namespace, "" if unknown.
func netNS() string {
	s, _ := os.Readlink("/proc/self/ns/net")
	return s
}
