package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/template"
)

// The issue-10 measurements: the edge beside the same work without it, in
// the same run, on one machine running a Python http.server (the base
// template when it is there, else minimal with busybox httpd):
//
//   - wake on HTTP: time to the first byte of a GET through the edge to the
//     paused machine, beside connect + the same GET sent straight to the
//     machine's IP;
//   - proxy overhead on the running machine: latency of 1 KiB and 1 MiB
//     GETs and requests per second (8 at a time) through the edge beside
//     straight to the IP, on kept-alive connections; a WebSocket echo round
//     trip both ways;
//   - 200 concurrent requests to the paused machine: the wall time to the
//     last answer, and the resumes they caused (must be 1).

const (
	metricEdgeWake    = "edge_wake_ttfb"           // GET via the edge to a paused machine; connect + GET to its IP
	metricEdgeGet1K   = "edge_get_1k"              // GET 1 KiB via the edge; straight to the IP
	metricEdgeGet1M   = "edge_get_1m"              // GET 1 MiB via the edge; straight to the IP
	metricEdgeRPS     = "edge_requests_per_second" // 1 KiB GETs, 8 at a time, for 2 s
	metricEdgeWS      = "edge_websocket_echo"      // one WebSocket echo round trip
	metricEdgeHerd    = "edge_200_concurrent_wake" // wall time to the last of 200 answers
	metricEdgeResumes = "edge_200_concurrent_resumes"
	metricEdgeCPU     = "edge_process_cpu_per_request" // this process's CPU per request during the throughput runs

	// sideDirect is the baseline of the edge metrics: the same requests
	// sent straight to the machine's IP on the server host.
	sideDirect = "direct"
	unitRPS    = "req/s"
	unitCount  = "count"

	edgeHTTPPort = 8080
	edgeWSPort   = 8082
	edgeRPSConc  = 8
)

// edgeServerPy serves /1k and /1m (and anything else: "ok") over HTTP/1.1
// with keep-alive, one thread per connection. Two settings differ from
// `python3 -m http.server`, whose numbers would be its own and not the
// edge's: the answer goes out in one write (its headers and body in two
// writes wait ~40 ms for a delayed ACK), and the listen backlog is 256,
// not 5 (200 connections at once overflow 5, and the dropped SYNs are
// retried after 1, 3, 7, ... seconds).
const edgeServerPy = `import http.server, sys
B = {"/1k": b"x" * 1024, "/1m": b"x" * (1 << 20)}
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 256
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16
    def do_GET(self):
        b = B.get(self.path.split("?")[0], b"ok\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
`

func measureEdge(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	tmpl := template.Minimal
	if slices.Contains(ns.extraTemplates, template.Base) {
		tmpl = template.Base
	}
	fmt.Fprintf(os.Stderr, "bench: edge (template %s): wake on HTTP, proxy overhead, WebSocket echo, 200 concurrent wakes\n", tmpl)
	m, release, err := ns.autoResumeMachine(ctx, tmpl)
	if err != nil {
		return err
	}
	defer release()
	if err := startEdgeServers(ctx, ns.client, m.ID, tmpl); err != nil {
		return err
	}
	u, err := ns.client.MachineURL(ctx, m.ID, edgeHTTPPort, 0)
	if err != nil {
		return err
	}
	ws, err := ns.client.MachineURL(ctx, m.ID, edgeWSPort, 0)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, u.URL+"/1k"); err != nil {
		return fmt.Errorf("the machine's server does not answer through the edge: %w", err)
	}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}

	// Wake on HTTP, interleaved with connect + direct.
	for i := range cfg.n {
		for _, side := range alternate(i, sideNullspace, sideDirect) {
			if err := pauseSettled(ctx, ns.client, m.ID); err != nil {
				return err
			}
			var took time.Duration
			if side == sideNullspace {
				took, err = ttfb(ctx, fresh, u.URL+"/")
			} else {
				start := time.Now()
				r, cerr := ns.client.Connect(ctx, m.ID)
				if cerr != nil {
					return cerr
				}
				connected := time.Since(start)
				var first time.Duration
				first, err = ttfb(ctx, fresh, fmt.Sprintf("http://%s:%d/", r.IP, edgeHTTPPort))
				took = connected + first // connect, then the request
			}
			if err != nil {
				return err
			}
			res.addDuration(metricEdgeWake, side, tmpl, took)
		}
		progress(i+1, cfg.n)
	}

	// Proxy overhead on the running machine.
	head, err := ns.client.Connect(ctx, m.ID)
	if err != nil {
		return err
	}
	direct := fmt.Sprintf("http://%s:%d", head.IP, edgeHTTPPort)
	kept := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: time.Minute}
	for _, path := range []string{"/1k", "/1m"} {
		metric := map[string]string{"/1k": metricEdgeGet1K, "/1m": metricEdgeGet1M}[path]
		for range 3 { // warm both connections
			get(ctx, kept, u.URL+path)
			get(ctx, kept, direct+path)
		}
		n := max(cfg.n*10, 200)
		if path == "/1m" {
			n = max(cfg.n*2, 50)
		}
		for i := range n {
			for _, side := range alternate(i, sideNullspace, sideDirect) {
				target := map[string]string{sideNullspace: u.URL + path, sideDirect: direct + path}[side]
				start := time.Now()
				if err := get(ctx, kept, target); err != nil {
					return err
				}
				res.addDuration(metric, side, tmpl, time.Since(start))
			}
		}
	}
	for i := range 3 {
		for _, side := range alternate(i, sideNullspace, sideDirect) {
			target := map[string]string{sideNullspace: u.URL + "/1k", sideDirect: direct + "/1k"}[side]
			cpu0 := processCPU()
			rps, err := throughput(ctx, kept, target, edgeRPSConc, 2*time.Second)
			if err != nil {
				return err
			}
			res.add(metricEdgeRPS, side, tmpl, unitRPS, rps)
			// CPU of this process (load generator, and on the edge side
			// the edge too) per request, in µs.
			res.add(metricEdgeCPU, side, tmpl, "us", float64(processCPU()-cpu0)/float64(time.Microsecond)/(rps*2))
		}
	}
	if err := wsEcho(ctx, ws.WSURL+"/", fmt.Sprintf("ws://%s:%d/", head.IP, edgeWSPort), max(cfg.n*10, 200), tmpl, res); err != nil {
		return err
	}

	// 200 requests at once to the paused machine.
	herd := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 2 * time.Minute}
	for i := range min(cfg.n, 5) {
		h, err := latest(ctx, ns.client, m.ID)
		if err != nil {
			return err
		}
		if _, err := ns.client.Pause(ctx, h); err != nil {
			return err
		}
		seq, err := lastEventSeq(ctx, ns.client)
		if err != nil {
			return err
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := get(ctx, herd, u.URL+"/1k"); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		wall := time.Since(start)
		close(errs)
		if err := <-errs; err != nil {
			return fmt.Errorf("200 concurrent requests: %w", err)
		}
		resumes, err := resumesFrom(ctx, ns.client, seq, h)
		if err != nil {
			return err
		}
		res.addDuration(metricEdgeHerd, sideNullspace, tmpl, wall)
		res.add(metricEdgeResumes, sideNullspace, tmpl, unitCount, float64(resumes))
		progress(i+1, min(cfg.n, 5))
	}
	return nil
}

// startEdgeServers starts the HTTP server and the WebSocket echo server in
// a machine.
func startEdgeServers(ctx context.Context, c *client.Client, id, tmpl string) error {
	serve := []string{"busybox", "httpd", "-f", "-p", fmt.Sprint(edgeHTTPPort), "-h", "/srv"}
	setup := "mkdir -p /srv && head -c 1024 /dev/zero > /srv/1k && head -c 1048576 /dev/zero > /srv/1m && echo ok > /srv/index.html"
	if tmpl == template.Base {
		if _, err := c.WriteFileBytes(ctx, id, "/srv/edge_server.py", []byte(edgeServerPy), 0o644); err != nil {
			return err
		}
		serve = []string{"python3", "/srv/edge_server.py", fmt.Sprint(edgeHTTPPort)}
		wsScript, err := os.ReadFile("e2e/testdata/ws_echo.py")
		if err != nil {
			return fmt.Errorf("the WebSocket echo server (run the benchmark from the repository root): %w", err)
		}
		if _, err := c.WriteFileBytes(ctx, id, "/srv/ws_echo.py", wsScript, 0o644); err != nil {
			return err
		}
	}
	if res, err := c.RunCommand(ctx, id, api.RunCommandRequest{Shell: setup}); err != nil || res.ExitCode != 0 {
		return fmt.Errorf("prepare /srv: %v %+v", err, res)
	}
	if _, err := c.StartCommand(ctx, id, api.RunCommandRequest{Cmd: serve, Cwd: "/srv", Background: true}); err != nil {
		return err
	}
	if tmpl == template.Base {
		if _, err := c.StartCommand(ctx, id, api.RunCommandRequest{Cmd: []string{"python3", "/srv/ws_echo.py", fmt.Sprint(edgeWSPort)}, Background: true}); err != nil {
			return err
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// alternate returns the sides in an order that swaps every iteration, so
// that drift hits both alike.
func alternate(i int, a, b string) []string {
	if i%2 == 1 {
		return []string{b, a}
	}
	return []string{a, b}
}

func latest(ctx context.Context, c *client.Client, id string) (string, error) {
	m, err := c.GetMachine(ctx, id)
	if err != nil {
		return "", err
	}
	return m.LatestID, nil
}

// pauseSettled pauses the latest execution of machine id and lets the host
// settle for 200 ms, so that a wake measured next starts from quiet.
func pauseSettled(ctx context.Context, c *client.Client, id string) error {
	head, err := latest(ctx, c, id)
	if err != nil {
		return err
	}
	if _, err := c.Pause(ctx, head); err != nil {
		return err
	}
	return sleep(ctx, 200*time.Millisecond)
}

// lastEventSeq returns the sequence number of the newest event.
func lastEventSeq(ctx context.Context, c *client.Client) (int64, error) {
	var last int64
	for {
		evs, err := c.ListEvents(ctx, client.EventQuery{After: last, Limit: 1000})
		if err != nil || len(evs) == 0 {
			return last, err
		}
		last = evs[len(evs)-1].Seq
	}
}

// resumesFrom counts the executions resumed from the paused execution id
// since event seq.
func resumesFrom(ctx context.Context, c *client.Client, seq int64, id string) (int, error) {
	evs, err := c.ListEvents(ctx, client.EventQuery{After: seq, Types: []string{api.EventMachineResumed}, Limit: 1000})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range evs {
		if e.Details["from"] == id {
			n++
		}
	}
	return n, nil
}

func waitHTTP(ctx context.Context, u string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(u)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return err
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// ttfb sends a GET and returns the time to its first response byte; it
// reads the rest of the answer.
func ttfb(ctx context.Context, c *http.Client, u string) (time.Duration, error) {
	var first time.Time
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Now() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	return first.Sub(start), nil
}

func get(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	return nil
}

// throughput runs conc clients sending GETs back to back for d and returns
// the answers per second.
func throughput(ctx context.Context, c *http.Client, u string, conc int, d time.Duration) (float64, error) {
	var mu sync.Mutex
	var n int
	var firstErr error
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				err := get(ctx, c, u)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					n++
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / d.Seconds(), firstErr
}

// processCPU returns the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// wsEcho measures WebSocket echo round trips through the edge and straight
// to the machine, on one connection each.
func wsEcho(ctx context.Context, viaEdge, direct string, n int, tmpl string, res *results) error {
	if tmpl != template.Base {
		return nil // the echo server needs Python
	}
	conns := map[string]*websocket.Conn{}
	for side, u := range map[string]string{sideNullspace: viaEdge, sideDirect: direct} {
		c, _, err := websocket.Dial(ctx, u, nil)
		if err != nil {
			return fmt.Errorf("websocket %s: %w", u, err)
		}
		defer c.CloseNow()
		conns[side] = c
	}
	msg := []byte("ping")
	for i := range n {
		for _, side := range alternate(i, sideNullspace, sideDirect) {
			c := conns[side]
			start := time.Now()
			if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
				return err
			}
			if _, _, err := c.Read(ctx); err != nil {
				return err
			}
			res.addDuration(metricEdgeWS, side, tmpl, time.Since(start))
		}
	}
	for _, c := range conns {
		c.Close(websocket.StatusNormalClosure, "")
	}
	return nil
}

// printEdge prints the edge's numbers and its targets: a wake within 1.1x
// of connect + direct (p50), under 1 ms added at p50, throughput at least
// 80% of direct, and one resume for 200 concurrent requests.
func (r *results) printEdge(w io.Writer) {
	var tmpl string
	for _, s := range r.Series {
		if s.Metric == metricEdgeWake {
			tmpl = s.Template
		}
	}
	if tmpl == "" {
		return
	}
	p := func(metric, side string, q float64) float64 {
		s := r.get(metric, side, tmpl)
		if s == nil || len(s.Samples) == 0 {
			return 0
		}
		v := slices.Clone(s.Samples)
		slices.Sort(v)
		return percentile(v, q)
	}
	verdict := func(ok bool) string {
		if ok {
			return "ok"
		}
		return "MISSED"
	}
	fmt.Fprintf(w, "\nEdge (issue 10), template %s:\n", tmpl)
	we, wd := p(metricEdgeWake, sideNullspace, .5), p(metricEdgeWake, sideDirect, .5)
	fmt.Fprintf(w, "  wake on HTTP, time to first byte: p50 %.1f ms via the edge, %.1f ms connect + direct: %.2fx (target 1.1x) %s\n",
		we, wd, ratio(we, wd), verdict(ratio(we, wd) <= 1.1))
	for _, m := range []struct{ metric, name string }{{metricEdgeGet1K, "1 KiB"}, {metricEdgeGet1M, "1 MiB"}, {metricEdgeWS, "WebSocket echo"}} {
		e50, d50, e99, d99 := p(m.metric, sideNullspace, .5), p(m.metric, sideDirect, .5), p(m.metric, sideNullspace, .99), p(m.metric, sideDirect, .99)
		if e50 == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s: p50 %.2f ms via the edge, %.2f ms direct (+%.2f ms, target < 1 ms %s); p99 %.2f / %.2f ms\n",
			m.name, e50, d50, e50-d50, verdict(e50-d50 < 1), e99, d99)
	}
	re, rd := p(metricEdgeRPS, sideNullspace, .5), p(metricEdgeRPS, sideDirect, .5)
	fmt.Fprintf(w, "  1 KiB requests/s (%d at a time): %.0f via the edge, %.0f direct: %.0f%% (target >= 80%%) %s\n",
		edgeRPSConc, re, rd, ratio(re, rd)*100, verdict(ratio(re, rd) >= 0.8))
	ce, cd := p(metricEdgeCPU, sideNullspace, .5), p(metricEdgeCPU, sideDirect, .5)
	fmt.Fprintf(w, "  CPU of the benchmark process per request meanwhile: %.0f µs with the edge, %.0f µs without: the edge costs ~%.0f µs of CPU per request\n",
		ce, cd, ce-cd)
	if s := r.get(metricEdgeResumes, sideNullspace, tmpl); s != nil {
		ok := true
		for _, v := range s.Samples {
			ok = ok && v == 1
		}
		fmt.Fprintf(w, "  200 concurrent requests to a paused machine: last answer after p50 %.0f ms (max %.0f), resumes %v %s\n",
			p(metricEdgeHerd, sideNullspace, .5), p(metricEdgeHerd, sideNullspace, 1), s.Samples, verdict(ok))
	}
}
