package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// The edge on real machines: public URLs reach a machine's ports, wake it
// when it is paused and auto-resumable, and refuse everything else before
// anything is woken.

// edgeURL asks the API for the URL of a machine's port.
func edgeURL(t *testing.T, id string, port int) *api.MachineURL {
	t.Helper()
	u, err := env.client.MachineURL(t.Context(), id, port, 0)
	if err != nil {
		t.Fatalf("url of %s:%d: %v", id, port, err)
	}
	return u
}

// edgeClient sends requests to edge URLs; it never follows redirects.
var edgeClient = &http.Client{
	Timeout:       60 * time.Second,
	Transport:     &http.Transport{MaxIdleConnsPerHost: 256},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// edgeGet GETs a URL and returns the response with its body read.
func edgeGet(t *testing.T, u string) (*http.Response, []byte) {
	t.Helper()
	resp, err := edgeClient.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", u, err)
	}
	return resp, b
}

// wantEdgeError checks an edge refusal.
func wantEdgeError(t *testing.T, resp *http.Response, body []byte, status int, code string) api.Error {
	t.Helper()
	var e api.Error
	if resp.StatusCode != status || json.Unmarshal(body, &e) != nil || e.Code != code || e.Message == "" {
		t.Fatalf("got %d %s, want %d with code %s", resp.StatusCode, body, status, code)
	}
	if status == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "5" {
		t.Fatalf("503 with Retry-After %q, want 5", resp.Header.Get("Retry-After"))
	}
	return e
}

// killLineage kills the latest execution of id's lineage when the test
// ends (a wake by traffic gives it an id the test never saw).
func killLineage(t *testing.T, id string) {
	t.Cleanup(func() {
		if m, err := env.client.GetMachine(context.Background(), id); err == nil {
			env.client.KillMachine(context.Background(), m.LatestID)
		}
		env.client.KillMachine(context.Background(), id)
	})
}

// startPortServer starts a background command in a machine and waits
// until something listens on its port (the edge stops answering
// port_not_listening).
func startPortServer(t *testing.T, id string, port int, shell string) *api.MachineURL {
	t.Helper()
	if _, err := env.client.StartCommand(t.Context(), id, api.RunCommandRequest{Shell: shell, Cwd: "/srv", Background: true}); err != nil {
		t.Fatalf("start %q: %v", shell, err)
	}
	u := edgeURL(t, id, port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := edgeClient.Get(u.URL + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), "port_not_listening") {
				return u
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q is not answering on port %d through the edge: %v", shell, port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeTestdata copies a script from testdata into a machine.
func writeTestdata(t *testing.T, id, name string) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.client.WriteFileBytes(t.Context(), id, "/srv/"+name, b, 0o755); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

// edgeResumes returns the machine.resumed events since seq of executions
// resumed from one of ids, checking each was caused by the edge on port.
func edgeResumes(t *testing.T, after int64, port int, ids ...string) []api.Event {
	t.Helper()
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{After: after, Types: []string{api.EventMachineResumed}, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Event
	for _, e := range evs {
		from, _ := e.Details["from"].(string)
		for _, id := range ids {
			if from == id {
				if e.Cause != "edge" || e.Details["port"] != float64(port) {
					t.Fatalf("resume event %+v: want cause edge and port %d", e, port)
				}
				out = append(out, e)
			}
		}
	}
	return out
}

// TestEdgeWakesOnTraffic: python's http.server in a base machine, reached
// through the edge while it runs; paused by its lease and woken by one
// curl that gets the file; the same URL after more pauses, from Python's
// urllib, Node's fetch and a browser's navigation; SSE, a 50 MiB download
// and a WebSocket echo after a wake.
func TestEdgeWakesOnTraffic(t *testing.T) {
	for _, tool := range []string{"curl", "python3", "node"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: the edge is tested with the clients users have (curl, Python's urllib, Node's fetch); install it", tool)
		}
	}
	m := newMachine(t, api.CreateMachineRequest{Template: "base", TimeoutMS: ptr(int64(10000)), OnTimeout: api.TimeoutPause, AutoResume: true})
	killLineage(t, m.ID)
	run(t, m.ID, "mkdir -p /srv && echo hello > /srv/hello.txt")
	writeTestdata(t, m.ID, "sse.py")
	writeTestdata(t, m.ID, "ws_echo.py")
	u := startPortServer(t, m.ID, 8080, "python3 -m http.server 8080 --bind 0.0.0.0")
	if resp, b := edgeGet(t, u.URL+"/hello.txt"); resp.StatusCode != 200 || string(b) != "hello\n" {
		t.Fatalf("running machine through the edge: %d %q", resp.StatusCode, b)
	}
	startPortServer(t, m.ID, 8081, "python3 /srv/sse.py 8081")
	startPortServer(t, m.ID, 8082, "python3 /srv/ws_echo.py 8082")

	t.Run("lease pause, then one curl wakes it", func(t *testing.T) {
		waitState(t, m.ID, api.StatePaused, 20*time.Second)
		seq := lastSeq(t)
		out, err := exec.Command("curl", "-sS", "--max-time", "60", u.OriginURL+"/hello.txt").CombinedOutput()
		if err != nil || string(out) != "hello\n" {
			t.Fatalf("curl %s/hello.txt on the paused machine: %v %q", u.OriginURL, err, out)
		}
		info := getMachine(t, m.ID)
		if info.LatestID == m.ID || getMachine(t, info.LatestID).State != api.StateRunning {
			t.Fatalf("after the wake: latest %s is not a running new execution", info.LatestID)
		}
		if evs := edgeResumes(t, seq, 8080, m.ID); len(evs) != 1 {
			t.Fatalf("%d resume events by the edge, want 1", len(evs))
		}
		// A wake restarts the lease window, like connect.
		if l := getMachine(t, info.LatestID); l.RemainingMS < 5000 {
			t.Fatalf("woken machine's lease has %d ms left of 10000", l.RemainingMS)
		}
		// The rest pauses explicitly.
		if _, err := env.client.SetTimeout(t.Context(), m.ID, 10*time.Minute, ""); err != nil {
			t.Fatal(err)
		}
	})

	// Every client the reference documents name, each after a pause of
	// its own: the URL made before the first pause keeps working.
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"python urllib", []string{"python3", "-c", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=60).read().decode())", u.URL + "/hello.txt"}},
		{"node fetch", []string{"node", "-e", "fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t), e => { console.error(e); process.exit(1) })", u.URL + "/hello.txt"}},
		// A browser opens the URL: curl with the headers a navigation
		// sends, following the redirect to the port's own origin, which
		// browsers resolve under *.localhost as curl does.
		{"browser navigation", []string{"curl", "-sS", "-L", "--max-time", "60", "-H", "Sec-Fetch-Mode: navigate", "-H", "Accept: text/html", u.URL + "/hello.txt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head := getMachine(t, m.ID).LatestID
			pause(t, head)
			seq := lastSeq(t)
			out, err := exec.Command(tc.cmd[0], tc.cmd[1:]...).CombinedOutput()
			if err != nil || string(out) != "hello\n" {
				t.Fatalf("%s on the paused machine: %v %q", tc.name, err, out)
			}
			if evs := edgeResumes(t, seq, 8080, head); len(evs) != 1 {
				t.Fatalf("%d resume events by the edge, want 1", len(evs))
			}
		})
	}

	t.Run("server-sent events stream", func(t *testing.T) {
		resp, err := edgeClient.Get(edgeURL(t, m.ID, 8081).URL + "/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		first, err := br.ReadString('\n')
		got := time.Now()
		if err != nil || first != "data: 0\n" {
			t.Fatalf("first event %q: %v", first, err)
		}
		rest, _ := io.ReadAll(br)
		if !strings.Contains(string(rest), "data: 2") || time.Since(got) < 1500*time.Millisecond {
			t.Fatalf("events were not streamed as they came: rest %q %v after the first", rest, time.Since(got))
		}
	})

	t.Run("websocket echo after a wake", func(t *testing.T) {
		head := getMachine(t, m.ID).LatestID
		pause(t, head)
		ws := edgeURL(t, m.ID, 8082).WSURL
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, ws+"/", nil)
		if err != nil {
			t.Fatalf("websocket to the paused machine: %v", err)
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for _, msg := range []string{"one", strings.Repeat("x", 70000)} {
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, b, err := c.Read(ctx)
			if err != nil || string(b) != "echo:"+msg {
				t.Fatalf("echo of %d bytes: %d bytes back, %v", len(msg), len(b), err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("50 MiB download intact", func(t *testing.T) {
		head := getMachine(t, m.ID).LatestID
		want := run(t, head, "head -c 52428800 /dev/urandom > /srv/big.bin && sha256sum /srv/big.bin | cut -d' ' -f1")
		defer run(t, head, "rm -f /srv/big.bin")
		resp, err := edgeClient.Get(u.URL + "/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || n != 52428800 || hex.EncodeToString(h.Sum(nil)) != strings.TrimSpace(want) {
			t.Fatalf("download: %d bytes, %v, sha256 %x, want %s", n, err, h.Sum(nil), want)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+env.inst.Addr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+env.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, name := range []string{`nullspace_edge_wakes_total{result="ok"}`, "nullspace_edge_requests_total{", "nullspace_edge_wake_duration_seconds_bucket",
			"nullspace_edge_held_requests_total", "nullspace_edge_websockets_open"} {
			if resp.StatusCode != 200 || !strings.Contains(string(b), name) {
				t.Errorf("/metrics has no %s", name)
			}
		}
	})
}

// TestEdgeContract: without auto_resume a paused machine answers with the
// 503 contract and stays paused; bad signatures are refused and wake
// nothing; a port nothing listens on is 502; a port that is never
// reachable cannot get a URL.
func TestEdgeContract(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	a := newMachine(t, api.CreateMachineRequest{Template: "minimal", OnTimeout: api.TimeoutPause, AutoResume: true})
	killLineage(t, a.ID)
	for _, id := range []string{m.ID, a.ID} {
		run(t, id, "mkdir -p /srv && echo hi > /srv/index.html && (busybox httpd -p 8080 -h /srv &)")
	}
	u := edgeURL(t, m.ID, 8080)
	if resp, b := edgeGet(t, u.URL+"/index.html"); resp.StatusCode != 200 || string(b) != "hi\n" {
		t.Fatalf("running: %d %q", resp.StatusCode, b)
	}
	resp, b := edgeGet(t, edgeURL(t, m.ID, 8081).URL)
	if e := wantEdgeError(t, resp, b, 502, "port_not_listening"); !strings.Contains(e.Message, "8081") {
		t.Fatalf("message %q does not name the port", e.Message)
	}
	_, err := env.client.MachineURL(t.Context(), m.ID, 49983, 0)
	wantCode(t, err, "port_not_allowed")
	_, err = env.client.MachineURL(t.Context(), m.ID, 0, 0)
	wantCode(t, err, "port_not_allowed")

	ua := edgeURL(t, a.ID, 8080)
	short, err := env.client.MachineURL(t.Context(), a.ID, 8080, time.Second)
	if err != nil || short.ExpiresAt == nil {
		t.Fatalf("expiring URL: %+v %v", short, err)
	}
	other := edgeURL(t, a.ID, 8081)
	pause(t, m.ID)
	pause(t, a.ID)
	seq := lastSeq(t)

	resp, b = edgeGet(t, u.URL+"/index.html")
	e := wantEdgeError(t, resp, b, 503, "machine_paused_auto_resume_disabled")
	if e.Retryable || e.SuggestedAction == "" {
		t.Fatalf("auto-resume disabled: %+v, want retryable false and a suggested action", e)
	}
	time.Sleep(1100 * time.Millisecond) // the short URL expires
	sigOf := func(s string) string { return s[strings.LastIndex(s, "-")+1:] }
	base := ua.URL[:strings.LastIndex(ua.URL, "-")+1]
	for _, tc := range []struct {
		name, url string
		status    int
		code      string
	}{
		{"forged", base + strings.Repeat("a", 24), 403, "url_signature_invalid"},
		{"truncated", ua.URL[:len(ua.URL)-4], 400, "url_invalid"},
		{"expired", short.URL, 403, "url_expired"},
		{"other port's signature", base + sigOf(other.URL), 403, "url_signature_invalid"},
		{"another machine's signature", base + sigOf(u.URL), 403, "url_signature_invalid"},
		{"unsigned", ua.URL[:strings.LastIndex(ua.URL, "-")], 401, "url_signature_missing"},
	} {
		resp, b := edgeGet(t, tc.url+"/index.html")
		wantEdgeError(t, resp, b, tc.status, tc.code)
	}
	for _, id := range []string{m.ID, a.ID} {
		if s := getMachine(t, id).State; s != api.StatePaused {
			t.Fatalf("machine %s is %s after refused requests, want paused", id, s)
		}
	}
	if evs := edgeResumes(t, seq, 8080, m.ID, a.ID); len(evs) != 0 {
		t.Fatalf("refused requests woke machines: %+v", evs)
	}
	// The good URL still wakes the auto-resumable one.
	if resp, b := edgeGet(t, ua.URL+"/index.html"); resp.StatusCode != 200 || string(b) != "hi\n" {
		t.Fatalf("after the refusals: %d %q", resp.StatusCode, b)
	}
}

// pageMachine creates a minimal machine that pauses at its lease's end and
// auto-resumes, serving /srv/index.html ("page") with busybox httpd on port
// 8080, and returns it and the port's URL once the page answers through
// the edge.
func pageMachine(t *testing.T, req api.CreateMachineRequest) (*api.Machine, *api.MachineURL) {
	t.Helper()
	req.Template, req.OnTimeout, req.AutoResume = "minimal", api.TimeoutPause, true
	m := newMachine(t, req)
	killLineage(t, m.ID)
	run(t, m.ID, "mkdir -p /srv && echo page > /srv/index.html && (busybox httpd -p 8080 -h /srv &)")
	u := edgeURL(t, m.ID, 8080)
	if resp, b := edgeGet(t, u.URL+"/index.html"); resp.StatusCode != 200 || string(b) != "page\n" {
		t.Fatalf("running machine through the edge: %d %q", resp.StatusCode, b)
	}
	return m, u
}

// TestEdgeConcurrentWake: 200 requests at once to one paused machine make
// exactly one resume, and every one of them is answered with the page.
func TestEdgeConcurrentWake(t *testing.T) {
	m, u := pageMachine(t, api.CreateMachineRequest{})
	pause(t, m.ID)
	seq := lastSeq(t)
	const n = 200
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := edgeClient.Get(fmt.Sprintf("%s/index.html?i=%d", u.URL, i))
			if err != nil {
				errs <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "page\n" {
				errs <- fmt.Sprintf("%d %q", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("request: %s", e)
	}
	if d := time.Since(start); d > 35*time.Second {
		t.Errorf("the last answer came after %v, past the 30 s wake window", d)
	}
	if evs := edgeResumes(t, seq, 8080, m.ID); len(evs) != 1 {
		t.Fatalf("%d resumes for %d concurrent requests, want 1", len(evs), n)
	}
}

// TestEdgeKillWhileHeld: requests held during a wake end (with the page,
// 404 or the 503 contract) when the machine is killed meanwhile; none
// hangs.
func TestEdgeKillWhileHeld(t *testing.T) {
	m, u := pageMachine(t, api.CreateMachineRequest{})
	pause(t, m.ID)
	var wg sync.WaitGroup
	statuses := make(chan int, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := edgeClient.Get(u.URL + "/index.html")
			if err != nil {
				t.Errorf("held request: %v", err)
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	time.Sleep(30 * time.Millisecond)
	// Kill the lineage: its latest execution, until the latest is killed
	// (a kill of the paused id that waited for the wake removes only that
	// alias, and the woken execution goes on).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			info, err := env.client.GetMachine(context.Background(), m.ID)
			if err != nil {
				return
			}
			if h, err := env.client.GetMachine(context.Background(), info.LatestID); err == nil && h.State == api.StateKilled {
				return
			}
			env.client.KillMachine(context.Background(), info.LatestID)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	wg.Wait()
	<-done
	close(statuses)
	for s := range statuses {
		if s != 200 && s != 404 && s != 503 {
			t.Errorf("held request answered %d, want 200, 404 or 503", s)
		}
	}
	resp, b := edgeGet(t, u.URL+"/index.html")
	wantEdgeError(t, resp, b, 404, "machine_not_found")
}

// TestEdgeIdleWake: traffic through the edge keeps an idle-suspending
// machine awake; silence pauses it; the next request wakes it.
func TestEdgeIdleWake(t *testing.T) {
	m, u := pageMachine(t, api.CreateMachineRequest{IdleTimeoutMS: 2500})
	for range 8 {
		if resp, _ := edgeGet(t, u.URL+"/index.html"); resp.StatusCode != 200 {
			t.Fatalf("busy machine: %d", resp.StatusCode)
		}
		time.Sleep(600 * time.Millisecond)
	}
	if s := getMachine(t, m.ID).State; s != api.StateRunning {
		t.Fatalf("a machine with traffic every 0.6 s and a 2.5 s idle timeout is %s", s)
	}
	waitState(t, m.ID, api.StatePaused, 15*time.Second)
	if resp, b := edgeGet(t, u.URL+"/index.html"); resp.StatusCode != 200 || string(b) != "page\n" {
		t.Fatalf("idle-suspended machine woken by traffic: %d %q", resp.StatusCode, b)
	}
}

// TestEdgeSlowAndLargeHeaders: a client that sends its headers a byte at a
// time is cut off (it never reaches a wake), and headers over 64 KiB are
// refused.
func TestEdgeSlowAndLargeHeaders(t *testing.T) {
	conn, err := net.Dial("tcp", env.inst.EdgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	cut := false
	for _, c := range []byte("GET /m/8080-0123456789abcdef0123-aaaaaaaaaaaaaaaaaaaaaaaa/ HTTP/1.1\r\nHost: x\r\nX-Slow: ") {
		if _, err := conn.Write([]byte{c}); err != nil {
			cut = true
			break
		}
		time.Sleep(300 * time.Millisecond)
		if time.Since(start) > 8*time.Second {
			break
		}
	}
	if !cut {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := conn.Read(make([]byte, 1024))
		cut = err != nil
	}
	if !cut {
		t.Fatal("a client sending headers a byte every 0.3 s was not cut off by the 2 s header timeout")
	}

	req, _ := http.NewRequest(http.MethodGet, "http://"+env.inst.EdgeAddr+"/m/x", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 100<<10))
	resp, err := edgeClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("100 KiB header: %d, want 431", resp.StatusCode)
	}
	// A body larger than the hold cap, sent to a paused machine, gets the
	// retryable 503 instead of hanging.
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", OnTimeout: api.TimeoutPause, AutoResume: true})
	killLineage(t, m.ID)
	u := edgeURL(t, m.ID, 8080)
	pause(t, m.ID)
	resp, err = edgeClient.Post(u.URL+"/upload", "application/octet-stream", bytes.NewReader(make([]byte, 2<<20)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := wantEdgeError(t, resp, b, 503, "machine_wake_body_too_large"); !e.Retryable {
		t.Fatalf("%+v is not retryable", e)
	}
}

// TestEdgeStartsStopped: a stopped machine with auto_resume is started by a
// request (its disk kept, a fresh boot), which waits while its main
// process, the server, comes up.
func TestEdgeStartsStopped(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", OnTimeout: api.TimeoutPause, AutoResume: true,
		Command: []string{"/bin/sh", "-c", "sleep 1; exec busybox httpd -f -p 8080 -h /srv"}})
	run(t, m.ID, "mkdir -p /srv && echo kept > /srv/index.html")
	u := edgeURL(t, m.ID, 8080)
	stopMachine(t, m.ID, 0)
	seq := lastSeq(t)
	resp, b := edgeGet(t, u.URL+"/index.html")
	if resp.StatusCode != 200 || string(b) != "kept\n" {
		t.Fatalf("stopped machine woken by a request: %d %q", resp.StatusCode, b)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{After: seq, MachineID: m.ID, Types: []string{api.EventMachineStarted}})
	if err != nil || len(evs) != 1 || evs[0].Cause != "edge" || evs[0].Details["port"] != float64(8080) {
		t.Fatalf("start events %+v (%v), want one with cause edge and port 8080", evs, err)
	}
}
