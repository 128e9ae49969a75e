package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"nullspace.dev/nullspace/internal/objstore/s3test"
	"nullspace.dev/nullspace/internal/server"
	"nullspace.dev/nullspace/internal/store/pgtest"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// backend is where a benchmark server keeps its state and its snapshots:
// SQLite and the local directory (the default), or PostgreSQL and an
// S3-compatible object store (issue 23), as -store and -object-store say.
type backend struct {
	DB      string `json:"db"`      // sqlite | postgres
	Objects string `json:"objects"` // local | s3
}

var defaultBackend = backend{DB: "sqlite", Objects: "local"}

// String names the backend, e.g. "postgres+s3"; it is the side of the
// store suite's series.
func (b backend) String() string { return b.DB + "+" + b.Objects }

// s3 says whether snapshots are copied to the object store.
func (b backend) s3() bool { return b.Objects == "s3" }

// The store suite's second server: host objects and a pool of its own,
// beside the first's (nsbench-, nsb, 10.231/16), the raw side's (nsbraw-,
// nbr, 10.233/16) and the tests' (10.232/16, 10.236–10.238/16).
var benchNames2 = server.HostNames{
	NetnsPrefix:   "nsbench2-",
	VethPrefix:    "nsc",
	FirewallTable: "nullspace_bench2",
	CgroupParent:  "/nullspace-bench2",
}

const benchCIDR2 = "10.234.0.0/16"

// serverSpec is one benchmark server's identity on the host.
type serverSpec struct {
	node    string
	names   server.HostNames
	cidr    string
	dataDir string // under the work dir
	backend backend
}

func mainServer(b backend) serverSpec {
	return serverSpec{node: "bench", names: benchNames, cidr: benchCIDR, dataDir: "server", backend: b}
}

func secondServer(b backend) serverSpec {
	return serverSpec{node: "bench2", names: benchNames2, cidr: benchCIDR2, dataDir: "server2", backend: b}
}

// otherBackend is the backend the store suite compares with b: the
// default's counterpart is PostgreSQL + S3, anything else's the default.
func otherBackend(b backend) backend {
	if b == defaultBackend {
		return backend{DB: "postgres", Objects: "s3"}
	}
	return defaultBackend
}

// services are the PostgreSQL cluster and the S3 server the benchmark
// starts for itself, each on first use: a throwaway cluster
// (pgtest.StartCluster: initdb as the postgres user, a free loopback port)
// and versitygw over a directory of the work dir (s3test.Run).
type services struct {
	work      string
	versitygw string

	pgURL  string // the cluster's postgres database, superuser
	pgStop func() error
	s3     *s3test.Server
	s3Stop func()
}

// database creates database name on the cluster and returns its URL.
func (s *services) database(ctx context.Context, name string) (string, error) {
	if s.pgURL == "" {
		fmt.Fprintln(os.Stderr, "bench: starting a throwaway PostgreSQL 15 cluster")
		u, stop, err := pgtest.StartCluster(ctx)
		if err != nil {
			return "", err
		}
		s.pgURL, s.pgStop = u, stop
	}
	conn, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		return "", fmt.Errorf("connect to the benchmark's cluster: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(s.pgURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// objectStore starts versitygw with an empty bucket (once) and returns its
// s3:// URL. The server reads the credentials from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, which are set here.
func (s *services) objectStore() (string, error) {
	if s.s3 == nil {
		if fi, err := os.Stat(s.versitygw); err != nil || fi.IsDir() {
			return "", fmt.Errorf("versitygw not found at %s: run `make versitygw`, or pass -versitygw / NULLSPACE_VERSITYGW", s.versitygw)
		}
		fmt.Fprintln(os.Stderr, "bench: starting versitygw (S3 over a directory of the work dir)")
		srv, stop, err := s3test.Run(s.versitygw, filepath.Join(s.work, "s3"))
		if err != nil {
			return "", err
		}
		s.s3, s.s3Stop = srv, stop
		os.Setenv("AWS_ACCESS_KEY_ID", srv.Creds.AccessKeyID)
		os.Setenv("AWS_SECRET_ACCESS_KEY", srv.Creds.SecretAccessKey)
	}
	return s.s3.URL, nil
}

// configure points a server's configuration at b: a database of its own
// (named db) or SQLite in its data dir, the object store or none.
func (s *services) configure(ctx context.Context, sc *server.Config, b backend, db string) error {
	sc.DatabaseURL, sc.ObjectStore = "", ""
	if b.DB == "postgres" {
		u, err := s.database(ctx, db)
		if err != nil {
			return err
		}
		sc.DatabaseURL = u
	}
	if b.s3() {
		u, err := s.objectStore()
		if err != nil {
			return err
		}
		sc.ObjectStore = u
	}
	return nil
}

// openStore opens an empty store of kind db for the list measurements:
// a SQLite file in the work dir or a new database on the cluster. analyze,
// called once the store is filled, has PostgreSQL gather its planner's
// statistics, as autovacuum does within a minute of the inserts: without
// them the first queries on a freshly filled table may not use its indexes.
func (s *services) openStore(ctx context.Context, db, name string) (_ *sqlstore.DB, analyze func(context.Context) error, err error) {
	if db != "postgres" {
		st, err := sqlstore.Open(ctx, filepath.Join(s.work, name+".db"))
		return st, func(context.Context) error { return nil }, err
	}
	u, err := s.database(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	st, err := sqlstore.OpenPostgres(ctx, u)
	return st, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, "ANALYZE"); err != nil {
			return fmt.Errorf("analyze database %s: %w", name, err)
		}
		return nil
	}, err
}

// close stops what was started; the work dir's removal takes the bucket.
func (s *services) close() error {
	var errs []error
	if s.s3Stop != nil {
		s.s3Stop()
	}
	if s.pgStop != nil {
		errs = append(errs, s.pgStop())
	}
	return errors.Join(errs...)
}
