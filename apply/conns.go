package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// errClosed is returned by Apply and Park after Close.
var errClosed = errors.New("apply: writer is closed")

// conns hands out connections to the upstream database, at most max at a
// time, keeping idle ones for the next batch.
type conns struct {
	cfg *pgx.ConnConfig
	sem chan struct{}

	mu     sync.Mutex
	idle   []*pgx.Conn
	closed bool
}

// newConns takes cfg for its own: its connections run every statement as
// the unnamed statement (pgx.QueryExecModeCacheDescribe), which Postgres
// plans for the parameters of each execution. A statement that applies a
// run of changes thus gets a plan for its row count and for its tables as
// they are now, even while a catch-up grows them faster than statistics
// follow; a cached generic plan, made while a table was small, would scan
// it whole for every batch. The statements in fixedSQL are prepared by
// name instead: their plans are worth keeping.
func newConns(cfg *pgx.ConnConfig, max int) *conns {
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	return &conns{cfg: cfg, sem: make(chan struct{}, max)}
}

// fixedSQL are the statements batches run whatever they hold (the last
// three for transactions in parts): each connection prepares them once (see
// newConns).
var fixedSQL = []string{lockSQL, unlockSQL, progressSQL, catalogSQL, settingsSQL,
	originSetupSQL, xactSetupSQL, originResetSQL, advanceSQL, stageSQL, unstageSQL, partSQL}

// prepare prepares fixedSQL on c. A statement that fails to prepare (say,
// the pgcourier schema is missing) is left unprepared: it then runs as the
// unnamed statement, and the batch that runs it reports the error.
func prepare(ctx context.Context, c *pgx.Conn) error {
	for _, sql := range fixedSQL {
		if _, err := c.Prepare(ctx, sql, sql); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				return fmt.Errorf("prepare statements: %w", err)
			}
		}
	}
	return nil
}

// acquire returns an idle connection or a new one, waiting while max are in
// use. The caller must give it back with release.
func (p *conns) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return nil, errClosed
	}
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if !c.IsClosed() {
			p.mu.Unlock()
			return c, nil
		}
	}
	p.mu.Unlock()
	c, err := pgx.ConnectConfig(ctx, p.cfg.Copy())
	if err != nil {
		<-p.sem
		return nil, err
	}
	useTextArrays(c)
	if err := prepare(ctx, c); err != nil {
		c.Close(ctx) //nolint:errcheck // the connection failed already
		<-p.sem
		return nil, err
	}
	return c, nil
}

// release gives a connection back: kept for reuse if reusable, else closed.
func (p *conns) release(ctx context.Context, c *pgx.Conn, reusable bool) {
	defer func() { <-p.sem }()
	p.mu.Lock()
	if reusable && !p.closed && !c.IsClosed() {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	c.Close(ctx) //nolint:errcheck // the server ends the session either way
}

// close closes the idle connections; those in use are closed on release.
func (p *conns) close(ctx context.Context) {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.Close(ctx) //nolint:errcheck // closing anyway
	}
}
