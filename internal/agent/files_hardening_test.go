package agent_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

// uid is the unprivileged user of these tests: a numeric uid, which the
// agent accepts without a passwd entry.
const uid = 1000

// userTree makes dir a tree uid 1000 can reach: dir (and its parent, a
// t.TempDir) searchable, home owned by the user, secret owned by root and
// readable by root only, and a link the user planted in home.
func userTree(t *testing.T) (dir, home, secret string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the file hardening tests act as uid 1000: run them as root (make test does)")
	}
	dir = t.TempDir()
	must(t, os.Chmod(filepath.Dir(dir), 0o755))
	must(t, os.Chmod(dir, 0o755))
	home = filepath.Join(dir, "home")
	must(t, os.Mkdir(home, 0o755))
	must(t, os.Chown(home, uid, uid))
	secret = filepath.Join(dir, "shadow")
	must(t, os.WriteFile(secret, []byte("root:secret\n"), 0o600))
	link := filepath.Join(home, "notes.txt")
	must(t, os.Symlink(secret, link))
	must(t, os.Lchown(link, uid, uid))
	linkDir := filepath.Join(home, "etc")
	must(t, os.Symlink(dir, linkDir))
	must(t, os.Lchown(linkDir, uid, uid))
	return dir, home, secret
}

// TestFilesActAsUser: a file call acts as its user, and a symlink another
// user planted never takes a call made as root beyond what that user may
// write: writing through /home/user/notes.txt, a link to a root-only
// file, is permission_denied and leaves the file as it was.
func TestFilesActAsUser(t *testing.T) {
	ta := newAgent(t)
	dir, home, secret := userTree(t)
	user := ta.c.AsUser("1000")
	ctx := t.Context()

	write := func(c *agentclient.Client, path string) func() error {
		return func() error {
			_, err := c.WriteFile(ctx, path, strings.NewReader("owned\n"), agentclient.WriteOptions{})
			return err
		}
	}
	read := func(c *agentclient.Client, path string) func() error {
		return func() error {
			rc, _, err := c.ReadFile(ctx, path)
			if err == nil {
				rc.Close()
			}
			return err
		}
	}
	tests := []struct {
		name string
		op   func() error
	}{
		{"root writes through the user's link", write(ta.c, home+"/notes.txt")},
		{"root writes through the user's directory link", write(ta.c, home+"/etc/shadow")},
		{"root writes a new file through the user's directory link", write(ta.c, home+"/etc/new")},
		{"the user writes through its link", write(user, home+"/notes.txt")},
		{"the user writes a root file", write(user, secret)},
		{"the user writes in a root directory", write(user, dir+"/new")},
		{"the user reads a root-only file", read(user, secret)},
		{"the user reads through its link", read(user, home+"/notes.txt")},
		{"root reads through the user's link", read(ta.c, home+"/notes.txt")},
		{"the user removes a root file", func() error { return user.Remove(ctx, secret, false) }},
		{"the user renames a root file", func() error {
			_, err := user.Rename(ctx, secret, home+"/stolen")
			return err
		}},
		{"root renames onto the user's directory link", func() error {
			_, err := ta.c.Rename(ctx, home+"/nothing-here", home+"/etc/shadow")
			if errdefs.Classify(err).Code == errdefs.CodeFileNotFound {
				// The source is checked first; give it one.
				must(t, os.WriteFile(home+"/mine", []byte("x"), 0o644))
				must(t, os.Chown(home+"/mine", uid, uid))
				_, err = ta.c.Rename(ctx, home+"/mine", home+"/etc/shadow")
			}
			return err
		}},
		{"the user makes a directory in a root directory", func() error {
			_, err := user.Mkdir(ctx, dir+"/made")
			return err
		}},
		{"the user lists a root-only directory", func() error {
			must(t, os.Mkdir(dir+"/private", 0o700))
			_, err := user.ListFiles(ctx, dir+"/private", 1)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if p := errdefs.Classify(err); err == nil || p.Code != errdefs.CodePermissionDenied || p.Status != 403 {
				t.Errorf("got %v (%s, %d), want permission_denied (403)", err, p.Code, p.Status)
			}
			if b, _ := os.ReadFile(secret); string(b) != "root:secret\n" {
				t.Fatalf("the root-only file now holds %q", b)
			}
		})
	}
	for _, p := range []string{dir + "/new", dir + "/made", dir + "/stolen", home + "/stolen"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}

	// What the user may do, it does, and what it creates is its own.
	if _, err := user.WriteFile(ctx, home+"/sub/mine.txt", strings.NewReader("x"), agentclient.WriteOptions{}); err != nil {
		t.Fatalf("the user writes in its home: %v", err)
	}
	for _, p := range []string{home + "/sub", home + "/sub/mine.txt"} {
		if got := owner(t, p); got != uid {
			t.Errorf("%s is owned by %d, want %d", p, got, uid)
		}
	}
	// Root writing in the user's home without links: allowed, and the
	// new file is the user's.
	if _, err := ta.c.WriteFile(ctx, home+"/from-root.txt", strings.NewReader("x"), agentclient.WriteOptions{}); err != nil {
		t.Fatalf("root writes in the user's home: %v", err)
	}
	if got := owner(t, home+"/from-root.txt"); got != uid {
		t.Errorf("from-root.txt is owned by %d, want %d", got, uid)
	}
	// A link of the user's to its own file is followed, as the user.
	must(t, os.Symlink(home+"/from-root.txt", home+"/alias"))
	must(t, os.Lchown(home+"/alias", uid, uid))
	if _, err := ta.c.WriteFile(ctx, home+"/alias", strings.NewReader("via alias"), agentclient.WriteOptions{}); err != nil {
		t.Fatalf("root writes through the user's link to the user's file: %v", err)
	}
	if b, _ := os.ReadFile(home + "/from-root.txt"); string(b) != "via alias" {
		t.Errorf("from-root.txt holds %q", b)
	}
	if fi, err := os.Lstat(home + "/alias"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v %v", fi, err)
	}
	// Removing the user's link removes the link, never its target.
	if err := ta.c.Remove(ctx, home+"/notes.txt", false); err != nil {
		t.Fatalf("remove the link: %v", err)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Errorf("the link's target went: %v", err)
	}
}

func owner(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// TestFilesRefuseSpecial: writing onto a device or a FIFO, reading one,
// and changing /proc, /sys or /dev are refused with a 400 that says why,
// and leave the file as it was. The test runs on the host: it uses a
// device node and a FIFO of its own, and paths in /proc, /sys and /dev
// that do not exist, so that a broken agent harms nothing (the machine's
// own /dev/null and /proc are the e2e test's, TestFilesHardening).
func TestFilesRefuseSpecial(t *testing.T) {
	ta := newAgent(t)
	dir := t.TempDir()
	fifo, null := dir+"/fifo", dir+"/null"
	must(t, syscall.Mkfifo(fifo, 0o644))
	must(t, syscall.Mknod(null, syscall.S_IFCHR|0o666, 1<<8|3))
	missing := "nullspace-test-" + strings.ReplaceAll(t.Name(), "/", "-")
	t.Cleanup(func() { os.RemoveAll("/dev/" + missing) })
	ctx := t.Context()
	write := func(path string) func() error {
		return func() error {
			_, err := ta.c.WriteFile(ctx, path, strings.NewReader("x"), agentclient.WriteOptions{})
			return err
		}
	}
	read := func(path string) func() error {
		return func() error {
			rc, _, err := ta.c.ReadFile(ctx, path)
			if err == nil {
				rc.Close()
			}
			return err
		}
	}
	tests := []struct {
		name string
		op   func() error
		want string // in the message
	}{
		{"write a character device", write(null), "character device"},
		{"write a FIFO", write(fifo), "FIFO"},
		{"read a FIFO", read(fifo), "FIFO"},
		{"read a character device", read(null), "character device"},
		{"write in /dev", write("/dev/" + missing), "/dev"},
		{"write in /sys", write("/sys/" + missing), "/sys"},
		{"write in /proc", write("/proc/self/" + missing), "/proc"},
		{"remove in /proc", func() error { return ta.c.Remove(ctx, "/proc/self/"+missing, true) }, "/proc"},
		{"remove in /dev", func() error { return ta.c.Remove(ctx, "/dev/"+missing, false) }, "/dev"},
		{"mkdir in /dev", func() error {
			_, err := ta.c.Mkdir(ctx, "/dev/"+missing+"/sub")
			return err
		}, "/dev"},
		{"rename into /dev", func() error {
			must(t, os.WriteFile(dir+"/file", nil, 0o644))
			_, err := ta.c.Rename(ctx, dir+"/file", "/dev/"+missing)
			return err
		}, "/dev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			p := errdefs.Classify(err)
			if err == nil || p.Status != 400 || !strings.Contains(p.Message, tt.want) {
				t.Errorf("got %v (%d), want a 400 naming %q", err, p.Status, tt.want)
			}
		})
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the FIFO is now %v, %v", fi, err)
	}
	if fi, err := os.Lstat(null); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("the device node is now %v, %v", fi, err)
	}
	if _, err := os.Lstat("/dev/" + missing); err == nil {
		t.Errorf("/dev/%s was made", missing)
	}
}

// TestRemoveBounded: a recursive remove that outlasts the agent's file
// timeout answers deadline_exceeded instead of running on.
func TestRemoveBounded(t *testing.T) {
	ta := newAgent(t, func(c *agent.Config) { c.FileTimeout = time.Nanosecond })
	dir := t.TempDir()
	for i := range 10 {
		must(t, os.MkdirAll(filepath.Join(dir, "tree", strings.Repeat("d", i+1)), 0o755))
	}
	err := ta.c.Remove(t.Context(), dir+"/tree", true)
	if p := errdefs.Classify(err); !errors.Is(err, errdefs.ErrDeadlineExceeded) || p.Code != errdefs.CodeDeadlineExceeded {
		t.Errorf("got %v (%s), want deadline_exceeded", err, p.Code)
	}
}

// TestParentsAsRoot: with parents_as_root a user's write or mkdir makes
// the missing directories the user may not make as root and gives them to
// the user, as E2B's envd does; without it they are refused. A file the
// user may not write stays refused either way.
func TestParentsAsRoot(t *testing.T) {
	ta := newAgent(t)
	dir, _, secret := userTree(t)
	user := ta.c.AsUser("1000")
	ctx := t.Context()
	owned := func(p string) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Uid != uid || st.Gid != uid {
			t.Errorf("%s: uid %d gid %d (%v), want %d", p, st.Uid, st.Gid, err, uid)
		}
	}

	_, err := user.WriteFile(ctx, dir+"/new/sub/f.txt", strings.NewReader("x"), agentclient.WriteOptions{})
	wantDenied(t, err)
	if _, err := os.Stat(dir + "/new"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused write left %s/new: %v", dir, err)
	}
	if _, err := user.WriteFile(ctx, dir+"/new/sub/f.txt", strings.NewReader("x"), agentclient.WriteOptions{ParentsAsRoot: true}); err != nil {
		t.Fatalf("write with parents as root: %v", err)
	}
	for _, p := range []string{dir + "/new", dir + "/new/sub", dir + "/new/sub/f.txt"} {
		owned(p)
	}

	_, err = user.Mkdir(ctx, dir+"/made")
	wantDenied(t, err)
	if _, err := user.MkdirWith(ctx, api.MkdirRequest{Path: dir + "/made/deep", ParentsAsRoot: true}); err != nil {
		t.Fatalf("mkdir with parents as root: %v", err)
	}
	owned(dir + "/made")
	owned(dir + "/made/deep")

	// Only missing directories: an existing root file stays the root's.
	_, err = user.WriteFile(ctx, secret, strings.NewReader("mine"), agentclient.WriteOptions{ParentsAsRoot: true})
	wantDenied(t, err)
	if b, _ := os.ReadFile(secret); string(b) != "root:secret\n" {
		t.Errorf("%s became %q", secret, b)
	}
	// The agent's own thread is itself again: a root write still works.
	if _, err := ta.c.WriteFile(ctx, dir+"/root.txt", strings.NewReader("r"), agentclient.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func wantDenied(t *testing.T, err error) {
	t.Helper()
	if p := errdefs.Classify(err); err == nil || p.Code != errdefs.CodePermissionDenied || p.Status != 403 {
		t.Fatalf("got %v, want 403 permission_denied", err)
	}
}
