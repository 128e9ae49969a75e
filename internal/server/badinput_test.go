package server

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/minrate"
	"nullspace.dev/nullspace/internal/telemetry"
)

// TestEdgeListenerBadInput drives the edge's listener as serve builds it:
// headers between the edge's limit and net/http's get the edge's JSON 431
// (not net/http's plain text), and a body trickled at a byte a second is
// cut off with 408 body_too_slow, the connection closed.
func TestEdgeListenerBadInput(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, EdgeAddr: "127.0.0.1:0", EdgeDomain: "localhost", EdgeWakeTimeout: time.Second,
		EdgeHoldBodyBytes: 1, EdgeHeaderTimeout: time.Second, MinBodyRate: minrate.Rate{Bytes: 100, Window: 500 * time.Millisecond}}
	logger := slog.New(slog.DiscardHandler)
	l, err := startEdge(t.Context(), cfg, nil, nil, telemetry.New(nil), logger)
	if err != nil {
		t.Fatal(err)
	}
	go l.serve(logger)
	t.Cleanup(func() { l.http.Close() })
	addr := l.ln.Addr().String()

	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Cookie", strings.Repeat("a", 100<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e api.Error
	if resp.StatusCode != 431 || json.Unmarshal(b, &e) != nil || e.Code != errdefs.CodeHeadersTooLarge {
		t.Fatalf("100 KiB of headers: %d %q, want 431 with the JSON error headers_too_large", resp.StatusCode, b)
	}

	// An edge URL that is not a machine's is refused without reading the
	// body; what is left of it must not hold the connection either.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n\r\n", addr)
	go func() {
		for range 1000 {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(time.Second / 10)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(c)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a trickled body held the connection for %v, want it closed within 5s", took)
	}
}
