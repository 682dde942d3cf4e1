package apply

import (
	"testing"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
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
	})
}
