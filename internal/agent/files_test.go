package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

func readAll(t *testing.T, c *agentclient.Client, path string) []byte {
	t.Helper()
	rc, size, err := c.ReadFile(t.Context(), path)
	if err != nil {
		t.Fatalf("ReadFile(%s): %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if size >= 0 && size != int64(len(b)) {
		t.Errorf("got size %d, want %d", size, len(b))
	}
	return b
}

func TestWriteReadFile(t *testing.T) {
	ta := newAgent(t)
	dir := t.TempDir()
	binary := make([]byte, 512)
	for i := range binary {
		binary[i] = byte(i)
	}
	tests := []struct {
		name     string
		path     string
		data     []byte
		mode     os.FileMode
		wantMode string
	}{
		{name: "text", path: dir + "/hello.txt", data: []byte("hello\nworld\n"), wantMode: "0644"},
		{name: "binary", path: dir + "/bin.dat", data: binary, wantMode: "0644"},
		{name: "empty", path: dir + "/empty", data: nil, wantMode: "0644"},
		{name: "creates parents", path: dir + "/a/b/c/deep.txt", data: []byte("deep"), wantMode: "0644"},
		{name: "mode", path: dir + "/script.sh", data: []byte("#!/bin/sh\n"), mode: 0o755, wantMode: "0755"},
		{name: "unclean path", path: dir + "/x/../clean.txt", data: []byte("c"), wantMode: "0644"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := ta.c.WriteFile(t.Context(), tt.path, bytes.NewReader(tt.data), agentclient.WriteOptions{Mode: tt.mode})
			if err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			clean := filepath.Clean(tt.path)
			if res.Path != clean || res.Size != int64(len(tt.data)) {
				t.Errorf("got %+v, want path %s size %d", res, clean, len(tt.data))
			}
			if got := readAll(t, ta.c, tt.path); !bytes.Equal(got, tt.data) {
				t.Errorf("got %q, want %q", got, tt.data)
			}
			onDisk, err := os.ReadFile(clean)
			if err != nil || !bytes.Equal(onDisk, tt.data) {
				t.Errorf("on disk: got %q, %v, want %q", onDisk, err, tt.data)
			}
			fi, err := ta.c.Stat(t.Context(), tt.path)
			if err != nil {
				t.Fatalf("Stat: %v", err)
			}
			if fi.Mode != tt.wantMode || fi.Type != "file" {
				t.Errorf("got mode %s type %s, want %s file", fi.Mode, fi.Type, tt.wantMode)
			}
		})
	}

	t.Run("overwrite keeps mode", func(t *testing.T) {
		path := dir + "/script.sh"
		if _, err := ta.c.WriteFile(t.Context(), path, strings.NewReader("new"), agentclient.WriteOptions{}); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		fi, err := ta.c.Stat(t.Context(), path)
		if err != nil || fi.Mode != "0755" || fi.Size != 3 {
			t.Errorf("got %+v, %v, want mode 0755 size 3", fi, err)
		}
	})

	t.Run("owner of the directory", func(t *testing.T) {
		home := dir + "/home-nobody"
		if err := os.Mkdir(home, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := ta.c.WriteFile(t.Context(), home+"/sub/file", strings.NewReader("x"), agentclient.WriteOptions{}); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		res, err := ta.c.Run(t.Context(), api.RunCommandRequest{Cmd: []string{"stat", "-c", "%u", home + "/sub", home + "/sub/file"}})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if res.Stdout != "65534\n65534\n" {
			t.Errorf("got owners %q, want 65534 for both", res.Stdout)
		}
	})
}

// patternReader yields n deterministic pseudo-random bytes without holding
// them in memory.
func patternReader(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), n)
}

func TestLargeFile(t *testing.T) {
	ta := newAgent(t)
	dir := t.TempDir()
	tests := []struct {
		name      string
		size      int64
		knownSize bool
	}{
		{"50 MB with length", 50 << 20, true},
		{"8 MB chunked", 8 << 20, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := dir + "/large-" + strings.ReplaceAll(tt.name, " ", "-")
			wantSum := sha256.New()
			io.Copy(wantSum, patternReader(tt.size))
			opts := agentclient.WriteOptions{}
			if tt.knownSize {
				opts.Size = tt.size
			}
			res, err := ta.c.WriteFile(t.Context(), path, patternReader(tt.size), opts)
			if err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			if res.Size != tt.size {
				t.Errorf("got size %d, want %d", res.Size, tt.size)
			}
			rc, size, err := ta.c.ReadFile(t.Context(), path)
			if err != nil {
				t.Fatalf("ReadFile: %v", err)
			}
			defer rc.Close()
			if size != tt.size {
				t.Errorf("got content length %d, want %d", size, tt.size)
			}
			gotSum := sha256.New()
			n, err := io.Copy(gotSum, rc)
			if err != nil || n != tt.size {
				t.Fatalf("read back %d bytes, %v, want %d", n, err, tt.size)
			}
			if !bytes.Equal(gotSum.Sum(nil), wantSum.Sum(nil)) {
				t.Errorf("read back different bytes than written")
			}
		})
	}
}

func TestFileOperations(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	dir := t.TempDir()

	fi, err := ta.c.Mkdir(ctx, dir+"/p/q/r")
	if err != nil {
		t.Fatalf("Mkdir: %v", err)
	}
	if fi.Type != "dir" || fi.Name != "r" || fi.Path != dir+"/p/q/r" {
		t.Errorf("got %+v, want dir r", fi)
	}
	if _, err := ta.c.Mkdir(ctx, dir+"/p/q/r"); err != nil {
		t.Errorf("Mkdir of an existing directory: %v, want success (mkdir -p)", err)
	}
	for _, f := range []string{"/p/b.txt", "/p/a.txt", "/p/q/c.txt"} {
		if _, err := ta.c.WriteFile(ctx, dir+f, strings.NewReader(f), agentclient.WriteOptions{}); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
	}
	if err := os.Symlink("a.txt", dir+"/p/link"); err != nil {
		t.Fatal(err)
	}

	listTests := []struct {
		depth int
		want  []string
	}{
		{1, []string{"/p/a.txt", "/p/b.txt", "/p/link", "/p/q"}},
		{2, []string{"/p/a.txt", "/p/b.txt", "/p/link", "/p/q", "/p/q/c.txt", "/p/q/r"}},
		{5, []string{"/p/a.txt", "/p/b.txt", "/p/link", "/p/q", "/p/q/c.txt", "/p/q/r"}},
	}
	for _, tt := range listTests {
		list, err := ta.c.ListFiles(ctx, dir+"/p", tt.depth)
		if err != nil {
			t.Fatalf("ListFiles: %v", err)
		}
		var got []string
		for _, e := range list.Entries {
			got = append(got, strings.TrimPrefix(e.Path, dir))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("depth %d: got %v, want %v", tt.depth, got, tt.want)
		}
	}

	link, err := ta.c.Stat(ctx, dir+"/p/link")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if link.Type != "symlink" || link.Target != "a.txt" {
		t.Errorf("got %+v, want a symlink to a.txt", link)
	}
	// Writing through a symlink writes its target and keeps the link.
	if _, err := ta.c.WriteFile(ctx, dir+"/p/link", strings.NewReader("via link"), agentclient.WriteOptions{}); err != nil {
		t.Fatalf("WriteFile through link: %v", err)
	}
	if got := readAll(t, ta.c, dir+"/p/a.txt"); string(got) != "via link" {
		t.Errorf("got %q in the link's target, want %q", got, "via link")
	}

	moved, err := ta.c.Rename(ctx, dir+"/p/b.txt", dir+"/moved/b2.txt")
	if err != nil {
		t.Fatalf("Rename: %v", err)
	}
	if moved.Path != dir+"/moved/b2.txt" || moved.Size != int64(len("/p/b.txt")) {
		t.Errorf("got %+v, want the moved file", moved)
	}
	if _, err := os.Stat(dir + "/p/b.txt"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old name still exists: %v", err)
	}

	if err := ta.c.Remove(ctx, dir+"/moved/b2.txt", false); err != nil {
		t.Fatalf("Remove file: %v", err)
	}
	if err := ta.c.Remove(ctx, dir+"/moved", false); err != nil {
		t.Fatalf("Remove empty dir: %v", err)
	}
	if err := ta.c.Remove(ctx, dir+"/p", true); err != nil {
		t.Fatalf("Remove recursive: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("got %d entries left, want none", len(entries))
	}
}

func TestFileErrors(t *testing.T) {
	ta := newAgent(t, func(c *agent.Config) { c.MaxFileBytes = 1000 })
	dir := t.TempDir()
	must(t, os.WriteFile(dir+"/file", []byte("x"), 0o644))
	must(t, os.MkdirAll(dir+"/full/sub", 0o755))

	read := func(path string) func(context.Context, *agentclient.Client) error {
		return func(ctx context.Context, c *agentclient.Client) error {
			rc, _, err := c.ReadFile(ctx, path)
			if err == nil {
				rc.Close()
			}
			return err
		}
	}
	write := func(path string, data string) func(context.Context, *agentclient.Client) error {
		return func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.WriteFile(ctx, path, strings.NewReader(data), agentclient.WriteOptions{})
			return err
		}
	}
	tests := []struct {
		name      string
		op        func(context.Context, *agentclient.Client) error
		wantClass error
		wantCode  string
	}{
		{"read missing", read(dir + "/missing"), errdefs.ErrNotFound, errdefs.CodeFileNotFound},
		{"read directory", read(dir), errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory},
		{"read relative", read("relative/path"), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"read empty path", read(""), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"read NUL", read("/tmp/a\x00b"), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"read agent dir", read("/.nullspace/agent"), errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied},
		{"read agent dir unclean", read("/tmp/../.nullspace"), errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied},
		{"read under a file", read(dir + "/file/x"), errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory},
		{"write agent dir", write("/.nullspace/x", "x"), errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied},
		{"write onto directory", write(dir+"/full", "x"), errdefs.ErrInvalidArgument, errdefs.CodeIsADirectory},
		{"write under a file", write(dir+"/file/x", "x"), errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory},
		{"write too large", write(dir+"/big", strings.Repeat("x", 1001)), errdefs.ErrInvalidArgument, errdefs.CodeFileTooLarge},
		{"write relative", write("file", "x"), errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"stat missing", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.Stat(ctx, dir+"/missing")
			return err
		}, errdefs.ErrNotFound, errdefs.CodeFileNotFound},
		{"list missing", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.ListFiles(ctx, dir+"/missing", 1)
			return err
		}, errdefs.ErrNotFound, errdefs.CodeFileNotFound},
		{"list a file", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.ListFiles(ctx, dir+"/file", 1)
			return err
		}, errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory},
		{"remove missing", func(ctx context.Context, c *agentclient.Client) error {
			return c.Remove(ctx, dir+"/missing", false)
		}, errdefs.ErrNotFound, errdefs.CodeFileNotFound},
		{"remove non-empty", func(ctx context.Context, c *agentclient.Client) error {
			return c.Remove(ctx, dir+"/full", false)
		}, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty},
		{"remove root", func(ctx context.Context, c *agentclient.Client) error {
			return c.Remove(ctx, "/", true)
		}, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument},
		{"mkdir over a file", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.Mkdir(ctx, dir+"/file")
			return err
		}, errdefs.ErrFailedPrecondition, errdefs.CodeFileExists},
		{"mkdir under a file", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.Mkdir(ctx, dir+"/file/sub")
			return err
		}, errdefs.ErrInvalidArgument, errdefs.CodeNotADirectory},
		{"rename missing", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.Rename(ctx, dir+"/missing", dir+"/other")
			return err
		}, errdefs.ErrNotFound, errdefs.CodeFileNotFound},
		{"rename onto non-empty dir", func(ctx context.Context, c *agentclient.Client) error {
			must(t, os.MkdirAll(dir+"/empty", 0o755))
			_, err := c.Rename(ctx, dir+"/empty", dir+"/full")
			return err
		}, errdefs.ErrFailedPrecondition, errdefs.CodeDirectoryNotEmpty},
		{"rename into agent dir", func(ctx context.Context, c *agentclient.Client) error {
			_, err := c.Rename(ctx, dir+"/file", "/.nullspace/file")
			return err
		}, errdefs.ErrFailedPrecondition, errdefs.CodePermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.op(t.Context(), ta.c), tt.wantClass, tt.wantCode)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// The HTTP statuses the agent answers with, checked without the client.
func TestFileErrorStatus(t *testing.T) {
	ta := newAgent(t, func(c *agent.Config) { c.MaxFileBytes = 1000 })
	dir := t.TempDir()
	must(t, os.MkdirAll(dir+"/full/sub", 0o755))
	tests := []struct {
		method, path string
		body         string
		wantStatus   int
		wantCode     string
	}{
		{"GET", "/files?path=" + dir + "/missing", "", 404, errdefs.CodeFileNotFound},
		{"GET", "/files?path=" + dir, "", 400, errdefs.CodeIsADirectory},
		{"GET", "/files?path=rel", "", 400, errdefs.CodeInvalidArgument},
		{"GET", "/files?path=/.nullspace/x", "", 403, errdefs.CodePermissionDenied},
		{"PUT", "/files?path=" + dir + "/big", strings.Repeat("x", 1001), 413, errdefs.CodeFileTooLarge},
		{"PUT", "/files?path=" + dir + "/f&mode=999", "x", 400, errdefs.CodeInvalidArgument},
		{"DELETE", "/files?path=" + dir + "/full", "", 409, errdefs.CodeDirectoryNotEmpty},
		{"GET", "/files/list?path=" + dir + "&depth=0", "", 400, errdefs.CodeInvalidArgument},
		{"POST", "/files/mkdir", `{"path":`, 400, errdefs.CodeInvalidArgument},
		{"POST", "/commands", `{"cmd":["no-such-command-nullspace"]}`, 400, errdefs.CodeCommandNotFound},
		{"GET", "/commands/123456789/output", "", 404, errdefs.CodeProcessNotFound},
		{"GET", "/commands/abc/output", "", 400, errdefs.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			u, err := url.Parse(ta.url + tt.path)
			must(t, err)
			req, err := http.NewRequestWithContext(t.Context(), tt.method, u.String(), strings.NewReader(tt.body))
			must(t, err)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			must(t, err)
			defer resp.Body.Close()
			var e api.Error
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("decode api.Error: %v", err)
			}
			if resp.StatusCode != tt.wantStatus || e.Code != tt.wantCode {
				t.Errorf("got %d %s (%s), want %d %s", resp.StatusCode, e.Code, e.Message, tt.wantStatus, tt.wantCode)
			}
			if e.Message == "" {
				t.Errorf("got an empty message")
			}
		})
	}
}

// A refused or broken upload leaves no file, no temp file, and the old
// content in place.
func TestFailedUploadKeepsOldFile(t *testing.T) {
	ta := newAgent(t, func(c *agent.Config) { c.MaxFileBytes = 1000 })
	dir := t.TempDir()
	path := dir + "/f"
	if _, err := ta.c.WriteFile(t.Context(), path, strings.NewReader("old"), agentclient.WriteOptions{}); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	tests := []struct {
		name     string
		path     string
		body     io.Reader
		opts     agentclient.WriteOptions
		wantCode string
	}{
		{"oversize with length", path, strings.NewReader(strings.Repeat("x", 5000)), agentclient.WriteOptions{}, errdefs.CodeFileTooLarge},
		{"oversize chunked", path, io.MultiReader(strings.NewReader(strings.Repeat("x", 5000))), agentclient.WriteOptions{}, errdefs.CodeFileTooLarge},
		{"oversize large with length", path, patternReader(10 << 20), agentclient.WriteOptions{Size: 10 << 20}, errdefs.CodeFileTooLarge},
		{"oversize new file", dir + "/new", io.MultiReader(patternReader(1 << 20)), agentclient.WriteOptions{}, errdefs.CodeFileTooLarge},
		{"body fails", path, iotest.TimeoutReader(io.MultiReader(strings.NewReader("partial"), strings.NewReader("more"))), agentclient.WriteOptions{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ta.c.WriteFile(t.Context(), tt.path, tt.body, tt.opts)
			if err == nil {
				t.Fatalf("WriteFile succeeded, want an error")
			}
			if tt.wantCode != "" {
				wantCode(t, err, errdefs.ErrInvalidArgument, tt.wantCode)
			}
			// The agent may still be cleaning up after a broken upload.
			waitFor(t, "only the old file to be left", func() bool {
				entries, _ := os.ReadDir(dir)
				return len(entries) == 1 && entries[0].Name() == "f"
			})
			if got := readAll(t, ta.c, path); string(got) != "old" {
				t.Errorf("got %q, want the old content", got)
			}
		})
	}
}

// TestFileOwners checks that file answers name the owner and group from
// the machine's accounts, and give the number of an id that has none.
func TestFileOwners(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.txt"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "nobody.txt"), nil, 0o644)
	// 4000000 is far past any account a host or image defines.
	if err := os.Lchown(filepath.Join(dir, "nobody.txt"), 4000000, 4000001); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"root.txt": "root:root", "nobody.txt": "4000000:4000001"}
	list, err := ta.c.ListFiles(ctx, dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Entries {
		if got := e.Owner + ":" + e.Group; got != want[e.Name] {
			t.Errorf("ListFiles %s: got owner:group %q, want %q", e.Name, got, want[e.Name])
		}
	}
	for name, w := range want {
		fi, err := ta.c.Stat(ctx, filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Owner + ":" + fi.Group; got != w {
			t.Errorf("Stat %s: got owner:group %q, want %q", name, got, w)
		}
	}
	for what, fi := range map[string]func() (api.FileInfo, error){
		"Mkdir": func() (api.FileInfo, error) { return ta.c.Mkdir(ctx, filepath.Join(dir, "d")) },
		"Rename": func() (api.FileInfo, error) {
			return ta.c.Rename(ctx, filepath.Join(dir, "root.txt"), filepath.Join(dir, "moved.txt"))
		},
	} {
		info, err := fi()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := info.Owner + ":" + info.Group; got != "root:root" {
			t.Errorf("%s: got owner:group %q, want %q", what, got, "root:root")
		}
	}
}
