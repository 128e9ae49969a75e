// Package hostlock keeps processes that must not share something apart on
// one host: exclusive file locks that tell who holds them, and a registry of
// such locks whose holders publish a record that a newcomer checks its own
// against.
//
// Locks are flock(2) locks on an open file. The kernel releases them when
// the holder's last descriptor closes, so a holder killed with SIGKILL
// leaves nothing held behind; its file stays, with a record nobody holds,
// which Claim removes. Locks belong to an open file description: a second
// Acquire of the same path in the same process conflicts like another
// process's would. Files are opened close-on-exec, so child processes (the
// sandboxes a server starts outlive it) never inherit a lock.
package hostlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// Lock is a held lock. Close releases it.
type Lock struct {
	f *os.File
}

// Close releases the lock. The file stays, with the record that was in it.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Path is the lock's file.
func (l *Lock) Path() string { return l.f.Name() }

// HeldError says a lock is held by another live holder, and what that
// holder wrote into it (empty if it had not written yet).
type HeldError struct {
	Path   string
	Record []byte
}

func (e *HeldError) Error() string {
	if len(e.Record) == 0 {
		return fmt.Sprintf("%s is locked by another process", e.Path)
	}
	return fmt.Sprintf("%s is locked by another process: %s", e.Path, strings.TrimSpace(string(e.Record)))
}

// Acquire takes the exclusive lock on path, creating the file, without
// waiting, and writes record into it for whoever finds it held. If another
// holder has it, the error is a *HeldError with that holder's record.
func Acquire(path string, record []byte) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &HeldError{Path: path, Record: readRecord(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := writeRecord(f, record); err != nil {
		f.Close()
		return nil, fmt.Errorf("write lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Registry is a directory of locks, one file per key, whose holders'
// records a newcomer can read. Claims are serialised by a lock of the
// directory's own (.claims), held only while a claim checks and
// writes, so that two newcomers never both pass each other's checks.
type Registry struct {
	// Dir holds the lock files; Claim creates it.
	Dir string
}

var validKey = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// Claim takes key's lock with record in it. Before, it calls check with the
// records of every other live holder in the registry; if check returns an
// error the claim is refused with it. If key itself is held, the error is a
// *HeldError. Files of holders that are gone are removed.
func (r Registry) Claim(key string, record []byte, check func(holders [][]byte) error) (*Lock, error) {
	if !validKey.MatchString(key) || strings.HasSuffix(key, ".lock") {
		return nil, fmt.Errorf("lock registry key %q: use lower-case letters, digits, '.', '_' and '-'", key)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create lock registry %s: %w", r.Dir, err)
	}
	mu, err := os.OpenFile(filepath.Join(r.Dir, ".claims"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock registry: %w", err)
	}
	defer mu.Close() // releases the registry's lock
	if err := flock(mu, unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock registry %s: %w", r.Dir, err)
	}

	own := filepath.Join(r.Dir, key+".lock")
	f, err := os.OpenFile(own, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", own, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &HeldError{Path: own, Record: readRecord(own)}
		}
		return nil, fmt.Errorf("lock %s: %w", own, err)
	}
	holders, err := r.liveLocked(own)
	if err == nil {
		err = check(holders)
	}
	if err == nil {
		err = writeRecord(f, record)
	}
	if err != nil {
		// The file stays, unheld: the next claim removes it.
		f.Close()
		return nil, err
	}
	return &Lock{f: f}, nil
}

// liveLocked returns the records of the registry's live holders other than
// the file skip, and removes the files of holders that are gone. The
// registry's lock is held: nobody is between creating and locking a file.
func (r Registry) liveLocked(skip string) ([][]byte, error) {
	paths, err := filepath.Glob(filepath.Join(r.Dir, "*.lock"))
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, p := range paths {
		if p == skip {
			continue
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("open lock %s: %w", p, err)
		}
		switch err := tryLock(f); {
		case err == nil:
			// Nobody holds it: its holder is gone.
			os.Remove(p)
		case errors.Is(err, unix.EWOULDBLOCK):
			out = append(out, readRecord(p))
		default:
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		f.Close()
	}
	return out, nil
}

func tryLock(f *os.File) error { return flock(f, unix.LOCK_EX|unix.LOCK_NB) }

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func writeRecord(f *os.File, record []byte) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt(record, 0)
	return err
}

// readRecord reads a holder's record. A holder that has just taken its
// lock may not have written it yet: that reads as empty.
func readRecord(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return b
}
