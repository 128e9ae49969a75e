package peer_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/peer"
)

// machineServer listens like a machine's agent port and runs serve on each
// connection.
func machineServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func echo(c net.Conn) { io.Copy(c, c) }

// relayNode is node n1's peer listener with the relay mounted, reaching
// machine m1 at addr; port 9 of m1 refuses.
func relayNode(t *testing.T, addr string) (*peer.Relays, peer.Target) {
	t.Helper()
	relays := &peer.Relays{Dial: func(ctx context.Context, machineID string, port int) (net.Conn, error) {
		if machineID != "m1" {
			return nil, fmt.Errorf("find machine %s: %w", machineID, peer.ErrNoSuchMachine)
		}
		if port == 9 {
			return nil, errors.New("connect: connection refused")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	mux := http.NewServeMux()
	mux.Handle(peer.RelayPath, (&peer.Verifier{Self: "n1", Key: testKey}).Middleware(relays))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		relays.Close()
	})
	return relays, peer.Target{Node: "n1", URL: srv.URL}
}

var n2 = &peer.Client{Self: "n2", Key: testKey}

func TestRelayEcho(t *testing.T) {
	_, target := relayNode(t, machineServer(t, echo))
	ctx, cancel := context.WithCancel(t.Context())
	conn, err := n2.Dial(ctx, target, "m1", 2222)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The relay outlives the context it was dialed with.
	cancel()

	data := make([]byte, 4<<20)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		errc <- err
	}()
	got := make([]byte, len(data))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("echo differs from what was sent")
	}
}

// TestRelayHalfClose: the client's CloseWrite reaches the machine as EOF,
// and the machine can still answer.
func TestRelayHalfClose(t *testing.T) {
	_, target := relayNode(t, machineServer(t, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c) // until the client's EOF
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes", n)
	}))
	conn, err := n2.Dial(t.Context(), target, "m1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(make([]byte, 100_000)); err != nil {
		t.Fatal(err)
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("relay conn %T has no CloseWrite", conn)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read the answer after CloseWrite: %v", err)
	}
	if string(got) != "got 100000 bytes" {
		t.Errorf("answer %q, want %q", got, "got 100000 bytes")
	}
}

func TestRelayRefused(t *testing.T) {
	_, target := relayNode(t, machineServer(t, echo))
	tests := []struct {
		name       string
		client     *peer.Client
		machine    string
		port       int
		status     int
		code       string
		noSuch     bool
		wantInText string
	}{
		{name: "unknown machine", client: n2, machine: "m404", port: 22, status: 404, code: "machine_not_found", noSuch: true,
			wantInText: "machine m404 has no live sandbox on this node"},
		{name: "dial fails", client: n2, machine: "m1", port: 9, status: 502, code: "upstream_failed",
			wantInText: "dial machine m1 port 9: connect: connection refused"},
		{name: "port 0", client: n2, machine: "m1", port: 0, status: 400, code: "invalid_argument"},
		{name: "port too high", client: n2, machine: "m1", port: 65536, status: 400, code: "invalid_argument"},
		{name: "no machine id", client: n2, machine: "", port: 22, status: 400, code: "invalid_argument"},
		{name: "wrong key", client: &peer.Client{Self: "n2", Key: otherKey}, machine: "m1", port: 22, status: 401,
			code: "peer_unauthenticated", wantInText: "wrong signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := tt.client.Dial(t.Context(), target, tt.machine, tt.port)
			if err == nil {
				conn.Close()
				t.Fatal("Dial succeeded, want refused")
			}
			var se *peer.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Dial: %v, want a *StatusError", err)
			}
			if se.Status != tt.status || se.Code != tt.code || se.Node != "n1" {
				t.Errorf("refusal %d %s from %s, want %d %s from n1", se.Status, se.Code, se.Node, tt.status, tt.code)
			}
			if got := errors.Is(err, peer.ErrNoSuchMachine); got != tt.noSuch {
				t.Errorf("errors.Is(err, ErrNoSuchMachine) = %v, want %v", got, tt.noSuch)
			}
			if !bytes.Contains([]byte(se.Message), []byte(tt.wantInText)) {
				t.Errorf("message %q, want it to hold %q", se.Message, tt.wantInText)
			}
		})
	}
}

// TestRelayNotUpgradedOnRefusal: a refused relay is a plain HTTP answer on
// a connection that stays HTTP.
func TestRelayNotUpgradedOnRefusal(t *testing.T) {
	_, target := relayNode(t, machineServer(t, echo))
	req, err := http.NewRequest(http.MethodGet, target.URL+peer.RelayPath+"?machine=m404&port=22", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "nullspace-relay")
	n2.Sign(req, "n1", peer.RouteRelay, "")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Upgrade") != "" {
		t.Errorf("status %d Upgrade %q, want 404 without an upgrade", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
}

// TestRelayBufferedAfter101: bytes the owner sends right behind its 101
// (a machine that speaks first, like an SSH server) are read, not lost in
// the handshake's buffer. The owner here is a raw listener that writes
// the 101 and the banner in one write, after checking the request's
// signature as the verifier would.
func TestRelayBufferedAfter101(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	v := &peer.Verifier{Self: "n1", Key: testKey}
	verr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			verr <- err
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			verr <- err
			return
		}
		if _, err := v.Verify(req); err != nil {
			verr <- err
			return
		}
		verr <- nil
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: nullspace-relay\r\n\r\nSSH-2.0-banner\r\n")
		io.Copy(c, br)
	}()
	conn, err := n2.Dial(t.Context(), peer.Target{Node: "n1", URL: "http://" + ln.Addr().String()}, "m1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := <-verr; err != nil {
		t.Fatalf("the owner refused Dial's request: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || line != "SSH-2.0-banner\r\n" {
		t.Fatalf("first line %q, %v; want the banner sent with the 101", line, err)
	}
	io.WriteString(conn, "after\n")
	if line, err := br.ReadString('\n'); err != nil || line != "after\n" {
		t.Fatalf("echo %q, %v; want %q", line, err, "after\n")
	}
	if _, ok := conn.(interface{ CloseWrite() error }); !ok {
		t.Errorf("relay conn %T has no CloseWrite", conn)
	}
}

// TestRelaysClose: Close ends established relays and refuses new ones.
func TestRelaysClose(t *testing.T) {
	relays, target := relayNode(t, machineServer(t, echo))
	conn, err := n2.Dial(t.Context(), target, "m1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "x")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	go func() {
		relays.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes after Close, want the relay ended", n)
	}
	_, err = n2.Dial(t.Context(), target, "m1", 22)
	var se *peer.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable {
		t.Errorf("Dial after Close: %v, want 503", err)
	}
}
