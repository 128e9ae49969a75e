package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

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
// parts that read them start; a part that finds no file makes one.
func adoptSecrets(ctx context.Context, db store.Secrets, dataDir string, logger *slog.Logger) error {
	for _, name := range sharedSecrets {
		stored, err := db.Secret(ctx, name)
		if err != nil {
			return err
		}
		if stored == nil {
			continue
		}
		path := filepath.Join(dataDir, name)
		local, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("secret %s: %w", name, err)
		}
		if bytes.Equal(local, stored) {
			continue
		}
		if local != nil {
			logger.Warn("replacing a secret of the data dir with the store's: what the old one signed no longer verifies", "file", path)
		}
		if err := atomicfile.Write(path, stored, 0o600); err != nil {
			return fmt.Errorf("secret %s: %w", name, err)
		}
	}
	return nil
}

// offerSecrets stores the data dir's secrets that the store lacks, once
// the parts that make them have started. Two servers starting on an empty
// database at once both offer theirs and the first one wins; the other's
// part already runs with its own, so it is told to restart.
func offerSecrets(ctx context.Context, db store.Secrets, dataDir string) error {
	for _, name := range sharedSecrets {
		local, err := os.ReadFile(filepath.Join(dataDir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // that part is off
		}
		if err != nil {
			return fmt.Errorf("secret %s: %w", name, err)
		}
		stored, err := db.ShareSecret(ctx, name, local)
		if err != nil {
			return err
		}
		if !bytes.Equal(stored, local) {
			if err := atomicfile.Write(filepath.Join(dataDir, name), stored, 0o600); err != nil {
				return fmt.Errorf("secret %s: %w", name, err)
			}
			return fmt.Errorf("another server stored its %s first while this one started: start this one again to use it", name)
		}
	}
	return nil
}
