package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/memstore"
)

func TestParse(t *testing.T) {
	tests := []struct {
		url     string
		want    objstore.Location
		wantErr string
	}{
		{url: "s3://bkt/snaps/a?endpoint=http://127.0.0.1:9000&region=us-east-1",
			want: objstore.Location{Bucket: "bkt", Prefix: "snaps/a/", Endpoint: "127.0.0.1:9000", Region: "us-east-1"}},
		{url: "s3://bkt", want: objstore.Location{Bucket: "bkt", Endpoint: "s3.amazonaws.com", Secure: true}},
		{url: "s3://bkt/?endpoint=https://s3.example.com", want: objstore.Location{Bucket: "bkt", Endpoint: "s3.example.com", Secure: true}},
		{url: "http://bkt/x", wantErr: "scheme"},
		{url: "s3:///x", wantErr: "no bucket"},
		{url: "s3://AKIA:topsecret@bkt/x", wantErr: "credentials do not go in the url"},
		{url: "s3://bkt/x?endpoint=http://AKIA:topsecret@host", wantErr: "credentials do not go in the endpoint"},
		{url: "s3://bkt/x?endpoint=ftp://host", wantErr: "want http(s)://HOST[:PORT]"},
		{url: "s3://bkt/x?secret=1", wantErr: "unknown parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, err := objstore.Parse(tt.url)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want an error with %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "topsecret") {
					t.Errorf("the error holds the secret: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
			// String is a URL that parses back to the same location.
			again, err := objstore.Parse(got.String())
			if err != nil || again != got {
				t.Errorf("Parse(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestCredentialsRedacted(t *testing.T) {
	c := objstore.CredentialsFromEnv(env{
		"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "topsecret", "AWS_SESSION_TOKEN": "tok",
	}.get)
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("creds", "creds", c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), logs.String()} {
		if strings.Contains(s, "topsecret") || strings.Contains(s, "tok\"") || !strings.Contains(s, "AKIAEXAMPLE") {
			t.Errorf("got %q, want the access key id and no secret", s)
		}
	}
}

type env map[string]string

func (e env) get(k string) string { return e[k] }

// TestRetry: transient failures are retried until they pass; a store that
// keeps failing is a retryable object_store_unavailable; other errors and a
// cancelled context end the retries at once.
func TestRetry(t *testing.T) {
	fast := objstore.Backoff{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Millisecond}
	tests := []struct {
		name      string
		fault     memstore.Fault
		wantStats int
		check     func(t *testing.T, err error)
	}{
		{"500s then success", memstore.Fault{Op: memstore.OpStat, Times: 3}, 4, func(t *testing.T, err error) {
			if err != nil {
				t.Errorf("got %v, want success on the 4th attempt", err)
			}
		}},
		{"persistent 500s", memstore.Fault{Op: memstore.OpStat}, 4, func(t *testing.T, err error) {
			p := errdefs.Classify(err)
			if p.Code != errdefs.CodeObjectStoreUnavailable || !p.Retryable || p.Status != 503 {
				t.Errorf("got %v (%+v), want retryable 503 object_store_unavailable", err, p)
			}
		}},
		{"a permanent error is not retried", memstore.Fault{Op: memstore.OpStat, Err: errors.New("403 access denied")}, 1, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("got %v, want the 403", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := memstore.New()
			ctx := t.Context()
			if err := m.Put(ctx, "k", bytes.NewReader([]byte("v")), 1); err != nil {
				t.Fatal(err)
			}
			m.Inject(tt.fault)
			r := objstore.WithRetry(m, fast, slog.New(slog.DiscardHandler))
			_, err := r.Stat(ctx, "k")
			tt.check(t, err)
			if got := m.Count(memstore.OpStat); got != tt.wantStats {
				t.Errorf("got %d stat calls, want %d", got, tt.wantStats)
			}
		})
	}

	t.Run("ctx cancel ends the waits", func(t *testing.T) {
		m := memstore.New()
		m.Inject(memstore.Fault{})
		r := objstore.WithRetry(m, objstore.Backoff{Attempts: 10, Base: time.Hour, Max: time.Hour}, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.Stat(ctx, "k")
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Errorf("got %v after %v, want the context's deadline at once", err, time.Since(start))
		}
	})

	t.Run("put rewinds its body", func(t *testing.T) {
		m := memstore.New()
		m.Inject(memstore.Fault{Op: memstore.OpPut, Times: 2})
		r := objstore.WithRetry(m, fast, slog.New(slog.DiscardHandler))
		if err := r.Put(t.Context(), "k", strings.NewReader("hello"), 5); err != nil {
			t.Fatal(err)
		}
		rc, err := r.Get(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(rc)
		if b.String() != "hello" {
			t.Errorf("got %q, want hello", b.String())
		}
	})

	t.Run("list resumes after the last key", func(t *testing.T) {
		m := memstore.New()
		for _, k := range []string{"a", "b", "c"} {
			m.Put(t.Context(), k, strings.NewReader(k), 1)
		}
		r := objstore.WithRetry(&flakyList{Store: m}, fast, slog.New(slog.DiscardHandler))
		var got []string
		if err := r.List(t.Context(), "", func(i objstore.Info) error { got = append(got, i.Key); return nil }); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != "a,b,c" {
			t.Errorf("got %v, want [a b c] once each", got)
		}
	})
}

// flakyList fails its first listing after one key, as a connection cut
// during a paged listing would.
type flakyList struct {
	*memstore.Store
	failed bool
}

func (f *flakyList) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	n := 0
	return f.Store.List(ctx, prefix, func(i objstore.Info) error {
		if n == 1 && !f.failed {
			f.failed = true
			return memstore.Err500
		}
		n++
		return fn(i)
	})
}
