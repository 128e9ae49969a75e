// Package s3test starts a real S3-compatible server for tests: versitygw
// (Apache-2.0) serving a POSIX directory, built by `make versitygw` and
// found through $NULLSPACE_VERSITYGW. A missing binary fails the test with
// what to run; it never skips (the project's rule for real parts).
// Run starts one for a program that is not a test (the benchmark).
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"nullspace.dev/nullspace/internal/objstore"
)

// Server is a running versitygw with one empty bucket.
type Server struct {
	URL   string // s3://BUCKET/?endpoint=http://127.0.0.1:PORT&region=us-east-1
	Loc   objstore.Location
	Creds objstore.Credentials
	// Root is the directory served; objects of the bucket are files under
	// Root/BUCKET, for tests that damage them behind the server's back.
	Root string
	// PID is versitygw's process id (it is killed by that pid at cleanup).
	PID int
}

// Env returns the AWS_* variables that hold the server's credentials, for a
// server or command under test that reads them from its environment.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.Creds.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + s.Creds.SecretAccessKey}
}

// Start runs versitygw on a free loopback port over a temporary directory,
// with generated keys, creates a bucket, and stops the server when the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv("NULLSPACE_VERSITYGW")
	if bin == "" {
		t.Fatal("NULLSPACE_VERSITYGW is not set: run the tests through `make test`, or run `make versitygw` and set NULLSPACE_VERSITYGW=$PWD/bin/versitygw")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("versitygw (NULLSPACE_VERSITYGW) not usable: %v; run `make versitygw`", err)
	}
	s, stop, err := Run(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return s
}

// Run is Start for a program that is not a test (the benchmark): it runs
// versitygw (bin) over dir/root, with its metadata in dir/sidecar, and
// returns the server and a stop that kills it (dir is the caller's to
// remove).
func Run(bin, dir string) (*Server, func(), error) { return RunOn(bin, dir, "127.0.0.1") }

// RunOn is Run listening on host, an address the host already has (the
// bridge of internal/devcluster's nodes, which reach it from network
// namespaces of their own).
func RunOn(bin, dir, host string) (*Server, func(), error) {
	creds := objstore.Credentials{AccessKeyID: "test" + randHex(6), SecretAccessKey: randHex(20)}
	root := filepath.Join(dir, "root")
	// Metadata in a sidecar directory, not xattrs: a developer's /tmp may
	// be a tmpfs without user xattrs.
	sidecar := filepath.Join(dir, "sidecar")
	for _, d := range []string{root, sidecar} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("versitygw: %w", err)
		}
	}

	// Another process may take the port between our probe and versitygw's
	// bind; a few tries make that race harmless.
	var lastErr error
	for try := 0; try < 3; try++ {
		port, err := freePort(host)
		if err != nil {
			return nil, nil, fmt.Errorf("versitygw: find a free port: %w", err)
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		s, stop, err := start(bin, addr, root, sidecar, creds)
		if err == nil {
			return s, stop, nil
		}
		lastErr = err
	}
	return nil, nil, fmt.Errorf("versitygw did not start: %w", lastErr)
}

func start(bin, addr, root, sidecar string, creds objstore.Credentials) (*Server, func(), error) {
	var out syncBuffer
	cmd := exec.Command(bin, "--access", creds.AccessKeyID, "--secret", creds.SecretAccessKey,
		"--port", addr, "--quiet", "posix", "--sidecar", sidecar, root)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill() // by its pid, never by name
		<-exited
	}

	client, err := minio.New(addr, &minio.Options{
		Creds:        credentials.NewStaticV4(creds.AccessKeyID, creds.SecretAccessKey, ""),
		BucketLookup: minio.BucketLookupPath,
		Region:       "us-east-1",
		MaxRetries:   1,
	})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("client: %w", err)
	}
	bucket := "nullspace-test"
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			return nil, nil, fmt.Errorf("versitygw exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("no answer on %s in 15s (last: %v); its output: %s", addr, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	loc := objstore.Location{Bucket: bucket, Endpoint: addr, Region: "us-east-1"}
	return &Server{
		URL:   "s3://" + bucket + "/?endpoint=http://" + addr + "&region=us-east-1",
		Loc:   loc,
		Creds: creds,
		Root:  root,
		PID:   cmd.Process.Pid,
	}, stop, nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}

// syncBuffer collects the server's output, written by exec's copying
// goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
