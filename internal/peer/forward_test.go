package peer_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/internal/peer"
)

// pair is two nodes: a client's request reaches front (node n2), which
// forwards it to owner (node n1), whose peer listener runs handler behind
// the verifier.
type pair struct {
	owner, front *httptest.Server
	client       *peer.Client
	target       peer.Target
}

func newPair(t testing.TB, handler http.Handler) *pair {
	t.Helper()
	p := &pair{client: &peer.Client{Self: "n2", Key: testKey}}
	p.owner = httptest.NewServer((&peer.Verifier{Self: "n1", Key: testKey}).Middleware(handler))
	t.Cleanup(p.owner.Close)
	p.target = peer.Target{Node: "n1", URL: p.owner.URL}
	p.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.client.Forward(w, r, p.target, peer.RouteAPI)
	}))
	t.Cleanup(p.front.Close)
	return p
}

// seen is what the owner's handler reports about the request it got.
type seen struct {
	Method      string
	URI         string
	Host        string
	Origin      peer.Origin
	HasOrigin   bool
	PeerHeaders []string
	XFF         []string
	BodySHA     string
	BodyLen     int64
}

func echoRequest(w http.ResponseWriter, r *http.Request) {
	s := seen{Method: r.Method, URI: r.RequestURI, Host: r.Host, XFF: r.Header.Values("X-Forwarded-For")}
	s.Origin, s.HasOrigin = peer.FromContext(r.Context())
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-nullspace-peer-") {
			s.PeerHeaders = append(s.PeerHeaders, k)
		}
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.BodySHA, s.BodyLen = hex.EncodeToString(h.Sum(nil)), n
	w.Header().Set("X-Owner", "n1")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(s)
}

func TestForward(t *testing.T) {
	p := newPair(t, http.HandlerFunc(echoRequest))
	const bigSize = 10 << 20
	big := make([]byte, bigSize)
	rand.Read(big)
	bigSum := sha256.Sum256(big)

	tests := []struct {
		name    string
		method  string
		uri     string
		body    []byte
		headers map[string]string
		wantXFF []string
	}{
		{name: "GET", method: http.MethodGet, uri: "/v1/machines/m1?view=full"},
		{name: "escaped path and query", method: http.MethodGet, uri: "/v1/machines/m1/files/a%2Fb?path=%2Ftmp%2Fx+y&n=1"},
		{name: "POST 10 MiB streamed", method: http.MethodPost, uri: "/v1/machines/m1/files?path=/big", body: big},
		{name: "client's peer headers dropped", method: http.MethodGet, uri: "/v1/machines",
			headers: map[string]string{"X-Nullspace-Peer-Route": "relay", "X-Nullspace-Peer-From": "n7", "x-nullspace-peer-evil": "1"}},
		{name: "client's X-Forwarded-For passed on as sent", method: http.MethodGet, uri: "/v1/machines",
			headers: map[string]string{"X-Forwarded-For": "198.51.100.7"}, wantXFF: []string{"198.51.100.7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != nil {
				// Through a pipe, so the length is unknown and the body is
				// streamed (chunked) the whole way.
				pr, pw := io.Pipe()
				go func() {
					for b := tt.body; len(b) > 0; b = b[min(len(b), 64<<10):] {
						if _, err := pw.Write(b[:min(len(b), 64<<10)]); err != nil {
							return
						}
					}
					pw.Close()
				}()
				body = pr
			}
			req, err := http.NewRequestWithContext(t.Context(), tt.method, p.front.URL+tt.uri, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "api.example.com"
			for k, v := range tt.headers {
				req.Header[k] = []string{v}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Owner") != "n1" {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d X-Owner %q body %s; want 201 from the owner", resp.StatusCode, resp.Header.Get("X-Owner"), b)
			}
			var s seen
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				t.Fatal(err)
			}
			if s.Method != tt.method || s.URI != tt.uri || s.Host != "api.example.com" {
				t.Errorf("owner got %s %s Host %s, want %s %s Host api.example.com", s.Method, s.URI, s.Host, tt.method, tt.uri)
			}
			if want := (peer.Origin{From: "n2", Route: peer.RouteAPI, ClientAddr: "127.0.0.1"}); !s.HasOrigin || s.Origin != want {
				t.Errorf("owner's origin %+v (%v), want %+v", s.Origin, s.HasOrigin, want)
			}
			if len(s.PeerHeaders) > 0 {
				t.Errorf("owner's handler saw %v, want no peer headers", s.PeerHeaders)
			}
			if fmt.Sprint(s.XFF) != fmt.Sprint(tt.wantXFF) {
				t.Errorf("owner's X-Forwarded-For %q, want %q", s.XFF, tt.wantXFF)
			}
			wantSum, wantLen := sha256.Sum256(nil), int64(0)
			if tt.body != nil {
				wantSum, wantLen = bigSum, bigSize
			}
			if s.BodySHA != hex.EncodeToString(wantSum[:]) || s.BodyLen != wantLen {
				t.Errorf("owner got %d body bytes with sha256 %s, want %d with %x", s.BodyLen, s.BodySHA, wantLen, wantSum)
			}
		})
	}
}

// TestForwardStreams: what the owner writes and flushes reaches the client
// while the owner's handler is still running.
func TestForwardStreams(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		parts       []string
		knownLength bool // a Content-Length: only FlushInterval -1 flushes it
	}{
		{name: "SSE", contentType: "text/event-stream", parts: []string{"data: event 1\n\n", "data: event 2\n\n"}},
		{name: "NDJSON", contentType: "application/x-ndjson", parts: []string{`{"n":1}` + "\n", `{"n":2}` + "\n"}},
		{name: "known length", contentType: "application/octet-stream", parts: []string{"first half,", "second half"}, knownLength: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				if tt.knownLength {
					w.Header().Set("Content-Length", strconv.Itoa(len(strings.Join(tt.parts, ""))))
				}
				for i, part := range tt.parts {
					if i > 0 {
						select {
						case <-release:
						case <-r.Context().Done():
							return
						}
					}
					io.WriteString(w, part)
					http.NewResponseController(w).Flush()
				}
			}))
			type first struct {
				resp *http.Response
				part string
				err  error
			}
			got := make(chan first, 1)
			go func() {
				resp, err := http.Get(p.front.URL + "/v1/events")
				if err != nil {
					got <- first{err: err}
					return
				}
				b := make([]byte, len(tt.parts[0]))
				_, err = io.ReadFull(resp.Body, b)
				got <- first{resp: resp, part: string(b), err: err}
			}()
			var f first
			select {
			case f = <-got:
			case <-time.After(5 * time.Second):
				close(release)
				t.Fatal("the first part did not arrive while the owner held back the second: the stream is buffered")
			}
			if f.err != nil {
				close(release)
				t.Fatal(f.err)
			}
			defer f.resp.Body.Close()
			if f.part != tt.parts[0] {
				t.Errorf("first part %q, want %q", f.part, tt.parts[0])
			}
			close(release)
			rest, err := io.ReadAll(f.resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.Join(tt.parts[1:], ""); string(rest) != want {
				t.Errorf("rest %q, want %q", rest, want)
			}
		})
	}
}

func TestForwardWebSocket(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		o, _ := peer.FromContext(r.Context())
		ctx := r.Context()
		if err := c.Write(ctx, websocket.MessageText, []byte("origin "+o.From+" "+o.Route)); err != nil {
			return
		}
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	}))
	ctx := t.Context()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(p.front.URL, "http")+"/v1/machines/m1/terminal", nil)
	if err != nil {
		t.Fatalf("dial through Forward: %v", err)
	}
	defer c.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	_, msg, err := c.Read(ctx)
	if err != nil || string(msg) != "origin n2 api" {
		t.Fatalf("first message %q, %v; want %q", msg, err, "origin n2 api")
	}
	for i := range 3 {
		want := fmt.Sprintf("message %d", i)
		if err := c.Write(ctx, websocket.MessageBinary, []byte(want)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != want {
			t.Fatalf("echo %q, %v; want %q", got, err, want)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestForwardNodeDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := peer.Target{Node: "n1", URL: "http://" + ln.Addr().String()}
	ln.Close() // nothing listens there now

	t.Run("default answer", func(t *testing.T) {
		c := &peer.Client{Self: "n2", Key: testKey}
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.Forward(w, r, down, peer.RouteAPI)
		}))
		defer front.Close()
		resp, err := http.Get(front.URL + "/v1/machines/m1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Code            string `json:"code"`
			Message         string `json:"message"`
			Retryable       bool   `json:"retryable"`
			SuggestedAction string `json:"suggested_action"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusServiceUnavailable || body.Code != "node_unreachable" || !body.Retryable {
			t.Errorf("got %d %+v, want 503 node_unreachable, retryable", resp.StatusCode, body)
		}
		if want := "node n1 at " + down.URL + " did not answer: "; !strings.HasPrefix(body.Message, want) {
			t.Errorf("message %q, want it to start with %q", body.Message, want)
		}
		if !strings.Contains(body.SuggestedAction, "resumable elsewhere") {
			t.Errorf("suggested_action %q, want the retry advice", body.SuggestedAction)
		}
	})

	t.Run("OnError", func(t *testing.T) {
		var gotNode string
		c := &peer.Client{Self: "n2", Key: testKey, OnError: func(w http.ResponseWriter, r *http.Request, node string, err error) {
			gotNode = node
			w.WriteHeader(http.StatusTeapot)
		}}
		w := httptest.NewRecorder()
		c.Forward(w, httptest.NewRequest(http.MethodGet, "/v1/machines/m1", nil), down, peer.RouteAPI)
		if w.Code != http.StatusTeapot || gotNode != "n1" {
			t.Errorf("status %d, node %q; want OnError's 418 for n1", w.Code, gotNode)
		}
	})
}

func TestDo(t *testing.T) {
	p := newPair(t, http.HandlerFunc(echoRequest))
	req, err := http.NewRequest(http.MethodPost, "/peer/v1/machines/m1/claim?epoch=3", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.client.Do(t.Context(), p.target, "claim", req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(p.owner.URL, "http://")
	if s.Method != http.MethodPost || s.URI != "/peer/v1/machines/m1/claim?epoch=3" || s.Host != host {
		t.Errorf("owner got %s %s Host %s, want POST /peer/v1/machines/m1/claim?epoch=3 Host %s", s.Method, s.URI, s.Host, host)
	}
	if want := (peer.Origin{From: "n2", Route: "claim"}); s.Origin != want {
		t.Errorf("origin %+v, want %+v", s.Origin, want)
	}

	_, err = p.client.Do(t.Context(), peer.Target{Node: "n1", URL: "http://127.0.0.1:1"}, "claim", req)
	if err == nil || !strings.Contains(err.Error(), "on node n1 at http://127.0.0.1:1") {
		t.Errorf("Do to a closed port: %v, want an error naming the node", err)
	}
}

// BenchmarkForward compares a small GET sent straight to the owner with
// the same GET forwarded through another node.
func BenchmarkForward(b *testing.B) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	p := newPair(b, ok)
	direct := httptest.NewServer(ok)
	b.Cleanup(direct.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	get := func(b *testing.B, url string) {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			get(b, direct.URL+"/v1/machines/m1")
		}
	})
	b.Run("forward", func(b *testing.B) {
		for b.Loop() {
			get(b, p.front.URL+"/v1/machines/m1")
		}
	})
}
