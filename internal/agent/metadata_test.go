package agent_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestFileMetadata: metadata written with a file comes back from the
// write, stat, list and rename; an overwrite replaces it; user.e2b.
// attributes set by other means are metadata, other user. ones are not.
func TestFileMetadata(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	dir := t.TempDir()
	md := map[string]string{"author": "mish", "purpose": "up load=1&x"}

	res, err := ta.c.WriteFile(ctx, dir+"/a.txt", strings.NewReader("a"), agentclient.WriteOptions{Metadata: md})
	if err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if !maps.Equal(res.Metadata, md) {
		t.Errorf("WriteFile: got metadata %v, want %v", res.Metadata, md)
	}
	if v, err := unix.Getxattr(dir+"/a.txt", "user.e2b.author", make([]byte, 64)); err != nil || v != len("mish") {
		t.Errorf("on disk: user.e2b.author is %d bytes, %v; want 4", v, err)
	}
	fi, err := ta.c.Stat(ctx, dir+"/a.txt")
	if err != nil || !maps.Equal(fi.Metadata, md) {
		t.Errorf("Stat: got metadata %v, %v; want %v", fi.Metadata, err, md)
	}
	list, err := ta.c.ListFiles(ctx, dir, 1)
	if err != nil || len(list.Entries) != 1 || !maps.Equal(list.Entries[0].Metadata, md) {
		t.Errorf("ListFiles: got %+v, %v; want one entry with metadata %v", list.Entries, err, md)
	}
	moved, err := ta.c.Rename(ctx, dir+"/a.txt", dir+"/sub/b.txt")
	if err != nil || !maps.Equal(moved.Metadata, md) {
		t.Errorf("Rename: got metadata %v, %v; want %v", moved.Metadata, err, md)
	}

	// An overwrite is a new file: without metadata it has none.
	if res, err := ta.c.WriteFile(ctx, dir+"/sub/b.txt", strings.NewReader("b"), agentclient.WriteOptions{}); err != nil || res.Metadata != nil {
		t.Fatalf("overwrite: got %+v, %v; want no metadata", res, err)
	}
	if fi, err := ta.c.Stat(ctx, dir+"/sub/b.txt"); err != nil || fi.Metadata != nil {
		t.Errorf("Stat after an overwrite: got metadata %v, %v; want none", fi.Metadata, err)
	}

	// Set in the machine by other means, on a file and on a directory.
	for p, attrs := range map[string]map[string]string{
		dir + "/sub/b.txt": {"user.e2b.tag": "x", "user.other": "not metadata"},
		dir + "/sub":       {"user.e2b.kind": "dir"},
	} {
		for k, v := range attrs {
			if err := unix.Setxattr(p, k, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	list, err = ta.c.ListFiles(ctx, dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{dir + "/sub": {"kind": "dir"}, dir + "/sub/b.txt": {"tag": "x"}}
	for _, e := range list.Entries {
		if !maps.Equal(e.Metadata, want[e.Path]) {
			t.Errorf("ListFiles %s: got metadata %v, want %v", e.Path, e.Metadata, want[e.Path])
		}
	}

	// A listing that does not need it skips reading it.
	req, _ := http.NewRequestWithContext(ctx, "GET", ta.url+"/files/list?depth=2&metadata=false&path="+url.QueryEscape(dir), nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var bare api.FileList
	if err := json.NewDecoder(resp.Body).Decode(&bare); err != nil || len(bare.Entries) != 2 {
		t.Fatalf("metadata=false: %+v, %v", bare, err)
	}
	for _, e := range bare.Entries {
		if e.Metadata != nil {
			t.Errorf("metadata=false: %s has metadata %v", e.Path, e.Metadata)
		}
	}
}

// TestFileMetadataAsUser: a user's file gets its metadata whatever its
// mode (a user attribute needs write permission, which 0444 takes away).
func TestFileMetadataAsUser(t *testing.T) {
	ta := newAgent(t)
	_, dir, _ := userTree(t)
	user := ta.c.AsUser("1000")
	md := map[string]string{"k": "v"}
	if _, err := user.WriteFile(t.Context(), dir+"/ro.txt", strings.NewReader("x"), agentclient.WriteOptions{Mode: 0o444, Metadata: md}); err != nil {
		t.Fatalf("WriteFile 0444 as 1000: %v", err)
	}
	fi, err := user.Stat(t.Context(), dir+"/ro.txt")
	if err != nil || fi.Mode != "0444" || !maps.Equal(fi.Metadata, md) {
		t.Errorf("Stat: got %+v, %v; want mode 0444 and metadata %v", fi, err, md)
	}
}

// TestFileMetadataRefused: metadata that could not be stored is refused
// before anything is written.
func TestFileMetadataRefused(t *testing.T) {
	ta := newAgent(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		md   map[string]string
	}{
		{"empty key", map[string]string{"": "v"}},
		{"key with a tab", map[string]string{"bad\tkey": "v"}},
		{"value with a newline", map[string]string{"k": "a\nb"}},
		{"value not ASCII", map[string]string{"k": "é"}},
		{"key too long", map[string]string{strings.Repeat("k", 247): "v"}},
		{"too much in all", map[string]string{"a": strings.Repeat("v", 2100), "b": strings.Repeat("v", 2100)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			_, err := ta.c.WriteFile(t.Context(), p, strings.NewReader("x"), agentclient.WriteOptions{Metadata: tt.md})
			if c := errdefs.Classify(err); err == nil || c.Code != errdefs.CodeInvalidArgument {
				t.Errorf("got %v (%s), want invalid_argument", err, c.Code)
			}
			if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the file was written: %v", err)
			}
		})
	}

	// A key of the longest length is taken.
	long := map[string]string{strings.Repeat("k", 246): "v"}
	if _, err := ta.c.WriteFile(t.Context(), dir+"/long", strings.NewReader("x"), agentclient.WriteOptions{Metadata: long}); err != nil {
		t.Errorf("a 246-byte key: %v", err)
	}

	// A malformed parameter is not silently dropped.
	req, _ := http.NewRequestWithContext(t.Context(), "PUT", ta.url+"/files?"+url.Values{
		"path": {dir + "/g"}, "metadata[k": {"v"}}.Encode(), strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("metadata[k=v: got %d, want 400", resp.StatusCode)
	}
}

// TestWatchEntry: a watch started with entry=true describes the path of
// each create, write, chmod and rename as it was then, with its metadata;
// a remove has none, and a watch without entry=true none at all.
func TestWatchEntry(t *testing.T) {
	ta := newAgent(t)
	ctx := t.Context()
	dir := t.TempDir()
	ch, stop := watchStream(t, ta, url.Values{"path": {dir}, "entry": {"true"}})
	defer stop()
	plain, stopPlain := watchStream(t, ta, url.Values{"path": {dir}})
	defer stopPlain()
	nextEvent(t, ch)
	nextEvent(t, plain) // watching

	md := map[string]string{"stage": "new"}
	if _, err := ta.c.WriteFile(ctx, dir+"/f.txt", strings.NewReader("12345"), agentclient.WriteOptions{Metadata: md}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		typ, path string
		entry     bool
	}{
		{api.FileEventCreate, dir + "/f.txt", true},
		{api.FileEventWrite, dir + "/f.txt", true},
		{api.FileEventRename, dir + "/g.txt", true},
		{api.FileEventRemove, dir + "/g.txt", false},
	} {
		if i == 2 {
			// Renamed once its create and write are seen: an entry is
			// taken when the change is seen, and f.txt would be gone.
			if _, err := ta.c.Rename(ctx, dir+"/f.txt", dir+"/g.txt"); err != nil {
				t.Fatal(err)
			}
		}
		if i == 3 {
			// Removed once seen renamed, likewise.
			if err := ta.c.Remove(ctx, dir+"/g.txt", false); err != nil {
				t.Fatal(err)
			}
		}
		e := nextEvent(t, ch)
		if e.Type != want.typ || e.Path != want.path {
			t.Fatalf("got %+v, want %s of %s", e, want.typ, want.path)
		}
		switch {
		case !want.entry && e.Entry != nil:
			t.Errorf("%s: got entry %+v, want none", e.Type, e.Entry)
		case want.entry && (e.Entry == nil || e.Entry.Path != want.path || e.Entry.Type != "file" || e.Entry.Size != 5 ||
			e.Entry.Owner != "root" || !maps.Equal(e.Entry.Metadata, md)):
			t.Errorf("%s: got entry %+v, want %s, a file of 5 bytes of root's with metadata %v", e.Type, e.Entry, want.path, md)
		}
		if p := nextEvent(t, plain); p.Entry != nil {
			t.Errorf("a watch without entry=true: got entry %+v", p.Entry)
		}
	}
}
