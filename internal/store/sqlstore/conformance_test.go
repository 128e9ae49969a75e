package sqlstore

import (
	"path/filepath"
	"testing"

	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/storetest"
)

// TestConformance runs the store conformance suite on SQLite, a fresh
// database file per subtest.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		db, err := Open(t.Context(), filepath.Join(t.TempDir(), "db"))
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}
