// Package memstore is an in-memory objstore.Remote for unit tests, with
// faults to inject: errors (a transient 500 by default), delays, and damage
// to stored objects (bit flips, truncation, removal). The real store is
// tested against versitygw (internal/objstore/s3test); this fake is for
// the fast tests of what sits on top.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/objstore"
)

// Op names a Remote method, for faults and counts.
type Op string

const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpStat   Op = "stat"
	OpList   Op = "list"
	OpDelete Op = "delete"
)

// Err500 is the error an injected fault returns unless it names another:
// what the S3 implementation makes of a 500 Internal Server Error.
var Err500 = objstore.Transient(errors.New("500 internal server error"))

// Fault makes matching calls fail or wait.
type Fault struct {
	Op        Op     // "" matches every op
	KeyPrefix string // "" matches every key
	// Times is how many matching calls fail; 0 means all of them.
	Times int
	// Delay is waited (or ctx's end) before the call goes on.
	Delay time.Duration
	// Err is returned after Delay; nil means Err500, unless Delay is set
	// and Err is nil, in which case the call then succeeds.
	Err error
}

// Store is an in-memory object store. The zero value is not usable; call New.
type Store struct {
	// Now stamps LastModified; tests of age-based sweeps move it.
	Now func() time.Time

	mu      sync.Mutex
	objects map[string]object
	faults  []*fault
	counts  map[Op]int
}

type object struct {
	data []byte
	mod  time.Time
}

type fault struct {
	Fault
	left int // calls still to fail; <0 means forever
}

var _ objstore.Remote = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{Now: time.Now, objects: map[string]object{}, counts: map[Op]int{}}
}

// Inject adds a fault; faults are checked in the order added.
func (s *Store) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	left := f.Times
	if left == 0 {
		left = -1
	}
	s.faults = append(s.faults, &fault{Fault: f, left: left})
}

// ClearFaults removes every injected fault.
func (s *Store) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Count returns how many calls of op were made (failed ones included).
func (s *Store) Count(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[op]
}

// Mutate replaces a stored object's bytes with fn's result (a bit flip, a
// truncation), keeping its LastModified.
func (s *Store) Mutate(key string, fn func([]byte) []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return fmt.Errorf("mutate %s: %w", key, objstore.ErrNotFound)
	}
	o.data = fn(bytes.Clone(o.data))
	s.objects[key] = o
	return nil
}

// SetModTime sets a stored object's LastModified.
func (s *Store) SetModTime(key string, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return fmt.Errorf("set mod time %s: %w", key, objstore.ErrNotFound)
	}
	o.mod = t
	s.objects[key] = o
	return nil
}

// Keys returns the stored keys with the prefix, sorted.
func (s *Store) Keys(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k := range s.objects {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// enter counts the call and applies the first matching fault.
func (s *Store) enter(ctx context.Context, op Op, key string) error {
	s.mu.Lock()
	s.counts[op]++
	var hit *Fault
	for _, f := range s.faults {
		if f.left == 0 || (f.Op != "" && f.Op != op) || !strings.HasPrefix(key, f.KeyPrefix) {
			continue
		}
		if f.left > 0 {
			f.left--
		}
		c := f.Fault
		hit = &c
		break
	}
	s.mu.Unlock()
	if hit == nil {
		return ctx.Err()
	}
	if hit.Delay > 0 {
		t := time.NewTimer(hit.Delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if hit.Err == nil {
			return ctx.Err()
		}
	}
	if hit.Err != nil {
		return hit.Err
	}
	return Err500
}

func (s *Store) Put(ctx context.Context, key string, r io.ReadSeeker, size int64) error {
	if err := s.enter(ctx, OpPut, key); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("put %s: read body: %w", key, err)
	}
	if int64(len(data)) != size {
		return fmt.Errorf("put %s: body is %d bytes, size says %d", key, len(data), size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objects[key] = object{data: data, mod: s.Now()}
	return nil
}

func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := s.enter(ctx, OpGet, key); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, objstore.ErrNotFound)
	}
	// Stored bytes are never changed in place (Mutate replaces them), so
	// the reader can share them.
	return io.NopCloser(bytes.NewReader(o.data)), nil
}

func (s *Store) Stat(ctx context.Context, key string) (objstore.Info, error) {
	if err := s.enter(ctx, OpStat, key); err != nil {
		return objstore.Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return objstore.Info{}, fmt.Errorf("stat %s: %w", key, objstore.ErrNotFound)
	}
	return objstore.Info{Key: key, Size: int64(len(o.data)), LastModified: o.mod}, nil
}

func (s *Store) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	if err := s.enter(ctx, OpList, prefix); err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	s.mu.Lock()
	var infos []objstore.Info
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, objstore.Info{Key: k, Size: int64(len(o.data)), LastModified: o.mod})
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.enter(ctx, OpDelete, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.objects, key)
	return nil
}
