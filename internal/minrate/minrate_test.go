package minrate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

var testRate = Rate{Bytes: 100, Window: 300 * time.Millisecond}

// readAll answers the body's length, or the error the body failed with.
func readAll(pause time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var n int
		buf := make([]byte, 32<<10)
		for {
			m, err := r.Body.Read(buf)
			n += m
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				p := errdefs.Classify(err)
				w.WriteHeader(p.Status)
				fmt.Fprint(w, p.Code)
				return
			}
			time.Sleep(pause) // a slow consumer
		}
		fmt.Fprint(w, n)
	}
}

// trickle sends a request whose body comes one byte every interval, and
// returns what the server answered and how long until the connection
// ended.
func trickle(t *testing.T, addr string, size int, interval time.Duration) (string, time.Duration) {
	return trickleConn(t, addr, "Connection: close\r\n", size, interval)
}

// trickleConn is trickle with extra header lines.
func trickleConn(t *testing.T, addr, header string, size int, interval time.Duration) (string, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n", header, size)
	go func() {
		for range size {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(interval)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c) // until the server closes the connection
	return string(b), time.Since(start)
}

func TestSlowBodyIsCutOff(t *testing.T) {
	srv := httptest.NewServer(Handler(readAll(0), testRate, nil))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	// Twenty clients at 1 byte per 50 ms (20 B/s, under 100 B per 300 ms)
	// are all answered 408 and disconnected within a bounded time.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, took := trickle(t, addr, 1000, 50*time.Millisecond)
			if !strings.HasPrefix(resp, "HTTP/1.1 408") || !strings.Contains(resp, errdefs.CodeBodyTooSlow) {
				t.Errorf("slow upload answered %q, want 408 body_too_slow", resp)
			}
			if took > 3*time.Second {
				t.Errorf("slow upload held its connection for %v, want it cut off within 3s", took)
			}
		}()
	}
	wg.Wait()
}

func TestFastAndSlowConsumer(t *testing.T) {
	for _, tt := range []struct {
		name  string
		pause time.Duration
		size  int
	}{
		{"fast large upload", 0, 32 << 20},
		// The handler takes 10 × the window to read: not the client's fault.
		{"slow consumer", 100 * time.Millisecond, 10 * 32 << 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(Handler(readAll(tt.pause), testRate, nil))
			defer srv.Close()
			resp, err := http.Post(srv.URL, "application/octet-stream", bytes.NewReader(make([]byte, tt.size)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != fmt.Sprint(tt.size) {
				t.Fatalf("got %d %q, want 200 %d", resp.StatusCode, b, tt.size)
			}
		})
	}
}

// A body within the rate leaves no deadline behind: a response streamed
// for longer than the window afterwards (its request's context stays
// alive), and the next request on the same connection, are not cut off.
func TestDeadlineClearedAfterBody(t *testing.T) {
	srv := httptest.NewServer(Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		r.Body.Read(make([]byte, 1)) // again after the end, as decoders may
		for i := range 3 {
			if r.Context().Err() != nil {
				fmt.Fprint(w, "cancelled\n")
				return
			}
			fmt.Fprintf(w, "%d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(testRate.Window)
		}
	}), testRate, nil))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 2 {
		fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "0\n1\n2\n" {
			t.Fatalf("request %d: got %q, %v; want the whole stream", i, b, err)
		}
		time.Sleep(2 * testRate.Window) // idle between requests
	}
}

// A handler that answers without reading the body does not leave net/http
// reading the rest of a trickled body for ever.
func TestUnreadBody(t *testing.T) {
	srv := httptest.NewServer(Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
	}), testRate, nil))
	defer srv.Close()
	resp, took := trickleConn(t, srv.Listener.Addr().String(), "", 1000, 50*time.Millisecond) // keep-alive
	if !strings.HasPrefix(resp, "HTTP/1.1 404") || took > 3*time.Second {
		t.Fatalf("answered %q, connection held %v; want the 404 and the connection closed within 3s", resp, took)
	}
}

func TestExempt(t *testing.T) {
	srv := httptest.NewServer(Handler(readAll(0), testRate, func(r *http.Request) bool { return true }))
	defer srv.Close()
	resp, _ := trickle(t, srv.Listener.Addr().String(), 20, 50*time.Millisecond)
	if !strings.HasPrefix(resp, "HTTP/1.1 200") {
		t.Fatalf("exempt slow upload answered %q, want 200", resp)
	}
}
