package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"nullspace.dev/nullspace/internal/atomicfile"
	"nullspace.dev/nullspace/internal/e2bcompat"
	"nullspace.dev/nullspace/internal/sshgate"
	"nullspace.dev/nullspace/internal/store"
)

// sharedSecrets are the data dir's files that sign what a client holds
// (machine URLs, E2B access and traffic tokens, SSH tokens) or what it
// trusts (the SSH host key). They are kept in the store too, so that a
// server sharing the database, or one started on a new data dir, verifies
// what another signed, and `nullspace store copy` carries them along.
var sharedSecrets = []string{EdgeSecretFile, e2bcompat.TokenSecretFile, sshgate.HostKeyFile, sshgate.TokenSecretFile}

// adoptSecrets writes the store's secrets into the data dir before the
// parts that read them start, where the data dir has none or an older one
// (a data dir that joins a shared database). A file newer than the
// store's (`nullspace edge rotate-secret` while the server was down) is
// kept: offerSecrets stores it. A part that finds no file makes one.
func adoptSecrets(ctx context.Context, db store.Secrets, dataDir string, logger *slog.Logger) error {
	for _, name := range sharedSecrets {
		stored, at, err := db.Secret(ctx, name)
		if err != nil {
			return err
		}
		if stored == nil {
			continue
		}
		path := filepath.Join(dataDir, name)
		local, mtime, err := readSecret(path)
		if err != nil {
			return err
		}
		if bytes.Equal(local, stored) || (local != nil && mtime.After(at)) {
			continue
		}
		if local != nil {
			logger.Warn("replacing a secret of the data dir with the store's newer one: what the old one signed no longer verifies", "file", path)
		}
		if err := atomicfile.Write(path, stored, 0o600); err != nil {
			return fmt.Errorf("secret %s: %w", name, err)
		}
		// The file is as old as the store's copy: not newer, so not
		// offered again as a rotation.
		if err := os.Chtimes(path, at, at); err != nil {
			return fmt.Errorf("secret %s: %w", name, err)
		}
	}
	return nil
}

// offerSecrets stores the data dir's secrets that are newer than the
// store's (or that it lacks), once the parts that make them have started.
// Two servers starting on an empty database at once both offer theirs and
// the first one wins; the other's part already runs with its own, so it
// is told to restart.
func offerSecrets(ctx context.Context, db store.Secrets, dataDir string) error {
	for _, name := range sharedSecrets {
		path := filepath.Join(dataDir, name)
		local, mtime, err := readSecret(path)
		if err != nil {
			return err
		}
		if local == nil {
			continue // that part is off
		}
		stored, at, err := db.PutSecret(ctx, name, local, mtime)
		if err != nil {
			return err
		}
		if !bytes.Equal(stored, local) {
			if err := atomicfile.Write(path, stored, 0o600); err != nil {
				return fmt.Errorf("secret %s: %w", name, err)
			}
			if err := os.Chtimes(path, at, at); err != nil {
				return fmt.Errorf("secret %s: %w", name, err)
			}
			return fmt.Errorf("another server stored its %s first while this one started: start this one again to use it", name)
		}
	}
	return nil
}

// readSecret reads a secret file and its modification time, to the
// microsecond the store keeps; nil if there is none.
func readSecret(path string) ([]byte, time.Time, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("secret %s: %w", filepath.Base(path), err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("secret %s: %w", filepath.Base(path), err)
	}
	return b, fi.ModTime().UTC().Truncate(time.Microsecond), nil
}
