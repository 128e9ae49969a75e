package edge

// Benchmarks of the proxy alone, in one process on loopback (go test -bench
// . ./internal/edge): a Go client straight to a Go server, through the
// standard library's reverse proxy, and through the edge. cpu-us/op is the
// process's CPU per request (client, proxy and server together).

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"syscall"
	"testing"
	"time"
)

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func load(b *testing.B, u string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	c0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(u)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	b.ReportMetric(float64(cpuNow()-c0)/float64(b.N)/1000, "cpu-us/op")
}

var body1k = make([]byte, 1024)

func upstream(b *testing.B) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body1k) }))
	b.Cleanup(up.Close)
	return up
}

func BenchmarkDirect(b *testing.B) { load(b, upstream(b).URL+"/x") }

func BenchmarkPlainReverseProxy(b *testing.B) {
	up := upstream(b)
	t, _ := url.Parse(up.URL)
	rp := httputil.NewSingleHostReverseProxy(t)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 64}
	px := httptest.NewServer(rp)
	b.Cleanup(px.Close)
	load(b, px.URL+"/x")
}

func BenchmarkEdge(b *testing.B) {
	h := newHarness(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body1k) }), Config{})
	u, _ := h.edge.URL(lineage, h.port, time.Time{}, false)
	load(b, u.URL+"/x")
}
