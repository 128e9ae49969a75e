package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/apikey"
	"nullspace.dev/nullspace/internal/mountinfo"
	"nullspace.dev/nullspace/internal/server"
)

const (
	domainNode, domainCIDR = "e2bd", "10.238.0.0/16"
	// domainEdge is the edge's domain: three labels, since TLS clients
	// refuse a wildcard certificate for *.localhost itself.
	domainEdge = "e2b.localhost"
)

// TestE2BDomainOnly runs E2B's documented examples (the same file as
// TestE2BSDK) with the newest pinned SDK release configured as on E2B:
// E2B_DOMAIN and E2B_API_KEY alone. The SDK then speaks https to
// api.{domain} for the control plane and to 49983-{sandbox}.{domain} for
// envd, and signs file URLs for that host: a server of its own whose edge
// serves TLS with a wildcard certificate (a test CA the SDK's Node trusts
// through NODE_EXTRA_CA_CERTS), and *.localhost resolved to loopback as a
// wildcard DNS name would be.
func TestE2BDomainOnly(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the E2B SDK tests need Node.js 20+: %v", err)
	}
	root, err := os.MkdirTemp("/var/lib", "nullspace-e2e-e2bdomain-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) }) // runs last, after the server's cleanup
	caFile, certFile, keyFile := writeTestCerts(t, t.TempDir(), domainEdge)
	cfg := testConfig(filepath.Join(root, "data"))
	cfg.NodeName, cfg.Names, cfg.NetworkCIDR = domainNode, server.HostNames{}, domainCIDR
	cfg.SSHAddr, cfg.CORSOrigins, cfg.WebhookURL = "", nil, ""
	cfg.Spares, cfg.BuiltinTemplates = 0, []string{"base"}
	cfg.EdgeDomain, cfg.EdgeTLSCert, cfg.EdgeTLSKey = domainEdge, certFile, keyFile
	lf, err := os.OpenFile(env.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", domainNode)
	inst, err := server.Start(t.Context(), cfg, logger)
	if err != nil {
		t.Fatalf("start a server with a TLS edge: %v", err)
	}
	key, err := os.ReadFile(inst.APIKeyFile)
	if err != nil {
		inst.Shutdown(context.Background())
		t.Fatal(err)
	}
	c := client.New("http://"+inst.Addr, strings.TrimSpace(string(key)))
	t.Cleanup(func() {
		// The test file kills its sandboxes; what a failure left goes
		// here.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ms, err := c.ListMachines(ctx, client.ListOptions{}); err == nil {
			for _, m := range ms {
				c.KillMachine(ctx, m.ID)
			}
		}
		inst.Shutdown(ctx)
		lf.Close()
		if err := mountinfo.UnmountUnder(root); err != nil {
			t.Error(err)
		}
		os.RemoveAll(root)
		removeNodeObjects(t, domainNode, domainCIDR)
	})
	_, port, _ := net.SplitHostPort(inst.EdgeAddr)
	vars := map[string]string{
		"E2B_DOMAIN":          domainEdge + ":" + port,
		"E2B_API_KEY":         apikey.E2BForm(strings.TrimSpace(string(key))),
		"NODE_EXTRA_CA_CERTS": caFile,
	}
	runE2BTests(t, node, "e2b-latest", vars)
}

// writeTestCerts writes a test CA and a certificate it signs for domain
// and *.domain; it returns their files.
func writeTestCerts(t *testing.T, dir, domain string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nullspace e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: domain},
		DNSNames: []string{domain, "*." + domain}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(leafKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", leafDER), write("key.pem", "EC PRIVATE KEY", keyDER)
}
