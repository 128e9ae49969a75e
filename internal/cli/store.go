package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/internal/hostlock"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// Files of a server's data directory that `store copy` reads. They are
// the server's (internal/server: the SQLite file it opens, and
// dataLockFile, which it holds while it runs).
const (
	dataDBFile   = "nullspace.db"
	dataLockFile = "serve.lock"
)

// NewStoreCommand returns `nullspace store`, which works on a server's
// state database directly, with the server stopped.
func NewStoreCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "store",
		Short: "Work on a server's state database (with the server stopped)",
	})
	cmd.AddCommand(newStoreCopyCommand())
	return cmd
}

func newStoreCopyCommand() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "copy --from DATA_DIR --to postgres://USER@HOST/DB",
		Short: "Copy a node's state from its data directory into PostgreSQL",
		Long: `copy moves a single node's state (teams and API keys, machines and their
lineages, snapshot records, volumes, events, SSH keys, shared secrets) from
the SQLite database of a data directory into an empty PostgreSQL database,
in one transaction: either all of it is copied, or nothing.

Stop the server first: copy refuses a data directory a server is running on
(it takes the server's lock, <data dir>/serve.lock, for the time of the copy).
Then run the server on PostgreSQL with serve --database-url.

Not copied: spares (containers made ahead of resumes on this host; the server
makes new ones). Snapshot and template files stay in the data directory.

The password may be in the URL, in PGPASSWORD or in ~/.pgpass; it is never
printed. The data directory's database is first brought to this nullspace's
schema, as serve would.`,
		Example: `  systemctl stop nullspace
  PGPASSWORD=... nullspace store copy --from /var/lib/nullspace --to postgres://nullspace@db.internal/nullspace
  nullspace serve --database-url postgres://nullspace@db.internal/nullspace`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usageErrorf("both --from DATA_DIR and --to postgres://... are needed")
			}
			if !strings.HasPrefix(to, "postgres://") && !strings.HasPrefix(to, "postgresql://") {
				return usageErrorf("--to %s: want a PostgreSQL URL, postgres://USER@HOST[:PORT]/DB", sqlstore.Redact(to))
			}
			return storeCopy(cmd, from, to)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "data directory of the (stopped) server whose state to copy, e.g. /var/lib/nullspace")
	f.StringVar(&to, "to", "", "URL of an empty PostgreSQL database (the password may come from PGPASSWORD)")
	return cmd
}

func storeCopy(cmd *cobra.Command, dataDir, rawURL string) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("--from %s: %w", dataDir, err)
	}
	path := filepath.Join(dir, dataDBFile)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("--from %s: no %s there (%w): give the data directory of the server, its --data-dir", dir, dataDBFile, err)
	}
	lock, err := lockDataDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()

	src, err := sqlstore.Open(ctx, path)
	if err != nil {
		return err
	}
	defer src.Close()
	shown := sqlstore.Redact(rawURL)
	dst, err := sqlstore.OpenPostgres(ctx, rawURL)
	if err != nil {
		return err
	}
	defer dst.Close()

	fmt.Fprintf(out, "copying %s to %s\n", path, shown)
	start := time.Now()
	stats, err := sqlstore.CopyWithProgress(ctx, src, dst, func(tc sqlstore.TableCount) {
		fmt.Fprintf(out, "  %-18s %8d rows\n", tc.Table, tc.Rows)
	})
	if err != nil {
		return fmt.Errorf("nothing was written to %s: %w", shown, err)
	}
	fmt.Fprintf(out, "copied %d rows of %d tables in %s; next event number %d\n",
		stats.Rows, len(stats.Tables), time.Since(start).Round(time.Millisecond), stats.LastEventSeq+1)
	if stats.SparesSkipped > 0 {
		fmt.Fprintf(out, "not copied: %d spares (containers made ahead of resumes on this host; the server makes new ones)\n", stats.SparesSkipped)
	}
	fmt.Fprintf(out, "snapshot and template files stay in %s: run the server with this data directory\n", dir)
	fmt.Fprintf(out, "next: nullspace serve --data-dir %s --database-url %s\n", dir, shown)
	return nil
}

// lockDataDir takes the lock a server holds on its data directory while it
// runs, so that no server starts during the copy and none is running.
func lockDataDir(dir string) (*hostlock.Lock, error) {
	// The record has the fields a server reads from the lock file it finds
	// held (internal/server's holder).
	rec, _ := json.Marshal(struct {
		PID     int       `json:"pid"`
		Started time.Time `json:"started"`
		DataDir string    `json:"data_dir"`
		Command string    `json:"command"`
	}{os.Getpid(), time.Now().UTC(), dir, "nullspace store copy"})
	l, err := hostlock.Acquire(filepath.Join(dir, dataLockFile), append(rec, '\n'))
	var held *hostlock.HeldError
	if errors.As(err, &held) {
		who := "a running nullspace server"
		var h struct {
			PID     int       `json:"pid"`
			Started time.Time `json:"started"`
		}
		if json.Unmarshal(held.Record, &h) == nil && h.PID > 0 {
			who = fmt.Sprintf("process %d (started %s)", h.PID, h.Started.Local().Format(time.DateTime))
		}
		return nil, fmt.Errorf("data dir %s is in use by %s: stop the server first (it holds %s), then copy", dir, who, held.Path)
	}
	return l, err
}
