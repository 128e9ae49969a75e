package s3_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/s3"
	"nullspace.dev/nullspace/internal/objstore/s3test"
)

// TestRemote runs every Remote method against a real versitygw, under a
// prefix, so keys are relative to it.
func TestRemote(t *testing.T) {
	srv := s3test.Start(t)
	loc := srv.Loc
	loc.Prefix = "p/q/"
	var logs bytes.Buffer
	r, err := s3.Open(t.Context(), loc, srv.Creds, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	objects := map[string][]byte{"a/1": []byte("one"), "a/2": bytes.Repeat([]byte{7}, 3<<20), "b": nil}
	for k, v := range objects {
		if err := r.Put(ctx, k, bytes.NewReader(v), int64(len(v))); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	for k, v := range objects {
		rc, err := r.Get(ctx, k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, v) {
			t.Errorf("get %s: got %d bytes (err %v), want %d", k, len(got), err, len(v))
		}
		info, err := r.Stat(ctx, k)
		if err != nil || info.Size != int64(len(v)) || info.Key != k || time.Since(info.LastModified) > time.Minute {
			t.Errorf("stat %s: got %+v, %v", k, info, err)
		}
	}
	var keys []string
	if err := r.List(ctx, "a/", func(i objstore.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "a/1,a/2" {
		t.Errorf("list a/: got %v, want [a/1 a/2]", keys)
	}
	if err := r.Delete(ctx, "a/1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, "a/1"); err != nil {
		t.Errorf("delete of a missing key: got %v, want nil", err)
	}
	if _, err := r.Stat(ctx, "a/1"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("stat deleted: got %v, want ErrNotFound", err)
	}
	if _, err := r.Get(ctx, "a/1"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("get deleted: got %v, want ErrNotFound", err)
	}
	if logs.Len() != 0 {
		t.Errorf("a healthy store logged:\n%s", logs.String())
	}
}

// TestRefusedAndUnreachable: wrong credentials are a final refusal, an
// endpoint that does not answer is retried and then unavailable, and
// neither error nor log line carries the secret key.
func TestRefusedAndUnreachable(t *testing.T) {
	srv := s3test.Start(t)
	ctx := t.Context()

	wrong := objstore.Credentials{AccessKeyID: srv.Creds.AccessKeyID, SecretAccessKey: "wrong-secret-" + srv.Creds.SecretAccessKey[:8]}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	_, err := s3.Open(ctx, srv.Loc, wrong, log)
	p := errdefs.Classify(err)
	if err == nil || p.Code != errdefs.CodeObjectStoreUnavailable || p.Retryable {
		t.Errorf("wrong secret: got %v (%+v), want a final object_store_unavailable", err, p)
	}
	checkNoSecret(t, err, &logs, wrong.SecretAccessKey)

	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	down := objstore.Location{Bucket: "bucket", Endpoint: addr, Region: "us-east-1"}
	raw, err := s3.New(down, srv.Creds)
	if err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	r := objstore.WithRetry(raw, objstore.Backoff{Attempts: 3, Base: time.Millisecond, Max: time.Millisecond}, log)
	_, err = r.Stat(ctx, "k")
	p = errdefs.Classify(err)
	if p.Code != errdefs.CodeObjectStoreUnavailable || !p.Retryable || p.Status != 503 {
		t.Errorf("unreachable: got %v (%+v), want a retryable 503 object_store_unavailable", err, p)
	}
	if n := strings.Count(logs.String(), "retrying"); n != 2 {
		t.Errorf("unreachable: %d retries logged, want 2:\n%s", n, logs.String())
	}
	checkNoSecret(t, err, &logs, srv.Creds.SecretAccessKey)
}

func checkNoSecret(t *testing.T, err error, logs *bytes.Buffer, secret string) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Errorf("the error holds the secret key: %v", err)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the log holds the secret key:\n%s", logs.String())
	}
}
