package envd_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/e2bcompat/envd"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem/filesystemconnect"
)

// upload posts body to /files as E2B's SDKs do (as root), with h's
// headers added over theirs.
func upload(t *testing.T, f *fixture, query, contentType string, body io.Reader, h http.Header) (int, string) {
	t.Helper()
	sdk := http.Header{"E2b-Sandbox-Id": {"sbx1"}, "X-Access-Token": {accessToken},
		"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("root:"))}}
	for k, v := range h {
		sdk[k] = v
	}
	resp, b := f.filesCall(t, "POST", query, body, contentType, sdk)
	return resp.StatusCode, b
}

// TestFileMetadata: metadata sent as X-Metadata-* headers of an upload
// (keys lower case, as envd keeps them) is on every file of it, and comes
// back from the upload, Stat, ListDir and Move; an overwrite without it
// clears it; metadata envd would refuse writes nothing.
func TestFileMetadata(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	dir := t.TempDir()
	md := map[string]string{"author": "mish", "purpose": "upload"}
	// A bare X-Metadata- names no key: skipped, as envd does.
	h := http.Header{"X-Metadata-Author": {"mish"}, "x-metadata-PURPOSE": {"upload"}, "X-Metadata-": {"nameless"}}

	a := filepath.Join(dir, "a.txt")
	status, body := upload(t, f, "path="+url.QueryEscape(a), "application/octet-stream", strings.NewReader("a"), h)
	var written []struct {
		Path     string            `json:"path"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(body), &written); status != 200 || err != nil || len(written) != 1 || !maps.Equal(written[0].Metadata, md) {
		t.Fatalf("octet-stream upload: %d %s; want metadata %v", status, body, md)
	}

	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, name := range []string{"m1.txt", "m2.txt"} {
		w, _ := mw.CreateFormFile("file", filepath.Join(dir, name))
		w.Write([]byte(name))
	}
	mw.Close()
	status, body = upload(t, f, "", mw.FormDataContentType(), &buf, h)
	written = nil
	if err := json.Unmarshal([]byte(body), &written); status != 200 || err != nil || len(written) != 2 {
		t.Fatalf("multipart upload: %d %s", status, body)
	}
	for _, w := range written {
		if !maps.Equal(w.Metadata, md) {
			t.Errorf("multipart upload of %s: got metadata %v, want %v", w.Path, w.Metadata, md)
		}
	}

	st, err := f.files.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: a}))
	if err != nil || !maps.Equal(st.Msg.GetEntry().GetMetadata(), md) {
		t.Errorf("Stat: got %v, %v; want metadata %v", st, err, md)
	}
	ls, err := f.files.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: dir}))
	if err != nil || len(ls.Msg.GetEntries()) != 3 {
		t.Fatalf("ListDir: %v, %v", ls, err)
	}
	for _, e := range ls.Msg.GetEntries() {
		if !maps.Equal(e.GetMetadata(), md) {
			t.Errorf("ListDir %s: got metadata %v, want %v", e.GetName(), e.GetMetadata(), md)
		}
	}
	b := filepath.Join(dir, "b.txt")
	mv, err := f.files.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: a, Destination: b}))
	if err != nil || !maps.Equal(mv.Msg.GetEntry().GetMetadata(), md) {
		t.Errorf("Move: got %v, %v; want metadata %v", mv, err, md)
	}

	status, body = upload(t, f, "path="+url.QueryEscape(b), "application/octet-stream", strings.NewReader("b"), nil)
	if status != 200 || strings.Contains(body, "metadata") {
		t.Errorf("an overwrite without metadata: %d %s; want none", status, body)
	}
	st, err = f.files.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: b}))
	if err != nil || st.Msg.GetEntry().GetMetadata() != nil {
		t.Errorf("Stat after an overwrite: got %v, %v; want no metadata", st, err)
	}

	bad := filepath.Join(dir, "bad.txt")
	status, body = upload(t, f, "path="+url.QueryEscape(bad), "application/octet-stream", strings.NewReader("x"),
		http.Header{"X-Metadata-Good": {"caf\xc3\xa9"}})
	if status != 400 || !strings.Contains(body, "invalid_argument") {
		t.Errorf("a value that is not ASCII: %d %s; want 400 invalid_argument", status, body)
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused upload wrote %s: %v", bad, err)
	}
}

// TestWatchIncludeEntry: with include_entry, a create, write or the new
// name of a rename carries the entry as it was then, metadata included;
// a rename's old name and a remove carry none, nor does any event of a
// watch without include_entry. The same for the non-streaming watchers.
func TestWatchIncludeEntry(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	// A missing event fails the test in a minute, not at go test's timeout.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	watch := func(include bool) *connect.ServerStreamForClient[filesystem.WatchDirResponse] {
		w, err := f.files.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, IncludeEntry: include}))
		if err != nil {
			t.Fatal(err)
		}
		if !w.Receive() || w.Msg().GetStart() == nil {
			t.Fatalf("first watch event %v, %v: want start", w.Msg(), w.Err())
		}
		return w
	}
	with, without := watch(true), watch(false)
	c, err := f.files.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, IncludeEntry: true}))
	if err != nil {
		t.Fatal(err)
	}

	md := map[string]string{"stage": "new"}
	a := filepath.Join(dir, "a.txt")
	if status, body := upload(t, f, "path="+url.QueryEscape(a), "application/octet-stream", strings.NewReader("abc"),
		http.Header{"X-Metadata-Stage": {"new"}}); status != 200 {
		t.Fatalf("upload: %d %s", status, body)
	}
	if _, err := f.files.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: a, Destination: filepath.Join(dir, "b.txt")})); err != nil {
		t.Fatal(err)
	}
	type want struct {
		event string
		entry bool
	}
	wants := []want{
		{"EVENT_TYPE_CREATE a.txt", true}, {"EVENT_TYPE_WRITE a.txt", true},
		{"EVENT_TYPE_RENAME a.txt", false}, {"EVENT_TYPE_CREATE b.txt", true},
		{"EVENT_TYPE_REMOVE b.txt", false},
	}
	check := func(what string, got []*filesystem.FilesystemEvent, include bool) {
		t.Helper()
		if len(got) != len(wants) {
			t.Fatalf("%s: got %d events %v, want %v", what, len(got), got, wants)
		}
		for i, fe := range got {
			w := wants[i]
			if ev := fe.GetType().String() + " " + fe.GetName(); ev != w.event {
				t.Errorf("%s event %d: got %s, want %s", what, i, ev, w.event)
			}
			e := fe.GetEntry()
			switch {
			case !(include && w.entry):
				if fe.Entry != nil {
					t.Errorf("%s %s: got entry %v, want none", what, w.event, e)
				}
			case e == nil || e.GetName() != fe.GetName() || e.GetPath() != filepath.Join(dir, fe.GetName()) ||
				e.GetType() != filesystem.FileType_FILE_TYPE_FILE || e.GetSize() != 3 || !maps.Equal(e.GetMetadata(), md):
				t.Errorf("%s %s: got entry %v, want %s, a file of 3 bytes with metadata %v", what, w.event, e, fe.GetName(), md)
			}
		}
	}
	streamed := func(w *connect.ServerStreamForClient[filesystem.WatchDirResponse], out *[]*filesystem.FilesystemEvent, n int) {
		for len(*out) < n && w.Receive() {
			if fe := w.Msg().GetFilesystem(); fe != nil {
				*out = append(*out, fe)
			}
		}
	}
	polled := func(out *[]*filesystem.FilesystemEvent, n int) {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(*out) < n; {
			g, err := f.files.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: c.Msg.GetWatcherId()}))
			if err != nil {
				t.Fatal(err)
			}
			*out = append(*out, g.Msg.GetEvents()...)
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The entry is taken when the agent sees the change: b.txt is removed
	// only once every watch has seen it created (else it may be gone by
	// then, and have no entry, as with envd).
	var gotWith, gotWithout, gotPolled []*filesystem.FilesystemEvent
	streamed(with, &gotWith, 4)
	streamed(without, &gotWithout, 4)
	polled(&gotPolled, 4)
	if _, err := f.files.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: filepath.Join(dir, "b.txt")})); err != nil {
		t.Fatal(err)
	}
	streamed(with, &gotWith, 5)
	streamed(without, &gotWithout, 5)
	polled(&gotPolled, 5)
	check("WatchDir with include_entry", gotWith, true)
	check("WatchDir without", gotWithout, false)
	check("GetWatcherEvents with include_entry", gotPolled, true)
}

// TestWatchAsks: envd asks the agent for entries when include_entry is
// set, and for a watch that refuses network file systems unless
// allow_network_mounts is (the agent's tests check the refusal itself).
func TestWatchAsks(t *testing.T) {
	var mu sync.Mutex
	var got []url.Values
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" && r.URL.Path == "/files/watch" && r.URL.Query().Get("watch_id") == "" {
			mu.Lock()
			got = append(got, r.URL.Query()) // a new watch (not a resume)
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Write([]byte(`{"type":"watching","watch_id":"wch_1","time":"2026-01-01T00:00:00Z"}` + "\n"))
	}))
	defer agentSrv.Close()
	ac := agentclient.New(agentSrv.URL, "agent-token", nil)
	open := func(ctx context.Context, r envd.Request) (*envd.Sandbox, error) {
		return &envd.Sandbox{Ctx: ctx, Done: func() {}, MachineID: "mch_1", Lineage: "mch_1", Agent: ac, Touch: func() {}}, nil
	}
	srv := httptest.NewServer(envd.New(open, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	files := filesystemconnect.NewFilesystemClient(http.DefaultClient, srv.URL, connect.WithProtoJSON(),
		connect.WithInterceptors(headerInterceptor{}))

	tests := []struct {
		name                 string
		include, allowMounts bool
		entry, network       string // the agent's query; "" absent
	}{
		{"defaults", false, false, "", "false"},
		{"include_entry", true, false, "true", "false"},
		{"allow_network_mounts", false, true, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			w, err := files.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: "/tmp",
				IncludeEntry: tt.include, AllowNetworkMounts: tt.allowMounts}))
			if err != nil {
				t.Fatal(err)
			}
			w.Receive()
			cancel()
			if _, err := files.CreateWatcher(t.Context(), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: "/tmp",
				IncludeEntry: tt.include, AllowNetworkMounts: tt.allowMounts})); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 2 {
				t.Fatalf("the agent got %d new watches, want 2", len(got))
			}
			for i, q := range got {
				if q.Get("entry") != tt.entry || q.Get("allow_network_mounts") != tt.network {
					t.Errorf("call %d: entry=%q allow_network_mounts=%q, want %q and %q", i, q.Get("entry"), q.Get("allow_network_mounts"), tt.entry, tt.network)
				}
			}
		})
	}
}
