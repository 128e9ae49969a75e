// Package atomicfile writes small files so that a reader sees the old
// content or the new, never a part: a temporary file in the same
// directory, fsynced, renamed over the target; and the server's random
// secrets, made once and kept private.
package atomicfile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data, with mode, atomically.
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Secret returns the random secret kept in path, creating it (n bytes,
// mode 0600) on first use. A secret that others may read, or shorter than
// n bytes, is refused with what to do.
func Secret(path string, n int) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b = make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		if err := Write(path, b, 0o600); err != nil {
			return nil, err
		}
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := Private(path); err != nil {
		return nil, err
	}
	if len(b) < n {
		return nil, fmt.Errorf("%s is shorter than %d bytes: delete it to make a new one", path, n)
	}
	return b, nil
}

// Private refuses a secret file that others may read; it returns the
// file's info.
func Private(path string) (os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	return fi, nil
}
