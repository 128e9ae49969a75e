package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// watching is a file watch stream read in the background.
type watching struct {
	t      *testing.T
	events chan api.FileEvent
	done   chan error
	cancel context.CancelFunc
	id     string
	last   int64
}

func watch(t *testing.T, id string, opts client.WatchOptions) *watching {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &watching{t: t, events: make(chan api.FileEvent, 1000), done: make(chan error, 1), cancel: cancel, id: opts.WatchID, last: opts.After}
	go func() {
		w.done <- env.client.WatchDir(ctx, id, opts, func(e api.FileEvent) error {
			w.events <- e
			return nil
		})
		close(w.events)
	}()
	t.Cleanup(cancel)
	if opts.WatchID == "" {
		first := w.next()
		if first.Type != api.FileEventWatching || first.WatchID == "" {
			t.Fatalf("first event %+v, want watching", first)
		}
		w.id = first.WatchID
	}
	return w
}

func (w *watching) next() api.FileEvent {
	w.t.Helper()
	select {
	case e, ok := <-w.events:
		if !ok {
			w.t.Fatalf("the watch stream ended: %v", <-w.done)
		}
		if e.Seq > 0 {
			w.last = e.Seq
		}
		return e
	case <-time.After(20 * time.Second):
		w.t.Fatal("no file event in 20 s")
	}
	return api.FileEvent{}
}

// expect reads events until each of want ("type path" or "rename
// old>new") has come, in order; others may come in between.
func (w *watching) expect(want ...string) {
	w.t.Helper()
	var seen []string
	for len(want) > 0 {
		e := w.next()
		k := e.Type + " " + e.Path
		if e.OldPath != "" {
			k = e.Type + " " + e.OldPath + ">" + e.Path
		}
		seen = append(seen, k)
		if k == want[0] {
			want = want[1:]
		}
		if len(seen) > 200 {
			w.t.Fatalf("saw %v, still waiting for %v", seen, want)
		}
	}
}

// TestWatchFiles: a recursive watch sees files and directories made,
// written, renamed and removed through the API and by commands; a client
// that reconnects with the watch's id and last seq gets what changed
// while it was away, also across a pause and resume; removing the watch
// ends its stream; bad input is refused.
func TestWatchFiles(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	id := m.ID
	run(t, id, "mkdir -p /workspace/w")
	w := watch(t, id, client.WatchOptions{Path: "/workspace/w", Recursive: true})

	if _, err := env.client.WriteFileBytes(ctx, id, "/workspace/w/a.txt", []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.expect("create /workspace/w/a.txt", "write /workspace/w/a.txt")
	if _, err := env.client.Rename(ctx, id, "/workspace/w/a.txt", "/workspace/w/b.txt"); err != nil {
		t.Fatal(err)
	}
	w.expect("rename /workspace/w/a.txt>/workspace/w/b.txt")
	run(t, id, "mkdir -p /workspace/w/sub/deep && echo x > /workspace/w/sub/deep/c.txt && rm /workspace/w/b.txt")
	w.expect("create /workspace/w/sub", "create /workspace/w/sub/deep/c.txt", "remove /workspace/w/b.txt")

	// Away and back: the changes made meanwhile come on reconnection.
	w.cancel()
	<-w.done
	run(t, id, "echo y >> /workspace/w/sub/deep/c.txt; touch /workspace/w/while-away")
	w2 := watch(t, id, client.WatchOptions{WatchID: w.id, After: w.last})
	w2.expect("write /workspace/w/sub/deep/c.txt", "create /workspace/w/while-away")

	// Across a pause: the watch is in the machine's memory.
	w2.cancel()
	<-w2.done
	pause(t, id)
	resumed, err := env.client.Connect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.WithoutCancel(ctx), resumed.ID) })
	w3 := watch(t, resumed.ID, client.WatchOptions{WatchID: w.id, After: w2.last})
	run(t, resumed.ID, "echo z > /workspace/w/after-resume")
	w3.expect("create /workspace/w/after-resume")

	if err := env.client.Unwatch(ctx, resumed.ID, w.id); err != nil {
		t.Fatal(err)
	}
	for {
		if e := w3.next(); e.Type == api.FileEventEnd {
			break
		}
	}
	wantCode(t, env.client.Unwatch(ctx, resumed.ID, w.id), "watch_not_found")
	err = env.client.WatchDir(ctx, resumed.ID, client.WatchOptions{Path: "/workspace/w/after-resume"}, func(api.FileEvent) error { return nil })
	wantCode(t, err, "not_a_directory")
	err = env.client.WatchDir(ctx, resumed.ID, client.WatchOptions{Path: "/nope"}, func(api.FileEvent) error { return nil })
	wantCode(t, err, "file_not_found")

	// The CLI prints the changes, one a line.
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	cli := exec.CommandContext(cctx, repoPath("bin/nullspace"), "--api-url", "http://"+env.inst.Addr, "--api-key", env.key,
		"files", "watch", resumed.ID, "/workspace/w", "--recursive")
	out := &lockedBuffer{}
	cli.Stdout = out
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	// It is watching once a change shows: make changes until one does.
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; !strings.Contains(out.String(), "create /workspace/w/cli-"); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("nullspace files watch printed %q", out.String())
		}
		run(t, resumed.ID, fmt.Sprintf("touch /workspace/w/cli-%d", i))
		time.Sleep(200 * time.Millisecond)
	}
	run(t, resumed.ID, "mv /workspace/w/cli-0 /workspace/w/cli-moved")
	for !strings.Contains(out.String(), "rename /workspace/w/cli-0 -> /workspace/w/cli-moved") {
		if time.Now().After(deadline) {
			t.Fatalf("nullspace files watch printed %q", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	cli.Wait()

	// Polling: follow=false answers with what is held and returns.
	var polled []string
	err = env.client.WatchDir(ctx, resumed.ID, client.WatchOptions{Path: "/workspace", NoFollow: true}, func(e api.FileEvent) error {
		polled = append(polled, e.Type)
		return nil
	})
	if err != nil || strings.Join(polled, ",") != "watching" {
		t.Fatalf("a poll of a new watch: %v, %v", polled, err)
	}
}
