package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/telemetry"
)

func TestEdgeDomainPort(t *testing.T) {
	for _, tc := range []struct {
		addr, domain, cert, want string
	}{
		{"127.0.0.1:7701", "localhost", "", "localhost:7701"},
		{"0.0.0.0:80", "preview.example.com", "", "preview.example.com"},
		{"0.0.0.0:443", "preview.example.com", "c.pem", "preview.example.com"},
		{"0.0.0.0:8443", "preview.example.com", "c.pem", "preview.example.com:8443"},
		{"127.0.0.1:7701", "preview.example.com:443", "", "preview.example.com:443"},
		{"127.0.0.1:0", "localhost", "", "localhost"},
	} {
		c := Config{EdgeAddr: tc.addr, EdgeDomain: tc.domain, EdgeTLSCert: tc.cert, EdgeTLSKey: tc.cert,
			EdgeWakeTimeout: time.Second, EdgeHoldBodyBytes: 1}
		if err := c.validateEdge(); err != nil || c.EdgeDomain != tc.want {
			t.Errorf("addr %s domain %s: %q, %v; want %q", tc.addr, tc.domain, c.EdgeDomain, err, tc.want)
		}
	}
	for _, bad := range []string{"", "a/b", ".example.com", "http://x"} {
		c := Config{EdgeAddr: "127.0.0.1:7701", EdgeDomain: bad, EdgeWakeTimeout: time.Second, EdgeHoldBodyBytes: 1}
		if err := c.validateEdge(); err == nil {
			t.Errorf("domain %q accepted", bad)
		}
	}
	c := Config{EdgeAddr: "127.0.0.1:7701", EdgeDomain: "localhost", EdgeTLSCert: "c.pem", EdgeWakeTimeout: time.Second, EdgeHoldBodyBytes: 1}
	if err := c.validateEdge(); err == nil {
		t.Error("a certificate without a key was accepted")
	}
}

func TestPathBase(t *testing.T) {
	lo := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7701}
	any := &net.TCPAddr{IP: net.IPv4zero, Port: 7701}
	for _, tc := range []struct {
		domain string
		addr   *net.TCPAddr
		tls    bool
		want   string
	}{
		{"localhost:7701", lo, false, "http://127.0.0.1:7701"},
		{"localhost:7701", any, false, "http://127.0.0.1:7701"},
		{"localhost", lo, true, "https://127.0.0.1"},
		{"preview.example.com", any, true, "https://preview.example.com"},
	} {
		if got := pathBase(tc.domain, tc.addr, tc.tls); got != tc.want {
			t.Errorf("pathBase(%s, %v, %v) = %s, want %s", tc.domain, tc.addr, tc.tls, got, tc.want)
		}
	}
}

// TestEdgeTLS: with a certificate the edge serves HTTPS and HTTP/2, and its
// URLs are https and wss.
func TestEdgeTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "*.localhost")
	cfg := Config{DataDir: dir, EdgeAddr: "127.0.0.1:0", EdgeDomain: "localhost", EdgeTLSCert: cert, EdgeTLSKey: key,
		EdgeWakeTimeout: time.Second, EdgeHoldBodyBytes: 1, EdgeHeaderTimeout: time.Second}
	l, err := startEdge(t.Context(), cfg, nil, nil, telemetry.New(nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go l.serve(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { l.http.Close() })
	if fi, err := os.Stat(filepath.Join(dir, EdgeSecretFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("edge secret: %v, %v; want a 0600 file", fi, err)
	}
	u, err := l.edge.URL("mch_0123456789abcdef0123", 8080, time.Time{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if u.URL[:8] != "https://" || u.WSURL[:6] != "wss://" || u.OriginURL[:8] != "https://" {
		t.Fatalf("TLS edge URLs %+v", u)
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(cert)
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: "x.localhost"},
		ForceAttemptHTTP2: true,
		DialTLSContext:    nil,
	}}
	resp, err := c.Get("https://" + l.ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	if resp.ProtoMajor != 2 || resp.StatusCode != 404 || json.NewDecoder(resp.Body).Decode(&e) != nil || e.Code != "not_found" {
		t.Fatalf("https GET /: %s %d %+v, want HTTP/2 404 not_found", resp.Proto, resp.StatusCode, e)
	}
}

// writeCert writes a self-signed certificate for host and its key.
func writeCert(t *testing.T, dir, host string) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestValidateCORS: a --cors-origin that is not an origin is refused at
// start, with the form wanted.
func TestValidateCORS(t *testing.T) {
	for origins, ok := range map[string]bool{"": true, "*": true, "https://app.example.com": true, "app.example.com": false} {
		c := Defaults()
		c.DataDir = t.TempDir()
		c.Runsc, c.AgentBinary = os.Args[0], os.Args[0] // any file will do here
		if origins != "" {
			c.CORSOrigins = []string{origins}
		}
		err := c.Validate()
		if (err == nil) != ok {
			t.Errorf("cors origin %q: %v", origins, err)
		}
	}
}
