package devcluster

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

func TestNamesFitAndDoNotClash(t *testing.T) {
	names := []string{"a", "nsc", "nsc1", "nsc12", "nscn1", "abcdefghij", "nst12345"}
	objects := func(name string) []string {
		objs := []string{bridgeName(name)}
		for i := 1; i <= maxNodes; i++ {
			objs = append(objs, netnsName(name, i), hostVethName(name, i), nodeName(name, i))
		}
		return objs
	}
	for _, a := range names {
		if _, err := (Options{Name: a}).withDefaults(); err != nil {
			t.Fatalf("name %q: %v", a, err)
		}
		for _, obj := range objects(a) {
			if len(obj) > 15 {
				t.Errorf("name %q: object %q is %d bytes; Linux allows 15", a, obj, len(obj))
			}
			if !ownObject(a, obj) {
				t.Errorf("name %q does not own its object %q", a, obj)
			}
			for _, b := range names {
				if b != a && ownObject(b, obj) {
					t.Errorf("name %q owns %q, an object of name %q", b, obj, a)
				}
			}
		}
	}
	// Not ours: other projects' objects, nullspace's own machines.
	for _, obj := range []string{"nsc", "nsc-", "nsc-v", "nsc-v0", "nsc-v01", "nsc-x1", "nsc-n1x", "nsc-br0", "nullspace-nsc-n1-3", "nsv3", "nsc1-v1"} {
		if ownObject("nsc", obj) {
			t.Errorf("name nsc owns %q; want not", obj)
		}
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"defaults", Options{}, true},
		{"one node", Options{Nodes: 1}, true},
		{"too many nodes", Options{Nodes: maxNodes + 1}, false},
		{"negative nodes", Options{Nodes: -1}, false},
		{"long name", Options{Name: "abcdefghijk"}, false},
		{"dash in name", Options{Name: "a-b"}, false},
		{"upper case", Options{Name: "Nsc"}, false},
		{"leading digit", Options{Name: "1a"}, false},
		{"machine veth prefix nv", Options{Name: "nv1"}, false},
		{"machine veth prefix nsv", Options{Name: "nsvx"}, false},
		{"v6 subnet", Options{Subnet: "fd00::/64"}, false},
		{"small subnet", Options{Subnet: "10.1.2.0/25"}, false},
		{"unmasked subnet", Options{Subnet: "10.1.2.3/24"}, false},
		{"bigger subnet", Options{Subnet: "10.9.0.0/16"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.o.withDefaults()
			if tc.ok && err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if !tc.ok && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want an invalid argument", err)
			}
		})
	}
}

func testLayout(t *testing.T, o Options) layout {
	t.Helper()
	l, err := newLayout(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestNodeArgs(t *testing.T) {
	o := Options{Bin: "/b/nullspace", AgentBin: "/b/agent", Runsc: "/b/runsc", BaseDir: "/var/lib/c", ExtraFlags: []string{"--log-level", "debug"}}
	l := testLayout(t, o)
	if err := l.withDatabase("postgres://nullspace:s3cret@10.213.0.1:5432/postgres?sslmode=disable"); err != nil {
		t.Fatal(err)
	}
	l.objectStore = "s3://b/?endpoint=http://10.213.0.1:9000&region=us-east-1"

	got := strings.Join(l.nodeArgs(2), " ")
	want := "nsenter --net=/run/netns/nsc-n2 -- /b/nullspace serve --data-dir /var/lib/c/nsc-n2 --node-name nsc-n2" +
		" --addr 10.213.0.12:8080 --edge-addr 10.213.0.12:8081 --ssh-addr 10.213.0.12:2222 --e2b-addr 10.213.0.12:3000" +
		" --agent /b/agent --runsc /b/runsc --spares 0" +
		" --database-url postgres://nullspace@10.213.0.1:5432/postgres?sslmode=disable" +
		" --object-store s3://b/?endpoint=http://10.213.0.1:9000&region=us-east-1 --log-level debug"
	if got != want {
		t.Errorf("nodeArgs(2):\n got %s\nwant %s", got, want)
	}
	if strings.Contains(got, "s3cret") {
		t.Errorf("nodeArgs carries the database password: %s", got)
	}

	// The flags not every serve has come only when asked for.
	for _, f := range []string{"--peer-addr", "--node-ttl", "--e2b-compat"} {
		if strings.Contains(got, f) {
			t.Errorf("nodeArgs has %s without being asked: %s", f, got)
		}
	}
	o.PeerAddr, o.E2BCompat, o.NodeTTL = true, true, 5*time.Second
	args := testLayout(t, o).nodeArgs(1)
	for _, pair := range [][]string{{"--peer-addr", "10.213.0.11:7946"}, {"--node-ttl", "5s"}} {
		if i := slices.Index(args, pair[0]); i < 0 || i+1 >= len(args) || args[i+1] != pair[1] {
			t.Errorf("nodeArgs(1) = %v; want %s %s", args, pair[0], pair[1])
		}
	}
	if !slices.Contains(args, "--e2b-compat") {
		t.Errorf("nodeArgs(1) = %v; want --e2b-compat", args)
	}
}

func TestAddresses(t *testing.T) {
	l := testLayout(t, Options{Subnet: "10.9.0.0/16"})
	if got := bridgeIP(l.subnet); got != netip.MustParseAddr("10.9.0.1") {
		t.Errorf("bridge: got %s, want 10.9.0.1", got)
	}
	n := l.node(3)
	if n.IP != netip.MustParseAddr("10.9.0.13") || n.APIURL != "http://10.9.0.13:8080" || n.PeerURL != "http://10.9.0.13:7946" ||
		n.EdgeAddr != "10.9.0.13:8081" || n.SSHAddr != "10.9.0.13:2222" || n.E2BAddr != "10.9.0.13:3000" {
		t.Errorf("node 3: got %+v", n)
	}
	if n.Name != "nsc-n3" || n.DataDir != DefaultBaseDir+"/nsc-n3" {
		t.Errorf("node 3: got name %s, data dir %s", n.Name, n.DataDir)
	}
}

func TestEnv(t *testing.T) {
	l := testLayout(t, Options{Nodes: 2})
	if err := l.withDatabase("postgres://nullspace:pw@10.213.0.1:5432/postgres"); err != nil {
		t.Fatal(err)
	}
	l.objectStore = "s3://b/?endpoint=http://10.213.0.1:9000&region=us-east-1"
	got := l.env("nsk_key", []string{"AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=s", "PGPASSWORD=pw", "OTHER=x"})
	want := []string{
		"NULLSPACE_NODE1_API=http://10.213.0.11:8080", "NULLSPACE_NODE1_EDGE=10.213.0.11:8081", "NULLSPACE_NODE1_SSH=10.213.0.11:2222",
		"NULLSPACE_NODE1_E2B=10.213.0.11:3000", "NULLSPACE_NODE1_PEER=http://10.213.0.11:7946",
		"NULLSPACE_NODE2_API=http://10.213.0.12:8080", "NULLSPACE_NODE2_EDGE=10.213.0.12:8081", "NULLSPACE_NODE2_SSH=10.213.0.12:2222",
		"NULLSPACE_NODE2_E2B=10.213.0.12:3000", "NULLSPACE_NODE2_PEER=http://10.213.0.12:7946",
		"NULLSPACE_API_URL=http://10.213.0.11:8080",
		"NULLSPACE_API_KEY=nsk_key",
		"NULLSPACE_DATABASE_URL=postgres://nullspace:pw@10.213.0.1:5432/postgres",
		"NULLSPACE_OBJECT_STORE=s3://b/?endpoint=http://10.213.0.1:9000&region=us-east-1",
		"AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=s",
	}
	if !slices.Equal(got, want) {
		t.Errorf("env:\n got %q\nwant %q", got, want)
	}
	for _, kv := range got {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(k, " \n") {
			t.Errorf("env line %q is not NAME=value", kv)
		}
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 8}
	b.Write([]byte("hello "))
	b.Write([]byte("world"))
	if got := b.String(); got != "lo world" {
		t.Errorf("got %q, want %q", got, "lo world")
	}
}

func TestStopRecorded(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()

	// A pid whose command line lacks the mark (reused since the file was
	// written) is left alone: here, the test binary itself.
	self := filepath.Join(dir, "self.pid")
	os.WriteFile(self, []byte(strconv.Itoa(os.Getpid())), 0o644)
	if err := stopRecorded(t.Context(), self, "no-such-mark", time.Second, log); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(self); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file of a reused pid: got %v, want it removed", err)
	}

	// A process whose command line has it is stopped.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-waited })
	path := filepath.Join(dir, "sleep.pid")
	os.WriteFile(path, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	if err := stopRecorded(t.Context(), path, "sleep\x0060\x00", 5*time.Second, log); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("the recorded process is still running")
	}
}
