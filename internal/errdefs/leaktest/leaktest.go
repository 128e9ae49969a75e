// Package leaktest helps the tests of the API's front doors (the Nullspace
// API, the E2B-compatible API) show that error bodies never carry internal
// detail: it provides failures whose text is everything that must stay in
// the server log (host paths, SQL, a goroutine stack, a runsc command
// line), bare and under every errdefs class, and a check that a body holds
// none of it.
package leaktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Text is what a failing dependency says: the worst of what the OS,
// SQLite, PostgreSQL, runsc and a panic put in their errors.
const Text = "open /var/lib/nullspace/secret/machines/x/rootfs: permission denied; " +
	`pq: duplicate key value violates unique constraint "machines_pkey" (SQLSTATE 23505) in INSERT INTO machines; ` +
	"sqlite: database is locked in SELECT id FROM machines; " +
	"/usr/local/bin/runsc --root /run/nullspace/runsc restore --image-path /root/.nullspace-host/img: exit status 128; " +
	"goroutine 1 [running]:\nmain.main()\n\t/build/cmd/nullspace/main.go:42 +0x1d"

// Markers are the pieces of Text, and of any host path, that no error body
// may contain. (A path inside a machine, like /root/x or /work/x, is the
// caller's own and may be named.)
var Markers = []string{"/var/lib/", "/run/nullspace", "/root/.nullspace-host", "/usr/local/bin", "/build/cmd",
	"/tmp/", "SQLSTATE", "pq:", "sqlite", "SELECT ", "INSERT ", "runsc --", "goroutine ", ".go:"}

// Faults are the failures to inject, by name: Text bare (an internal
// error), under every class (an error with a class but no public code),
// and under a context's deadline.
func Faults() map[string]error {
	faults := map[string]error{
		"unclassed":        errors.New(Text),
		"context-deadline": fmt.Errorf("%s: %w", Text, context.DeadlineExceeded),
	}
	for name, class := range map[string]error{"not-found": errdefs.ErrNotFound, "conflict": errdefs.ErrConflict,
		"invalid-argument": errdefs.ErrInvalidArgument, "failed-precondition": errdefs.ErrFailedPrecondition,
		"unauthenticated": errdefs.ErrUnauthenticated, "resource-exhausted": errdefs.ErrResourceExhausted,
		"unavailable": errdefs.ErrUnavailable, "deadline-exceeded": errdefs.ErrDeadlineExceeded, "internal": errdefs.ErrInternal} {
		faults[name] = fmt.Errorf("%s: %w", Text, class)
	}
	return faults
}

// Check fails t if body holds a marker or one of extra (the server's data
// directory). what names the call.
func Check(t testing.TB, what string, body []byte, extra ...string) {
	t.Helper()
	for _, m := range append(extra, Markers...) {
		if m != "" && bytes.Contains(body, []byte(m)) {
			t.Errorf("%s: body %q holds %q, want no internal detail in an error body", what, body, m)
			return
		}
	}
}

// Fault is the failure a dependency answers with while it is set.
type Fault struct{ err atomic.Pointer[error] }

// Err is the failure, or nil.
func (f *Fault) Err() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Or is the failure if set, else err.
func (f *Fault) Or(err error) error {
	if ferr := f.Err(); ferr != nil {
		return ferr
	}
	return err
}

// Set makes the dependency fail with err; nil makes it work.
func (f *Fault) Set(err error) {
	if err == nil {
		f.err.Store(nil)
		return
	}
	f.err.Store(&err)
}
