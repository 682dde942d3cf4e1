package apply

import (
	"context"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
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

func newConns(cfg *pgx.ConnConfig, max int) *conns {
	return &conns{cfg: cfg, sem: make(chan struct{}, max)}
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
