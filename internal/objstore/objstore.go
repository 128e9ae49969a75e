// Package objstore is the seam onto an S3-compatible object store, where
// snapshots and templates go when they must outlive the host that made them.
//
// Remote is a producer-side plug-in interface (STYLE 3): internal/objstore/s3
// implements it over the network, internal/objstore/memstore in memory for
// unit tests. WithRetry wraps either with backoff on transient failures and
// turns a store that stays down into a retryable object_store_unavailable.
// Keys are relative to the location's prefix and use "/" as separator.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Remote is an object store holding immutable objects under keys.
//
// Put takes an io.ReadSeeker so a retry can rewind the body. Get's reader
// must be closed; a failure while reading it is not retried by WithRetry
// (the caller knows whether the bytes it already has are usable).
type Remote interface {
	Put(ctx context.Context, key string, r io.ReadSeeker, size int64) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat returns an error matching ErrNotFound when the key is absent.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn for every object whose key starts with prefix, in key
	// order; an error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes the key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// Info describes one stored object.
type Info struct {
	Key          string
	Size         int64
	LastModified time.Time
}

// ErrNotFound is returned (wrapped) for a key that does not exist.
var ErrNotFound = errors.New("object not found")

// transientError marks a failure that may succeed if the same call is made
// again: a 5xx, a throttle, a timeout, a refused or reset connection.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// Transient marks err as worth retrying. Implementations of Remote call it
// on failures of the store rather than of the request.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// IsTransient reports whether err was marked by Transient.
func IsTransient(err error) bool {
	var t *transientError
	return errors.As(err, &t)
}

// Unavailable is the error for a store that did not answer usefully after
// the retries: retryable, 503, object_store_unavailable. what names the
// operation ("put chunks/ab/ab12..."); cause is logged, never sent.
func Unavailable(what string, cause error) error {
	return errdefs.Wrap(cause, errdefs.ErrUnavailable, errdefs.CodeObjectStoreUnavailable,
		"the object store is unavailable ("+what+")",
		"retry in a minute; if it keeps failing, check that the server's --object-store is reachable and answers")
}

// Location is a parsed object-store URL:
//
//	s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&region=us-east-1
//
// Without endpoint the store is AWS S3 over https. Credentials are never in
// the URL (see Credentials).
type Location struct {
	Bucket   string
	Prefix   string // "" or ending in "/"
	Endpoint string // host[:port], without the scheme
	Secure   bool   // https
	Region   string
}

// String is the location as a URL, safe to log (it never holds a secret).
func (l Location) String() string {
	u := url.URL{Scheme: "s3", Host: l.Bucket, Path: "/" + l.Prefix}
	q := url.Values{}
	scheme := "http"
	if l.Secure {
		scheme = "https"
	}
	q.Set("endpoint", scheme+"://"+l.Endpoint)
	if l.Region != "" {
		q.Set("region", l.Region)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Parse reads an s3:// URL. It refuses credentials in the URL, since URLs
// end up in process listings and logs; they come from AWS_* variables.
func Parse(raw string) (Location, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the URL; it cannot hold a secret we accept, but
		// keep the message our own.
		return Location{}, fmt.Errorf("object store url: %w", errors.Unwrap(err))
	}
	if u.Scheme != "s3" {
		return Location{}, fmt.Errorf("object store url: scheme %q, want s3://BUCKET/PREFIX", u.Scheme)
	}
	if u.User != nil {
		return Location{}, errors.New("object store url: credentials do not go in the url; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	loc := Location{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), Endpoint: "s3.amazonaws.com", Secure: true}
	if loc.Bucket == "" {
		return Location{}, errors.New("object store url: no bucket; want s3://BUCKET/PREFIX")
	}
	if loc.Prefix != "" {
		loc.Prefix += "/"
	}
	q := u.Query()
	for k := range q {
		if k != "endpoint" && k != "region" {
			return Location{}, fmt.Errorf("object store url: unknown parameter %q (endpoint, region)", k)
		}
	}
	loc.Region = q.Get("region")
	if ep := q.Get("endpoint"); ep != "" {
		e, err := url.Parse(ep)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || (e.Path != "" && e.Path != "/") {
			return Location{}, fmt.Errorf("object store url: endpoint %q: want http(s)://HOST[:PORT]", ep)
		}
		if e.User != nil {
			return Location{}, errors.New("object store url: credentials do not go in the endpoint; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
		loc.Endpoint, loc.Secure = e.Host, e.Scheme == "https"
	}
	return loc, nil
}

// Credentials for the store. String and LogValue redact the secrets, so a
// Credentials printed by mistake shows only the access key id.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// CredentialsFromEnv reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN through getenv (os.Getenv in main).
func CredentialsFromEnv(getenv func(string) string) Credentials {
	return Credentials{
		AccessKeyID:     getenv("AWS_ACCESS_KEY_ID"),
		SecretAccessKey: getenv("AWS_SECRET_ACCESS_KEY"),
		SessionToken:    getenv("AWS_SESSION_TOKEN"),
	}
}

func (c Credentials) String() string {
	return "access key " + c.AccessKeyID + " (secret redacted)"
}

// GoString keeps %#v from printing the fields.
func (c Credentials) GoString() string { return c.String() }

// LogValue implements slog.LogValuer.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("access_key_id", c.AccessKeyID), slog.String("secret", "REDACTED"))
}
