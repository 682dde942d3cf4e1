package schema

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"

	"golang.org/x/sync/errgroup"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

func TestMigrationsEmbedded(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatalf("Migrations() error = %v", err)
	}
	if len(ms) < 2 || ms[0].Name != "0001_node" || ms[1].Name != "0002_outbox" {
		t.Fatalf("Migrations() = %d files starting %v; want 0001_node, 0002_outbox, …", len(ms), ms[:min(2, len(ms))])
	}
	for i, m := range ms {
		if m.Version != i+1 || m.SQL == "" {
			t.Errorf("migration %d = version %d, %d bytes of SQL; want version %d and SQL", i, m.Version, len(m.SQL), i+1)
		}
	}
}

func TestParseMigrationsRejectsBadNames(t *testing.T) {
	tests := []struct {
		name  string
		files []string
	}{
		{"gap", []string{"0001_a.sql", "0003_c.sql"}},
		{"repeat", []string{"0001_a.sql", "0001_b.sql"}},
		{"not from one", []string{"0002_b.sql"}},
		{"bad name", []string{"0001_a.sql", "2_b.sql"}},
		{"upper case", []string{"0001_A.sql"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for _, f := range tt.files {
				fsys["m/"+f] = &fstest.MapFile{Data: []byte("SELECT 1")}
			}
			if ms, err := parseMigrations(fsys, "m"); err == nil {
				t.Errorf("parseMigrations(%v) = %d migrations, want an error", tt.files, len(ms))
			}
		})
	}
}

func TestMigrateTwice(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	conn := c.Connect(t)

	if v, err := Version(ctx, conn); err != nil || v != 0 {
		t.Fatalf("Version before Migrate = %d, %v; want 0, nil", v, err)
	}
	applied, err := Migrate(ctx, conn)
	if err != nil {
		t.Fatalf("first Migrate: %v", err)
	}
	if len(applied) != Latest() {
		t.Errorf("first Migrate applied %d migrations, want %d", len(applied), Latest())
	}
	applied, err = Migrate(ctx, conn)
	if err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if len(applied) != 0 {
		t.Errorf("second Migrate applied %v, want nothing", applied)
	}
	if v, err := Version(ctx, conn); err != nil || v != Latest() {
		t.Errorf("Version = %d, %v; want %d, nil", v, err, Latest())
	}
}

func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)

	const n = 6
	counts := make([]int, n)
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			conn, err := pgx.Connect(ctx, c.URL())
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			applied, err := Migrate(ctx, conn)
			counts[i] = len(applied)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	if total != Latest() {
		t.Errorf("concurrent Migrate applied %d migrations in all (%v), want each of %d exactly once", total, counts, Latest())
	}
	conn := c.Connect(t)
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgcourier.schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != Latest() {
		t.Errorf("schema_migrations has %d rows, want %d", rows, Latest())
	}
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	conn := c.Connect(t)
	if _, err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, `INSERT INTO pgcourier.schema_migrations (version, name) VALUES ($1, 'from_the_future')`, Latest()+1)
	if _, err := Migrate(ctx, conn); !errors.Is(err, ErrNewerSchema) {
		t.Errorf("Migrate on a newer schema = %v, want ErrNewerSchema", err)
	}
}

func TestMigrateRefusesForeignHistory(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	conn := c.Connect(t)
	if _, err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, `UPDATE pgcourier.schema_migrations SET name = '0001_something_else' WHERE version = 1`)
	if _, err := Migrate(ctx, conn); !errors.Is(err, ErrForeignSchema) {
		t.Errorf("Migrate over another build's history = %v, want ErrForeignSchema", err)
	}
}

func TestRegister(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	conn := c.Connect(t)
	if _, err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := Register(ctx, conn, "laptop-07", pgcourier.RoleClient); err != nil {
		t.Fatalf("first Register: %v", err)
	}
	if err := Register(ctx, conn, "laptop-07", pgcourier.RoleClient); err != nil {
		t.Errorf("Register again, same node: %v", err)
	}
	if err := Register(ctx, conn, "laptop-07", pgcourier.RoleServer); err != nil {
		t.Errorf("Register with a new role: %v", err)
	}
	var role string
	if err := conn.QueryRow(ctx, `SELECT role FROM pgcourier.node`).Scan(&role); err != nil || role != "server" {
		t.Errorf("recorded role = %q, %v; want server", role, err)
	}
	if err := Register(ctx, conn, "laptop-08", pgcourier.RoleClient); !errors.Is(err, ErrOtherNode) {
		t.Errorf("Register(laptop-08) on laptop-07's database = %v, want ErrOtherNode", err)
	}
}
