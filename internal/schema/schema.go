// Package schema creates and upgrades the pgcourier schema in a node's
// database from the migrations embedded in package sqlfiles, and records which
// node owns the database.
//
// Migrate is idempotent and safe to run from several processes at once: every
// run takes one transaction-scoped advisory lock, applies what is missing, and
// records each applied version in pgcourier.schema_migrations, all in one
// transaction.
package schema

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	sqlfiles "github.com/pgcourier/pgcourier/sql"
)

// Name is the Postgres schema that holds everything pgcourier keeps in a
// node's database. It is never published.
const Name = "pgcourier"

// lockKey is the advisory lock that serializes migrations on one database
// ("pgcourie" in ASCII).
const lockKey int64 = 0x7067636f75726965

// Migration is one numbered step of the schema.
type Migration struct {
	Version int    // 1, 2, 3 … without gaps
	Name    string // file name without the .sql suffix, e.g. "0001_node"
	SQL     string
}

var fileName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// Migrations returns the embedded migrations in version order. It fails if
// a file is misnamed or the numbering has a gap or a repeat.
func Migrations() ([]Migration, error) {
	return parseMigrations(sqlfiles.Migrations, "migrations")
}

func parseMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries { // ReadDir sorts by name
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %q: want a name like 0001_name.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if v != len(ms)+1 {
			return nil, fmt.Errorf("migration %q: want version %d next", e.Name(), len(ms)+1)
		}
		text, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, Migration{Version: v, Name: e.Name()[:len(e.Name())-len(".sql")], SQL: string(text)})
	}
	return ms, nil
}

// Latest returns the schema version this build of pgcourier expects.
func Latest() int {
	ms, err := Migrations()
	if err != nil {
		// The migrations are embedded at build time and checked by tests.
		panic(err)
	}
	return len(ms)
}

// Version returns the schema version recorded in the database, or 0 if the
// pgcourier schema has not been created there.
func Version(ctx context.Context, conn *pgx.Conn) (int, error) {
	var exists bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('pgcourier.schema_migrations') IS NOT NULL`).Scan(&exists)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	err = conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM pgcourier.schema_migrations`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// ErrForeignSchema means the database's migration history is not this
// build's: it was migrated by a build with other migrations.
var ErrForeignSchema = errors.New("database schema history differs from this pgcourier's")

// ErrNewerSchema means the database was migrated by a newer pgcourier than
// this one.
var ErrNewerSchema = errors.New("database schema is newer than this pgcourier")

// Migrate brings the pgcourier schema up to Latest and returns the
// migrations it applied (none when the schema was already current). It runs
// in one transaction under an advisory lock, so concurrent calls apply each
// migration exactly once and a failure leaves the database unchanged.
func Migrate(ctx context.Context, conn *pgx.Conn) ([]Migration, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit

	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		CREATE SCHEMA IF NOT EXISTS pgcourier;
		CREATE TABLE IF NOT EXISTS pgcourier.schema_migrations (
			version    integer     PRIMARY KEY,
			name       text        NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
		return nil, fmt.Errorf("migrate: create schema: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version, name FROM pgcourier.schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("migrate: read version: %w", err)
	}
	recorded, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Migration, error) {
		var m Migration
		err := r.Scan(&m.Version, &m.Name)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("migrate: read version: %w", err)
	}
	current := len(recorded)
	if current > 0 && recorded[current-1].Version > len(ms) {
		return nil, fmt.Errorf("%w (database at version %d, this build knows %d): upgrade pgcourier", ErrNewerSchema, recorded[current-1].Version, len(ms))
	}
	for i, r := range recorded {
		// The database must have applied exactly this build's migrations so far.
		if r.Version != i+1 || r.Name != ms[i].Name {
			return nil, fmt.Errorf("%w: database recorded migration %d as %q, this build has %q there", ErrForeignSchema, r.Version, r.Name, ms[i].Name)
		}
	}
	applied := ms[current:]
	for _, m := range applied {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgcourier.schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("migrate: record %s: %w", m.Name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", err)
	}
	return applied, nil
}

// ErrOtherNode means the database already belongs to a node with another id.
var ErrOtherNode = errors.New("database belongs to another node")

// Register records that the database belongs to the given node, or checks
// that it already does. A role change is recorded; a different node id is
// refused with ErrOtherNode, because two nodes sharing one database would
// share one outbox and one set of progress records.
func Register(ctx context.Context, conn *pgx.Conn, node string, role pgcourier.Role) error {
	var owner string
	err := conn.QueryRow(ctx, `
		INSERT INTO pgcourier.node AS n (id, role) VALUES ($1, $2)
		ON CONFLICT (singleton) DO UPDATE
			SET role = excluded.role, updated_at = now()
			WHERE n.id = excluded.id AND n.role <> excluded.role
		RETURNING id`, node, string(role)).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) {
		// The row exists and was left alone: same node and role, or another node.
		err = conn.QueryRow(ctx, `SELECT id FROM pgcourier.node`).Scan(&owner)
	}
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	if owner != node {
		return fmt.Errorf("%w %q, not %q: point [database] url at this node's own database", ErrOtherNode, owner, node)
	}
	return nil
}

// RecordPolicy records the conflict policy the node applies with, for the
// postgres routes that write into its database from below. The node must be
// registered.
func RecordPolicy(ctx context.Context, conn *pgx.Conn, policy string) error {
	if _, err := conn.Exec(ctx, `UPDATE pgcourier.node SET conflict = $1, updated_at = now() WHERE conflict IS DISTINCT FROM $1`, policy); err != nil {
		return fmt.Errorf("record conflict policy: %w", err)
	}
	return nil
}
