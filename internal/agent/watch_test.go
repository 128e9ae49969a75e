package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
)

// watchStream opens GET /files/watch with query q and returns its events.
func watchStream(t *testing.T, ta testAgent, q url.Values) (<-chan api.FileEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", ta.url+"/files/watch?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		t.Fatalf("watch %v: %d %s", q, resp.StatusCode, e.Code)
	}
	ch := make(chan api.FileEvent, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var e api.FileEvent
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				ch <- e
			}
		}
	}()
	return ch, cancel
}

func nextEvent(t *testing.T, ch <-chan api.FileEvent) api.FileEvent {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("the watch stream ended")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event in 5 s")
	}
	return api.FileEvent{}
}

// TestWatch: a watch reports an upload through the files API as a create
// and a write of its path (never its temporary file), outlives its stream
// and resumes from a seq, and ends when removed.
func TestWatch(t *testing.T) {
	ta := newAgent(t)
	dir := t.TempDir()
	ch, stop := watchStream(t, ta, url.Values{"path": {dir}})
	first := nextEvent(t, ch)
	if first.Type != api.FileEventWatching || first.WatchID == "" {
		t.Fatalf("first event %+v", first)
	}
	ctx := t.Context()
	if _, err := ta.c.WriteFile(ctx, dir+"/up.txt", strings.NewReader("one"), agentclient.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"create", "write"} {
		if e := nextEvent(t, ch); e.Type != want || e.Path != dir+"/up.txt" {
			t.Fatalf("event %+v, want %s of up.txt", e, want)
		}
	}
	if _, err := ta.c.WriteFile(ctx, dir+"/up.txt", strings.NewReader("two"), agentclient.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	last := nextEvent(t, ch)
	if last.Type != api.FileEventWrite || last.Path != dir+"/up.txt" {
		t.Fatalf("an overwrite: %+v, want a write", last)
	}

	// Away: what happens meanwhile comes on the next stream.
	stop()
	os.WriteFile(filepath.Join(dir, "meanwhile"), nil, 0o644)
	time.Sleep(100 * time.Millisecond)
	ch2, stop2 := watchStream(t, ta, url.Values{"watch_id": {first.WatchID}, "after": {"3"}})
	defer stop2()
	if e := nextEvent(t, ch2); e.Type != api.FileEventCreate || e.Path != dir+"/meanwhile" || e.Seq != 4 {
		t.Fatalf("after reconnecting: %+v, want create of meanwhile (seq 4)", e)
	}
	req, _ := http.NewRequestWithContext(ctx, "DELETE", ta.url+"/files/watch/"+first.WatchID, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %v %v", resp, err)
	}
	resp.Body.Close()
	for {
		e := nextEvent(t, ch2)
		if e.Type == api.FileEventEnd {
			break
		}
	}
}
