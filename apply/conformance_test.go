package apply

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/internal/sinktest"
)

// TestWriterConformance runs the transport conformance suite against the
// Writer: the sink behind every route.
func TestWriterConformance(t *testing.T) {
	c := sinktest.Upstream(t)
	sinktest.Run(t, c, func(t *testing.T, _ string) pgcourier.Sink {
		return newWriter(t, c, Options{Node: sinktest.Node})
	})
}

// TestRouteConformance runs the suite against the postgres route.
func TestRouteConformance(t *testing.T) {
	c := sinktest.Upstream(t)
	sinktest.Run(t, c, func(t *testing.T, _ string) pgcourier.Sink {
		return newRoute(t, c)
	})
}

// newRoute returns a postgres route into c, closed when the test ends.
func newRoute(t *testing.T, c *pgtest.Cluster) *Route {
	t.Helper()
	cfg, err := pgx.ParseConfig(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRoute(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// TestRouteTakesUpstreamPolicy delivers through the postgres route into an
// upstream that applies with the reject policy: the route applies as the
// upstream's own listener would, keeping the change as a conflict.
func TestRouteTakesUpstreamPolicy(t *testing.T) {
	c := sinktest.Upstream(t)
	conn := c.Connect(t)
	if err := schema.RecordPolicy(t.Context(), conn, string(Reject)); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, `INSERT INTO public.visit VALUES (1, 'server', 'a local edit')`)
	r := newRoute(t, c)
	b := sinktest.Batch("laptop-01", 1, 1, 0)
	b.Transactions[0].CommitTime = time.Now().Add(time.Hour) // newer: last-writer-wins would apply it
	b.Transactions[0].Changes = []pgcourier.Change{{Rel: sinktest.Visit, Op: pgcourier.OpUpdate,
		New: []pgcourier.Value{pgcourier.TextValue("1"), pgcourier.TextValue("laptop-01"), pgcourier.TextValue("from the field")}}}
	receipts, err := r.Deliver(t.Context(), []pgcourier.Parcel{sinktest.Encode(t, b)})
	if err != nil || len(receipts) != 1 || receipts[0].Outcome != pgcourier.Applied {
		t.Fatalf("Deliver = %+v, %v; want applied", receipts, err)
	}
	var note string
	var conflicts int
	if err := conn.QueryRow(t.Context(), `SELECT note, (SELECT count(*) FROM pgcourier.conflicts WHERE rule = 'reject') FROM public.visit WHERE id = 1`).Scan(&note, &conflicts); err != nil {
		t.Fatal(err)
	}
	if note != "a local edit" || conflicts != 1 {
		t.Errorf("upstream row note %q with %d reject conflicts; want the local edit kept and 1", note, conflicts)
	}
}

// TestRouteRefusesOldUpstream delivers into a database pgcourier init has
// not prepared: the route says what to run.
func TestRouteRefusesOldUpstream(t *testing.T) {
	r := newRoute(t, pgtest.Start(t))
	if _, err := r.Progress(t.Context(), "laptop-01"); err == nil || !strings.Contains(err.Error(), "pgcourier init") {
		t.Errorf("Progress on an unprepared upstream = %v, want an error naming pgcourier init", err)
	}
}

// TestRouteUpstreamSchema delivers through the postgres route into
// upstreams at older schema versions: one with every migration the applier
// uses is served, an older one refused with the fix, changing nothing.
func TestRouteUpstreamSchema(t *testing.T) {
	for _, tc := range []struct {
		version int
		ok      bool
	}{{upstreamSchema, true}, {upstreamSchema - 1, false}} {
		t.Run(fmt.Sprint(tc.version), func(t *testing.T) {
			c := sinktest.Upstream(t)
			// As if migrated only this far: Version reads the highest
			// migration recorded.
			c.Exec(t, `DELETE FROM pgcourier.schema_migrations WHERE version > $1`, tc.version)
			r := newRoute(t, c)
			receipts, err := r.Deliver(t.Context(), []pgcourier.Parcel{sinktest.Encode(t, sinktest.Batch("laptop-01", 1, 1, 0))})
			switch {
			case tc.ok && (err != nil || len(receipts) != 1 || receipts[0].Outcome != pgcourier.Applied):
				t.Errorf("Deliver at schema %d = %+v, %v; want applied", tc.version, receipts, err)
			case !tc.ok && (err == nil || !strings.Contains(err.Error(), "pgcourier init")):
				t.Errorf("Deliver at schema %d = %+v, %v; want an error naming pgcourier init", tc.version, receipts, err)
			}
			var applied int
			if err := c.Connect(t).QueryRow(t.Context(), `SELECT count(*) FROM pgcourier.source_progress`).Scan(&applied); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.ok]; applied != want {
				t.Errorf("upstream records progress of %d sources, want %d", applied, want)
			}
		})
	}
}
