package rest

import (
	"testing"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/apply"
	"github.com/pgcourier/pgcourier/internal/sinktest"
)

// TestConformance runs the transport conformance suite through the REST
// link: a Client talking to a Handler whose sink is the applier on real
// Postgres.
func TestConformance(t *testing.T) {
	c := sinktest.Upstream(t)
	cfg, err := pgx.ParseConfig(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	w, err := apply.New(cfg, apply.Options{Node: sinktest.Node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	sources := map[string][32]byte{}
	for _, s := range sinktest.Sources {
		sources[s] = tokenHash("token-of-" + s)
	}
	h, err := NewHandler(HandlerOptions{Node: sinktest.Node, Sources: sources, Sink: w})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)
	sinktest.Run(t, c, func(t *testing.T, source string) pgcourier.Sink {
		return newTestClient(t, srv.URL, "token-of-"+source, ClientOptions{})
	})
}
