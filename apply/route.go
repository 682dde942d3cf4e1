package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/schema"
)

// Route is the postgres route: a sender's way of applying its batches
// straight into the upstream database, with the same Writer the upstream's
// own listener uses, so the two routes can take turns and a batch still
// takes effect once. It learns the upstream node's id from the database
// (pgcourier.node, written by "pgcourier init" upstream) when it first
// reaches it, and connects only when used.
type Route struct {
	cfg  *pgx.ConnConfig
	opts Options

	mu sync.Mutex
	w  *Writer // nil until the upstream was reached
}

var _ pgcourier.Sink = (*Route)(nil)

// NewRoute returns the postgres route to the database cfg connects to. The
// Node field of opts is ignored: it is the upstream's, read from its
// database, as is the conflict policy when the upstream recorded one
// ("pgcourier init" or "run" upstream do), so that this route applies as
// the upstream's own listener would.
func NewRoute(cfg *pgx.ConnConfig, opts Options) (*Route, error) {
	if cfg == nil {
		return nil, errors.New("postgres route: no connection config")
	}
	return &Route{cfg: cfg.Copy(), opts: opts}, nil
}

// upstreamSchema is the oldest pgcourier schema an upstream database may
// have for this applier: the last migration that changed what the applier
// reads or writes (0006, staged parts). A migration for capture alone does
// not make every upstream upgrade before its laptops.
const upstreamSchema = 6

// writer returns the route's Writer, creating it when the upstream is
// first reached.
func (r *Route) writer(ctx context.Context) (*Writer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		return r.w, nil
	}
	conn, err := pgx.ConnectConfig(ctx, r.cfg)
	if err != nil {
		return nil, linkError(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if v, err := schema.Version(ctx, conn); err != nil || v < upstreamSchema {
		if err == nil {
			err = fmt.Errorf("the upstream's pgcourier schema is at version %d, this pgcourier needs %d: run \"pgcourier init\" on the upstream node (with a pgcourier as new as this one)", v, upstreamSchema)
		}
		return nil, err
	}
	var node string
	var policy *string
	err = conn.QueryRow(ctx, `SELECT id, conflict FROM pgcourier.node`).Scan(&node, &policy)
	if err != nil {
		return nil, fmt.Errorf("read the upstream node id (has \"pgcourier init\" run upstream?): %w", err)
	}
	opts := r.opts
	opts.Node = node
	if policy != nil && *policy != "" {
		opts.Policy = Policy(*policy)
	}
	w, err := New(r.cfg, opts)
	if err != nil {
		return nil, err
	}
	r.w = w
	return w, nil
}

// Deliver applies parcels upstream; see Writer.Deliver.
func (r *Route) Deliver(ctx context.Context, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	w, err := r.writer(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres route: %w", err)
	}
	return w.Deliver(ctx, parcels)
}

// Progress returns the source's progress upstream; see Writer.Progress.
func (r *Route) Progress(ctx context.Context, source string) (pgcourier.Progress, error) {
	w, err := r.writer(ctx)
	if err != nil {
		return pgcourier.Progress{Source: source}, fmt.Errorf("postgres route: %w", err)
	}
	p, err := w.Progress(ctx, source)
	if err != nil {
		err = linkError(err)
	}
	return p, err
}

// Close closes the route's connections.
func (r *Route) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		r.w.Close()
	}
}
