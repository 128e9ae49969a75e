package sqlstore

import (
	"path/filepath"
	"testing"

	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/pgtest"
	"nullspace.dev/nullspace/internal/store/storetest"
)

// TestConformance runs the store conformance suite on both backends: a
// fresh SQLite file, and a fresh PostgreSQL database, per subtest.
func TestConformance(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			db, err := Open(t.Context(), filepath.Join(t.TempDir(), "db"))
			if err != nil {
				t.Fatal(err)
			}
			return db
		})
	})
	t.Run("postgres", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			db, err := OpenPostgres(t.Context(), pgtest.URL(t))
			if err != nil {
				t.Fatal(err)
			}
			return db
		})
	})
}

// TestConcurrentHandles runs the suite of two handles on one database at
// once (two servers sharing it): two SQLite handles on one file, two
// PostgreSQL connection pools on one database.
func TestConcurrentHandles(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.RunConcurrent(t, func(t *testing.T) (store.Store, store.Store) {
			path := filepath.Join(t.TempDir(), "db")
			return openTwice(t, func() (store.Store, error) { return Open(t.Context(), path) })
		})
	})
	t.Run("postgres", func(t *testing.T) {
		storetest.RunConcurrent(t, func(t *testing.T) (store.Store, store.Store) {
			u := pgtest.URL(t)
			return openTwice(t, func() (store.Store, error) { return OpenPostgres(t.Context(), u) })
		})
	})
}

func openTwice(t *testing.T, open func() (store.Store, error)) (store.Store, store.Store) {
	a, err := open()
	if err != nil {
		t.Fatal(err)
	}
	b, err := open()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a, b
}

// TestNodes runs the suite of the cluster's nodes on both backends: each
// node a handle of its own on one database.
func TestNodes(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.RunNodes(t, func(t *testing.T) func() store.Store {
			path := filepath.Join(t.TempDir(), "db")
			return func() store.Store { return must(Open(t.Context(), path)) }
		})
	})
	t.Run("postgres", func(t *testing.T) {
		storetest.RunNodes(t, func(t *testing.T) func() store.Store {
			u := pgtest.URL(t)
			return func() store.Store { return must(OpenPostgres(t.Context(), u)) }
		})
	})
}

func must(db *DB, err error) store.Store {
	if err != nil {
		panic(err)
	}
	return db
}
