package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// counter starts a background shell loop that writes an increasing number to
// /tmp/count every 50 ms, descending from the agent so it survives pauses.
func startCounter(t *testing.T, id string) {
	t.Helper()
	run(t, id, `(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) >/dev/null 2>&1 &`)
}

func readCount(t *testing.T, id string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(run(t, id, "cat /tmp/count")))
	if err != nil {
		t.Fatalf("counter: %v", err)
	}
	return n
}

// startHTTP starts python's HTTP server on :8080 serving /srv.
func startHTTP(t *testing.T, id string) {
	t.Helper()
	run(t, id, `mkdir -p /srv && cd /srv && (python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &)`)
}

func pause(t *testing.T, id string) *api.Snapshot {
	t.Helper()
	sn, err := env.client.Pause(t.Context(), id)
	if err != nil {
		t.Fatalf("pause %s: %v", id, err)
	}
	if sn.Kind != api.SnapshotHibernate || sn.MachineID != id || sn.SizeBytes <= 0 || sn.Checksum == "" {
		t.Fatalf("pause %s returned %+v", id, sn)
	}
	return sn
}

func getMachine(t *testing.T, id string) *api.Machine {
	t.Helper()
	m, err := env.client.GetMachine(t.Context(), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return m
}

// TestPauseResume: processes, files, a listening server and the shell's
// state come back in a new machine id; the paused id is a read-only alias
// that connect follows; the new machine has its own identity.
func TestPauseResume(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	startCounter(t, m.ID)
	startHTTP(t, m.ID)
	run(t, m.ID, "echo before-pause > /srv/page.txt")
	httpGetEventually(t, "http://"+m.IP+":8080/page.txt")
	before := readCount(t, m.ID)

	sn := pause(t, m.ID)
	info := getMachine(t, m.ID)
	if info.State != api.StatePaused || info.SnapshotID != sn.ID || info.LatestID != m.ID || info.IP != "" {
		t.Fatalf("paused machine info = %+v", info)
	}
	// GET never wakes a paused machine; commands are refused with a hint.
	time.Sleep(200 * time.Millisecond)
	if getMachine(t, m.ID).State != api.StatePaused {
		t.Fatal("GET woke the paused machine")
	}
	_, err := env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{Shell: "true"})
	wantCode(t, err, "machine_not_running")

	resumed, err := env.client.Resume(t.Context(), sn.ID)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), resumed.ID) })
	if resumed.ID == m.ID || resumed.State != api.StateRunning || resumed.LineageID != m.ID || resumed.RestoredFrom != sn.ID {
		t.Fatalf("resumed = %+v", resumed)
	}
	if got := httpGetEventually(t, "http://"+resumed.IP+":8080/page.txt"); got != "before-pause\n" {
		t.Fatalf("page after resume = %q", got)
	}
	after := readCount(t, resumed.ID)
	time.Sleep(300 * time.Millisecond)
	if later := readCount(t, resumed.ID); after < before || later <= after {
		t.Fatalf("counter: %d before pause, %d and %d after resume; want it to go on counting", before, after, later)
	}

	// Identity, clock, and the agent's knowledge of the restore.
	hostname := strings.ReplaceAll(resumed.ID, "_", "-")
	out := run(t, resumed.ID, `hostname; cat /etc/hostname; echo $NULLSPACE_MACHINE_ID; date +%s; cat /run/nullspace/restore.json`)
	lines := strings.Split(out, "\n")
	if lines[0] != hostname || lines[1] != hostname || lines[2] != resumed.ID {
		t.Fatalf("identity after resume = %q, want hostname %s and machine id %s", out, hostname, resumed.ID)
	}
	if sec, _ := strconv.ParseInt(lines[3], 10, 64); abs(time.Now().Unix()-sec) > 2 {
		t.Fatalf("clock after resume = %s, host %d", lines[3], time.Now().Unix())
	}
	if !strings.Contains(lines[4], `"restore_count":1`) || !strings.Contains(lines[4], resumed.ID) {
		t.Fatalf("restore.json = %q", lines[4])
	}

	// The old id is an alias to the latest execution.
	info = getMachine(t, m.ID)
	if info.State != api.StatePaused || info.LatestID != resumed.ID {
		t.Fatalf("alias info = %+v, want paused with latest_id %s", info, resumed.ID)
	}
	conn, err := env.client.Connect(t.Context(), m.ID)
	if err != nil || conn.ID != resumed.ID {
		t.Fatalf("connect(original) = %+v, %v; want the running %s", conn, err, resumed.ID)
	}
	// Resuming the same snapshot again would fork the lineage from an
	// older state: refused.
	_, err = env.client.Resume(t.Context(), sn.ID)
	wantCode(t, err, "snapshot_superseded")
	assertNoLeftovers(t)
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestWriteThenPause: a file written through the API right before a pause
// is always there after the resume, 50 times over one alias chain.
func TestWriteThenPause(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	cur := m.ID
	for i := 0; i < 50; i++ {
		want := fmt.Sprintf("round %d\n", i)
		if _, err := env.client.WriteFileBytes(t.Context(), cur, fmt.Sprintf("/root/f%d.txt", i), []byte(want), 0o644); err != nil {
			t.Fatalf("round %d write: %v", i, err)
		}
		pause(t, cur)
		next, err := env.client.Connect(t.Context(), m.ID)
		if err != nil {
			t.Fatalf("round %d connect: %v", i, err)
		}
		cur = next.ID
		got, err := env.client.ReadFileBytes(t.Context(), cur, fmt.Sprintf("/root/f%d.txt", i))
		if err != nil || string(got) != want {
			t.Fatalf("round %d: read %q, %v; want %q", i, got, err, want)
		}
	}
	if _, err := env.client.KillMachine(t.Context(), cur); err != nil {
		t.Fatal(err)
	}
	// Killing the latest execution ends the machine: every alias goes, and
	// its hibernate snapshots with it.
	if info := getMachine(t, m.ID); info.State != api.StateKilled {
		t.Fatalf("original alias after killing the latest = %s, want killed", info.State)
	}
	snaps, err := env.client.ListSnapshots(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		if s.LineageID == m.ID {
			t.Fatalf("snapshot %s of the killed machine is still there", s.ID)
		}
	}
	assertNoLeftovers(t)
}

// TestAliasChain: three pause/resume cycles keep one chain; every alias
// leads to the latest execution; a call on an old alias acts on the latest
// execution (commands run there, a kill ends the machine).
func TestAliasChain(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	ids := []string{m.ID}
	for i := 0; i < 3; i++ {
		run(t, ids[len(ids)-1], fmt.Sprintf("echo %d >> /root/chain", i))
		pause(t, ids[len(ids)-1])
		// connect through the oldest alias each time
		next, err := env.client.Connect(t.Context(), m.ID)
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		ids = append(ids, next.ID)
	}
	head := ids[len(ids)-1]
	t.Cleanup(func() { env.client.KillMachine(context.Background(), head) })
	if got := run(t, head, "cat /root/chain"); got != "0\n1\n2\n" {
		t.Fatalf("chain file = %q", got)
	}
	for _, id := range ids[:3] {
		info := getMachine(t, id)
		if info.State != api.StatePaused || info.LatestID != head || info.LineageID != m.ID {
			t.Fatalf("alias %s = %+v, want paused, latest %s", id, info, head)
		}
		c, err := env.client.Connect(t.Context(), id)
		if err != nil || c.ID != head {
			t.Fatalf("connect(%s) = %v, %v; want %s", id, c, err, head)
		}
	}
	// A command on the original id runs in the latest execution.
	if got := run(t, m.ID, "cat /root/chain"); got != "0\n1\n2\n" {
		t.Fatalf("chain file through the original id = %q", got)
	}
	// Killing the original id ends the machine: the latest execution and
	// every alias.
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if info := getMachine(t, id); info.State != api.StateKilled {
			t.Fatalf("%s after killing the original id: %s, want killed", id, info.State)
		}
	}
	_, err := env.client.Connect(t.Context(), ids[1])
	wantCode(t, err, "machine_not_running")
	assertNoLeftovers(t)
}

// TestSnapshotChildren: create_snapshot leaves the source running; children
// are independent machines with their own address and filesystem, all
// serving HTTP at once; fork does both in one call.
func TestSnapshotChildren(t *testing.T) {
	src := newMachine(t, api.CreateMachineRequest{Template: "base"})
	startHTTP(t, src.ID)
	run(t, src.ID, "echo parent > /srv/page.txt")
	httpGetEventually(t, "http://"+src.IP+":8080/page.txt")

	sn, err := env.client.CreateSnapshot(t.Context(), src.ID)
	if err != nil {
		t.Fatal(err)
	}
	if sn.Kind != api.SnapshotReusable || sn.PauseWindowMS <= 0 {
		t.Fatalf("snapshot = %+v", sn)
	}
	if getMachine(t, src.ID).State != api.StateRunning {
		t.Fatal("source is not running after create_snapshot")
	}
	children := make([]*api.Machine, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			children[i], errs[i] = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{SnapshotID: sn.ID})
		}()
	}
	wg.Wait()
	ips := map[string]bool{src.IP: true}
	for i, c := range children {
		if errs[i] != nil {
			t.Fatalf("child %d: %v", i, errs[i])
		}
		t.Cleanup(func() { env.client.KillMachine(context.Background(), c.ID) })
		if ips[c.IP] || c.LineageID != c.ID || c.RestoredFrom != sn.ID {
			t.Fatalf("child %d = %+v", i, c)
		}
		ips[c.IP] = true
	}
	for i, c := range children {
		if got := httpGetEventually(t, "http://"+c.IP+":8080/page.txt"); got != "parent\n" {
			t.Fatalf("child %d page = %q", i, got)
		}
	}
	// Writes stay where they are made; entropy differs.
	run(t, children[0].ID, "echo child0 > /srv/mine.txt")
	for _, id := range []string{src.ID, children[1].ID, children[2].ID} {
		if out := run(t, id, "test -e /srv/mine.txt && echo leaked || echo ok"); out != "ok\n" {
			t.Fatalf("a child's write is visible in %s", id)
		}
	}
	r1 := run(t, children[1].ID, "head -c 16 /dev/urandom | od -An -tx1")
	r2 := run(t, children[2].ID, "head -c 16 /dev/urandom | od -An -tx1")
	if r1 == r2 {
		t.Fatalf("two children read the same random bytes %q", r1)
	}
	// The snapshot cannot go while children live, unless forced.
	wantCode(t, env.client.DeleteSnapshot(t.Context(), sn.ID, false), "snapshot_in_use")

	fork, err := env.client.Fork(t.Context(), src.ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range fork.Machines {
		t.Cleanup(func() { env.client.KillMachine(context.Background(), c.ID) })
		if got := httpGetEventually(t, "http://"+c.IP+":8080/page.txt"); got != "parent\n" {
			t.Fatalf("fork child page = %q", got)
		}
	}
	if len(fork.Machines) != 2 || fork.Snapshot.PauseWindowMS <= 0 {
		t.Fatalf("fork = %+v", fork)
	}
	assertNoLeftovers(t)
}

// TestCheckpointHistory: checkpoints of a running machine and pauses build
// a history; an older checkpoint is restored in place, keeping the id, and
// the newer ones stay listed.
func TestCheckpointHistory(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	run(t, m.ID, "echo v1 > /root/state")
	c1, err := env.client.Checkpoint(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if getMachine(t, m.ID).State != api.StateRunning {
		t.Fatal("checkpoint stopped the machine")
	}
	run(t, m.ID, "echo v2 > /root/state")
	s2 := pause(t, m.ID)
	head, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), head.ID) })
	run(t, head.ID, "echo v3 > /root/state")

	hist, err := env.client.Checkpoints(t.Context(), head.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].ID != c1.ID || hist[1].ID != s2.ID || hist[0].Generation >= hist[1].Generation {
		t.Fatalf("history = %+v, want [%s %s] by generation", hist, c1.ID, s2.ID)
	}
	restored, err := env.client.RestoreCheckpoint(t.Context(), m.ID, c1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if restored.ID != head.ID || restored.State != api.StateRunning || restored.RestoredFrom != c1.ID {
		t.Fatalf("restored = %+v, want %s running from %s", restored, head.ID, c1.ID)
	}
	if got := run(t, head.ID, "cat /root/state"); got != "v1\n" {
		t.Fatalf("state after restoring the first checkpoint = %q", got)
	}
	hist, _ = env.client.Checkpoints(t.Context(), head.ID)
	if len(hist) != 2 {
		t.Fatalf("history after restore = %d entries, want both kept", len(hist))
	}
	assertNoLeftovers(t)
}

// TestSnapshotCorrupt: a damaged page file is refused as snapshot_corrupt,
// and nothing is left of the attempt.
func TestSnapshotCorrupt(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	sn, err := env.client.CreateSnapshot(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.DeleteSnapshot(context.Background(), sn.ID, true) })
	pages := filepath.Join(env.cfg.DataDir, "snapshots", sn.ID, "pages.img")
	f, err := os.OpenFile(pages, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 4096)
	b[0] ^= 0xff
	f.WriteAt(b, 4096)
	f.Close()
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{SnapshotID: sn.ID})
	wantCode(t, err, "snapshot_corrupt")
	assertNoLeftovers(t)
}

// TestHooksAndVolumes: a shared volume is outside the snapshot and is
// remounted on resume and in children; on_pause and on_resume hooks run.
func TestHooksAndVolumes(t *testing.T) {
	name := fmt.Sprintf("e2e-vol-%d", time.Now().UnixNano())
	if _, err := env.client.CreateVolume(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.DeleteVolume(context.Background(), name) })
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal",
		Volumes: []api.VolumeMount{{Name: name, Path: "/data"}},
		Hooks: &api.Hooks{OnPause: []string{`echo "paused $NULLSPACE_MACHINE_ID" >> /data/log`},
			OnResume: []string{`echo "resumed $NULLSPACE_MACHINE_ID" >> /data/log`}}})
	run(t, m.ID, "echo from-source > /data/shared.txt")
	hostDir := filepath.Join(env.cfg.DataDir, "volumes", "team_default", name)
	if b, err := os.ReadFile(filepath.Join(hostDir, "shared.txt")); err != nil || string(b) != "from-source\n" {
		t.Fatalf("volume file on the host = %q, %v", b, err)
	}
	wantCode(t, env.client.DeleteVolume(t.Context(), name), "volume_in_use")

	pause(t, m.ID)
	// External storage: changed while the machine sleeps, seen after.
	os.WriteFile(filepath.Join(hostDir, "while-paused.txt"), []byte("host\n"), 0o644)
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if got := run(t, r.ID, "cat /data/while-paused.txt /data/log"); got != "host\npaused "+m.ID+"\nresumed "+r.ID+"\n" {
		t.Fatalf("volume after resume = %q", got)
	}
	sn, err := env.client.CreateSnapshot(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	child, err := env.client.CreateMachine(t.Context(), api.CreateMachineRequest{SnapshotID: sn.ID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), child.ID) })
	run(t, child.ID, "echo from-child > /data/child.txt")
	if got := run(t, r.ID, "cat /data/child.txt"); got != "from-child\n" {
		t.Fatalf("a child's volume write seen by the parent = %q", got)
	}
}

// TestConcurrentLifecycle: a pause racing a snapshot on one machine is
// serialized: each call succeeds or is refused (conflict, or not running
// once the pause won), and the machine ends in one consistent state.
func TestConcurrentLifecycle(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	var wg sync.WaitGroup
	var pauseErr, snapErr error
	wg.Add(2)
	go func() { defer wg.Done(); _, pauseErr = env.client.Pause(t.Context(), m.ID) }()
	go func() { defer wg.Done(); _, snapErr = env.client.CreateSnapshot(t.Context(), m.ID) }()
	wg.Wait()
	if pauseErr != nil {
		wantCode(t, pauseErr, "conflict")
	}
	if snapErr != nil && !strings.Contains(snapErr.Error(), "conflict") && !strings.Contains(snapErr.Error(), "machine_not_running") {
		t.Fatalf("snapshot error = %v", snapErr)
	}
	info := getMachine(t, m.ID)
	switch {
	case pauseErr == nil && info.State == api.StatePaused:
		if _, err := env.client.Connect(t.Context(), m.ID); err != nil {
			t.Fatal(err)
		}
	case pauseErr != nil && info.State == api.StateRunning:
	default:
		t.Fatalf("after the race: pause err %v, state %s", pauseErr, info.State)
	}
	if c, _ := env.client.Connect(t.Context(), m.ID); c != nil {
		t.Cleanup(func() { env.client.KillMachine(context.Background(), c.ID) })
	}
}
