package doctor

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/internal/schema"
)

func find(t *testing.T, checks []Check, name string) Check {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check named %q in %+v", name, checks)
	return Check{}
}

func clientOptions() Options {
	return Options{
		Role:    pgcourier.RoleClient,
		Capture: true,
		Tables:  pgcourier.TableFilter{Include: []string{"public.*"}, Exclude: []string{"public.scratch"}},
		Slot:    "pgcourier_laptop_07",
	}
}

func TestRunHealthyClient(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id uuid PRIMARY KEY, name text)`)
	c.Exec(t, `CREATE TABLE audit_log (at timestamptz, what text)`)
	c.Exec(t, `ALTER TABLE audit_log REPLICA IDENTITY FULL`)
	c.Exec(t, `CREATE TABLE scratch (x int)`) // excluded: needs no identity
	conn := c.Connect(t)
	if _, err := schema.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	opts := clientOptions()
	if _, err := capture.Setup(ctx, conn, capture.SetupOptions{Slot: opts.Slot, Publication: "pgcourier", Tables: opts.Tables}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(t, `SELECT pg_drop_replication_slot($1)`, opts.Slot) })
	checks, err := Run(ctx, conn, opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %q failed: %s (fix: %s)", c.Name, c.Detail, c.Fix)
		}
	}
	for _, name := range []string{"server version", "wal_level", "max_replication_slots", "max_wal_senders",
		"max_slot_wal_keep_size", "wal_sender_timeout", "replication privilege", "replica identity", "replication slot", "pgcourier schema"} {
		find(t, checks, name)
	}
	if Failed(checks) {
		t.Error("Failed(checks) = true, want false")
	}
}

func TestRunFindsProblems(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{Settings: map[string]string{
		"wal_level":              "replica",
		"track_commit_timestamp": "off",
		"max_slot_wal_keep_size": "64MB",
		"wal_sender_timeout":     "5min",
	}})
	c.Exec(t, `CREATE TABLE visit (code text, weight numeric)`)
	c.Exec(t, `CREATE TABLE specimen (id int, taken date) PARTITION BY RANGE (taken)`)
	c.Exec(t, `CREATE TABLE specimen_2026 PARTITION OF specimen FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	c.Exec(t, `CREATE ROLE clerk LOGIN`)
	c.Exec(t, `GRANT CREATE ON DATABASE postgres TO clerk`)

	conn := c.Connect(t)
	checks, err := Run(ctx, conn, clientOptions())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := map[string]string{
		"wal_level":              "ALTER SYSTEM SET wal_level = logical;",
		"max_slot_wal_keep_size": "ALTER SYSTEM SET max_slot_wal_keep_size = -1;",
		"wal_sender_timeout":     "ALTER SYSTEM SET wal_sender_timeout = '60s';",
		"replica identity":       `ALTER TABLE public.specimen_2026 REPLICA IDENTITY FULL; ALTER TABLE public.visit REPLICA IDENTITY FULL;`,
		"pgcourier schema":       "pgcourier init -c FILE",
		"replication slot":       "pgcourier init -c FILE",
	}
	for name, fix := range want {
		got := find(t, checks, name)
		if got.OK || !strings.Contains(got.Fix, fix) {
			t.Errorf("check %q = ok %v, fix %q; want failed with fix containing %q", name, got.OK, got.Fix, fix)
		}
	}
	if !Failed(checks) {
		t.Error("Failed(checks) = false, want true")
	}

	// The same database seen by an unprivileged role on an upstream node.
	clerk, err := pgx.Connect(ctx, strings.Replace(c.URL(), "postgres@", "clerk@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer clerk.Close(ctx)
	checks, err = Run(ctx, clerk, Options{Role: pgcourier.RoleServer, Capture: true, Tables: clientOptions().Tables})
	if err != nil {
		t.Fatalf("Run as clerk: %v", err)
	}
	for name, fix := range map[string]string{
		"replication privilege":        `ALTER ROLE clerk REPLICATION;`,
		"track_commit_timestamp":       "ALTER SYSTEM SET track_commit_timestamp = on;",
		"replication origin functions": "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text)",
	} {
		got := find(t, checks, name)
		if got.OK || !strings.Contains(got.Fix, fix) {
			t.Errorf("check %q as clerk = ok %v, fix %q; want failed with fix containing %q", name, got.OK, got.Fix, fix)
		}
	}
}

func TestRunSkipsCaptureChecksUpstream(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	conn := c.Connect(t)
	checks, err := Run(ctx, conn, Options{Role: pgcourier.RoleCentral})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range checks {
		if ch.Name == "wal_level" || ch.Name == "replica identity" {
			t.Errorf("central ran capture check %q", ch.Name)
		}
	}
	find(t, checks, "track_commit_timestamp")
}
