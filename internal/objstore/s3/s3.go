// Package s3 implements objstore.Remote on an S3-compatible object store
// (AWS S3, versitygw, Ceph RGW, Garage, ...).
//
// The client is minio-go/v7 rather than the AWS SDK: it is one module with
// about fifteen requirements where the SDK brings config, credentials,
// smithy and endpoint-resolver modules; path-style addressing of a custom
// endpoint (what self-hosted stores need) is one option; and its static
// credentials take the usual AWS_* values directly. Only the client is
// used: MinIO's server is AGPL and is never linked.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
)

// Remote is an objstore.Remote on one bucket and prefix. It does not
// retry: wrap it with objstore.WithRetry (Open does).
type Remote struct {
	loc    objstore.Location
	client *minio.Client
}

var _ objstore.Remote = (*Remote)(nil)

// New returns a Remote for loc with creds. It makes no request.
func New(loc objstore.Location, creds objstore.Credentials) (*Remote, error) {
	if err := s3utils.CheckValidBucketName(loc.Bucket); err != nil {
		return nil, fmt.Errorf("object store %s: bucket %q: %w", loc, loc.Bucket, err)
	}
	tr, err := minio.DefaultTransport(loc.Secure)
	if err != nil {
		return nil, fmt.Errorf("object store %s: transport: %w", loc, err)
	}
	// A store that accepts a connection but does not answer is a transient
	// failure to retry, not a hang: a minute (minio's default) is long
	// next to a 1 MiB chunk.
	tr.ResponseHeaderTimeout = 30 * time.Second
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	c, err := minio.New(loc.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken),
		Secure:       loc.Secure,
		Region:       loc.Region,
		BucketLookup: minio.BucketLookupPath,
		Transport:    tr,
		// 1 turns minio's own retries off: objstore.WithRetry owns the
		// policy, so the fake and the real store are retried alike.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", loc, err)
	}
	return &Remote{loc: loc, client: c}, nil
}

// Open connects to the store at loc, checks that its bucket exists and the
// credentials are accepted, and returns it wrapped with objstore.WithRetry
// (DefaultBackoff).
func Open(ctx context.Context, loc objstore.Location, creds objstore.Credentials, log *slog.Logger) (objstore.Remote, error) {
	r, err := New(loc, creds)
	if err != nil {
		return nil, err
	}
	rr := objstore.WithRetry(r, objstore.DefaultBackoff, log.With("object_store", loc.String()))
	if err := r.checkBucket(ctx, rr); err != nil {
		return nil, fmt.Errorf("object store %s: %w", loc, err)
	}
	return rr, nil
}

// checkBucket lists one key through the retried remote: it proves the
// endpoint answers, the bucket exists and the credentials are accepted.
func (r *Remote) checkBucket(ctx context.Context, rr objstore.Remote) error {
	errStop := errors.New("stop")
	err := rr.List(ctx, "", func(objstore.Info) error { return errStop })
	if err == nil || errors.Is(err, errStop) {
		return nil
	}
	return err
}

func (r *Remote) key(k string) string { return r.loc.Prefix + k }

func (r *Remote) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	_, err := r.client.PutObject(ctx, r.loc.Bucket, r.key(key), body, size,
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return r.wrap("put "+key, err)
	}
	return nil
}

func (r *Remote) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	// Core.GetObject makes the request now, so a missing key or a 500 is
	// the error of Get and not of the first Read.
	rc, _, _, err := minio.Core{Client: r.client}.GetObject(ctx, r.loc.Bucket, r.key(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, r.wrap("get "+key, err)
	}
	return rc, nil
}

func (r *Remote) Stat(ctx context.Context, key string) (objstore.Info, error) {
	oi, err := r.client.StatObject(ctx, r.loc.Bucket, r.key(key), minio.StatObjectOptions{})
	if err != nil {
		return objstore.Info{}, r.wrap("stat "+key, err)
	}
	return objstore.Info{Key: key, Size: oi.Size, LastModified: oi.LastModified}, nil
}

func (r *Remote) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	for oi := range r.client.ListObjectsIter(ctx, r.loc.Bucket, minio.ListObjectsOptions{Prefix: r.key(prefix), Recursive: true}) {
		if oi.Err != nil {
			return r.wrap("list "+prefix, oi.Err)
		}
		if err := fn(objstore.Info{Key: oi.Key[len(r.loc.Prefix):], Size: oi.Size, LastModified: oi.LastModified}); err != nil {
			return err
		}
	}
	return nil
}

func (r *Remote) Delete(ctx context.Context, key string) error {
	if err := r.client.RemoveObject(ctx, r.loc.Bucket, r.key(key), minio.RemoveObjectOptions{}); err != nil {
		err = r.wrap("delete "+key, err)
		if errors.Is(err, objstore.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// wrap classifies a client error: a missing key is objstore.ErrNotFound; a
// 5xx, a throttle or a network failure is transient; a refusal (bad
// credentials, no bucket) is final and says what the operator should check.
// Neither minio's errors nor ours carry the secret key: requests are
// signed, never sent with it.
func (r *Remote) wrap(what string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || (resp.StatusCode == http.StatusNotFound && resp.Code != minio.NoSuchBucket):
		return fmt.Errorf("%s: %w", what, objstore.ErrNotFound)
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout,
		resp.Code == "SlowDown", resp.Code == "RequestTimeout", resp.Code == "InternalError", resp.Code == "ServiceUnavailable":
		return objstore.Transient(fmt.Errorf("%s: %w", what, err))
	case resp.StatusCode != 0:
		return &errdefs.Error{
			Class: errdefs.ErrUnavailable, Code: errdefs.CodeObjectStoreUnavailable, Final: true,
			Message:         fmt.Sprintf("the object store refused %s (%s)", what, resp.Code),
			SuggestedAction: "the operator should check --object-store (bucket " + r.loc.Bucket + ") and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
			Err:             fmt.Errorf("%s: %w", what, err),
		}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", what, err)
	case isNetwork(err):
		return objstore.Transient(fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isNetwork reports a failure to reach the store or a connection cut short.
func isNetwork(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
