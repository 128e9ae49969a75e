package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNodeHostNames(t *testing.T) {
	tests := []struct {
		node string
		want HostNames
	}{
		{"local", HostNames{"nullspace-", "nsv", "nullspace", "/nullspace"}},
		{"b", HostNames{"nullspace-b-", "nvb-", "nullspace-b", "/nullspace-b"}},
		{"node1", HostNames{"nullspace-node1-", "nvnode1-", "nullspace-node1", "/nullspace-node1"}},
		{"node-1", HostNames{"nullspace-node-1-", "nv" + vethToken("node-1") + "-", "nullspace-node-1", "/nullspace-node-1"}},
	}
	for _, tc := range tests {
		if got := NodeHostNames(tc.node); got != tc.want {
			t.Errorf("NodeHostNames(%q): got %+v, want %+v", tc.node, got, tc.want)
		}
	}
	// Every derived name is valid for a /8 pool (7-digit slots) and clashes
	// with neither today's names, nor the tests' and benchmarks'.
	others := []HostNames{DefaultHostNames,
		{"nse2e-", "nse", "nullspace_e2e", "/nullspace-e2e"},
		{"nsbench-", "nsb", "nullspace_bench", "/nullspace-bench"},
		{"nstest-", "nst", "nullspace_test", "/nullspace-test"},
	}
	nodes := []string{"b", "node1", "node-1", "a-much-longer-node-name-of-32-ch", "0", "12345", "123456"}
	for i, node := range nodes {
		n := NodeHostNames(node)
		if l := len(n.VethPrefix) + len("4194303"); l > unix.IFNAMSIZ-1 {
			t.Errorf("node %q: veth names of %d bytes, Linux allows %d", node, l, unix.IFNAMSIZ-1)
		}
		if vethToken(node) != vethToken(node) || len(vethToken(node)) > vethTokenLen {
			t.Errorf("node %q: veth token %q is not stable or too long", node, vethToken(node))
		}
		for _, o := range others {
			if c := clash(n, o); c != "" {
				t.Errorf("node %q clashes with %+v: %s", node, o, c)
			}
		}
		for _, other := range nodes[i+1:] {
			if c := clash(n, NodeHostNames(other)); c != "" {
				t.Errorf("nodes %q and %q clash: %s", node, other, c)
			}
		}
	}
}

func TestValidateNodeName(t *testing.T) {
	for _, ok := range []string{"local", "b", "0", "node-1", strings.Repeat("a", 32)} {
		if err := ValidateNodeName(ok); err != nil {
			t.Errorf("ValidateNodeName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "Node", "a_b", "a.b", "a/b", strings.Repeat("a", 33)} {
		if err := ValidateNodeName(bad); err == nil {
			t.Errorf("ValidateNodeName(%q): got no error", bad)
		}
	}
}

func TestClash(t *testing.T) {
	x := HostNames{"nsx-", "nsx", "nullspace_x", "/nullspace-x"}
	apart := HostNames{"nsy-", "nsy", "nullspace_y", "/nullspace-y"}
	with := func(f func(*HostNames)) HostNames {
		n := apart
		f(&n)
		return n
	}
	tests := []struct {
		name  string
		other HostNames
		clash bool
	}{
		{"apart", apart, false},
		{"same netns prefix", with(func(n *HostNames) { n.NetnsPrefix = "nsx-" }), true},
		{"netns prefix plus digits", with(func(n *HostNames) { n.NetnsPrefix = "nsx-1" }), true},
		{"netns prefix plus letters", with(func(n *HostNames) { n.NetnsPrefix = "nsx-a-" }), false},
		{"veth prefix of the other's", with(func(n *HostNames) { n.VethPrefix = "nsxa-" }), true},
		{"same table", with(func(n *HostNames) { n.FirewallTable = "nullspace_x" }), true},
		{"nested cgroup", with(func(n *HostNames) { n.CgroupParent = "/nullspace-x/y" }), true},
		{"sibling cgroup", with(func(n *HostNames) { n.CgroupParent = "/nullspace-xy" }), false},
	}
	for _, tc := range tests {
		if got := clash(x, tc.other) != ""; got != tc.clash {
			t.Errorf("%s: clash(%+v, %+v): got %v, want %v", tc.name, x, tc.other, got, tc.clash)
		}
	}
}

func TestResolveNodeName(t *testing.T) {
	dir := t.TempDir()
	fresh := filepath.Join(dir, "Srv A")
	os.Mkdir(fresh, 0o700)
	got, err := resolveNodeName(fresh, "")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := resolveNodeName(fresh, "other"); err != nil || n != "other" {
		t.Errorf("another name given before any was recorded: got %q, %v", n, err)
	}
	if err := recordNodeName(fresh, got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "srv-a-") || len(got) != len("srv-a-")+6 {
		t.Errorf("derived node name of %s: got %q, want srv-a- and 6 hex digits", fresh, got)
	}
	if again, _ := resolveNodeName(fresh, ""); again != got {
		t.Errorf("second resolve: got %q, want the recorded %q", again, got)
	}
	if _, err := resolveNodeName(fresh, "other"); err == nil || !strings.Contains(err.Error(), got) {
		t.Errorf("a given name that differs from the recorded one: got %v, want a refusal naming %q", err, got)
	}
	if n, err := resolveNodeName(fresh, got); err != nil || n != got {
		t.Errorf("the recorded name given: got %q, %v", n, err)
	}

	// A data dir an older server used keeps today's names.
	old := filepath.Join(dir, "old")
	os.Mkdir(old, 0o700)
	os.WriteFile(filepath.Join(old, "nullspace.db"), nil, 0o600)
	if n, _ := resolveNodeName(old, ""); n != DefaultNodeName {
		t.Errorf("data dir with a database and no node name: got %q, want %q", n, DefaultNodeName)
	}

	given := filepath.Join(dir, "given")
	os.Mkdir(given, 0o700)
	if n, _ := resolveNodeName(given, "b"); n != "b" {
		t.Errorf("given name: got %q, want b", n)
	}
	recordNodeName(given, "b")
	if b, _ := os.ReadFile(filepath.Join(given, nodeNameFile)); string(b) != "b\n" {
		t.Errorf("recorded: got %q, want b", b)
	}
	if got := derivedNodeName(DefaultDataDir); got != DefaultNodeName {
		t.Errorf("derivedNodeName(%s): got %q, want %q", DefaultDataDir, got, DefaultNodeName)
	}
}

func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	first := holder{PID: 4242, Started: time.Now(), DataDir: dir}
	l, err := lockDataDir(dir, first)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir, holder{PID: os.Getpid(), DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "pid 4242") {
		t.Fatalf("second lock of the data dir: got %v, want a refusal naming pid 4242", err)
	}
	l.Close()
	l, err = lockDataDir(dir, holder{PID: os.Getpid(), DataDir: dir})
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l.Close()
}

func TestClaimNode(t *testing.T) {
	reg := t.TempDir()
	a := holder{PID: 1001, DataDir: "/data/a", Node: "a", Names: NodeHostNames("a"), NetworkCIDR: "10.210.0.0/16", NetNS: "net:[1]"}
	la, err := claimNode(reg, a)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	tests := []struct {
		name string
		h    holder
		want string // in the refusal; "" for none
	}{
		{"same node name", holder{Node: "a", Names: NodeHostNames("b"), NetworkCIDR: "10.211.0.0/16"}, `node name "a" is in use on this host by nullspace serve pid 1001, node "a", data dir /data/a`},
		{"same names", holder{Node: "b", Names: a.Names, NetworkCIDR: "10.211.0.0/16"}, "pid 1001"},
		{"overlapping pool", holder{Node: "b", Names: NodeHostNames("b"), NetworkCIDR: "10.210.128.0/17", NetNS: "net:[1]"}, "--network-cidr 10.210.128.0/17 overlaps 10.210.0.0/16 of nullspace serve pid 1001"},
		{"overlapping pool in another netns", holder{Node: "b", Names: NodeHostNames("b"), NetworkCIDR: "10.210.0.0/16", NetNS: "net:[2]"}, ""},
		{"apart", holder{Node: "b", Names: NodeHostNames("b"), NetworkCIDR: "10.211.0.0/16", NetNS: "net:[1]"}, ""},
	}
	for _, tc := range tests {
		tc.h.PID, tc.h.DataDir = 2002, "/data/b"
		l, err := claimNode(reg, tc.h)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want a refusal with %q", tc.name, err, tc.want)
		}
		if err == nil {
			l.Close()
		}
	}
	// The suggested pool is free.
	_, err = claimNode(reg, holder{PID: 3, Node: "c", Names: NodeHostNames("c"), NetworkCIDR: "10.210.0.0/16", NetNS: "net:[1]"})
	if err == nil || !strings.Contains(err.Error(), "--network-cidr 10.201.0.0/16") {
		t.Errorf("pool suggestion: got %v, want 10.201.0.0/16", err)
	}
}
