package pgtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// connectTimeout bounds how long the testing helpers wait for a connection.
const connectTimeout = 10 * time.Second

// logLines is how much of the server log a failed test shows.
const logLines = 40

// Start returns a fresh, started cluster configured by opts (at most one),
// closed when the test and its subtests finish. If the test failed, the end
// of the server log is logged first. Start calls t.Fatal if the cluster
// cannot start, and t.Skip if opts cannot be met by an external server.
func Start(t testing.TB, opts ...Options) *Cluster {
	t.Helper()
	c, err := New(t.Context(), options(t, opts))
	if errors.Is(err, ErrExternal) {
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.cleanup(t)
	return c
}

// StartN starts n clusters at once, each configured by opts (at most one)
// and named after it with its index appended. They are closed like Start's.
func StartN(t testing.TB, n int, opts ...Options) []*Cluster {
	t.Helper()
	o := options(t, opts)
	cs := make([]*Cluster, n)
	var g errgroup.Group
	for i := range cs {
		oi := o
		oi.Name = fmt.Sprintf("%s%d", o.Name, i)
		g.Go(func() error {
			c, err := New(t.Context(), oi)
			cs[i] = c
			return err
		})
	}
	err := g.Wait()
	for _, c := range cs {
		if c != nil {
			c.cleanup(t)
		}
	}
	if errors.Is(err, ErrExternal) {
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func options(t testing.TB, opts []Options) Options {
	t.Helper()
	switch len(opts) {
	case 0:
		return Options{}
	case 1:
		return opts[0]
	default:
		t.Fatalf("pgtest: %d Options, want at most one", len(opts))
		return Options{}
	}
}

// cleanup registers Close, preceded by the end of the server log if the
// test failed.
func (c *Cluster) cleanup(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() && !c.External() {
			t.Logf("last lines of %s:\n%s", c.LogFile(), tail(c.LogFile(), logLines))
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
}

// Connect returns a connection to URL, closed when the test finishes. It
// calls t.Fatal if it cannot connect.
func (c *Cluster) Connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatalf("connect to %s: %v", redact(c.URL()), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs sql with args on a connection to URL that it opens and closes,
// and calls t.Fatal on error. Without args, sql may hold several statements.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatalf("connect to %s: %v", redact(c.URL()), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// RequireLocal skips the test when c is External: crashing, stopping and
// restarting need a local cluster.
func RequireLocal(t testing.TB, c *Cluster) {
	t.Helper()
	if c.External() {
		t.Skip("pgtest: needs a local cluster; unset " + envDatabases)
	}
}
