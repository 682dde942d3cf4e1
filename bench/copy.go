package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
)

// bulkCopy is a plain COPY of the rows the workload left in its tables,
// from the source into emptied target tables, after the workload: what the
// target can ingest at best, the ceiling of any apply. Both connections run
// in replica mode, as the apply worker does, so foreign keys are not
// checked. Its CPU is that of the two backends, its wire bytes
// those of the connection to the target.
type bulkCopy struct {
	e        *env
	src, dst *pgx.Conn
	meter    meter
	rows     int64
	end      time.Time
}

var _ contender = (*bulkCopy)(nil)

func (c *bulkCopy) live() bool { return false }

// prepare opens both connections and empties the workload's tables on the
// target (they may hold seed rows).
func (c *bulkCopy) prepare(ctx context.Context, e *env) error {
	c.e = e
	var err error
	if c.src, err = pgx.Connect(ctx, e.srcURL); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if c.dst, err = pgx.Connect(ctx, e.dstURL); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if a, ok := c.dst.PgConn().Conn().LocalAddr().(*net.TCPAddr); ok {
		c.meter.addConn(e.dst.Port(), a.Port)
	}
	for _, conn := range []*pgx.Conn{c.src, c.dst} {
		if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		var pid int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		if err := c.meter.addProc(pid, "backend", false); err != nil {
			return err
		}
	}
	if _, err := c.dst.Exec(ctx, "TRUNCATE "+columnList(e.tables)+" CASCADE"); err != nil {
		return fmt.Errorf("copy: empty target tables: %w", err)
	}
	return nil
}

// start copies every table, parents first, and returns when done.
func (c *bulkCopy) start(ctx context.Context) error {
	for _, t := range c.e.tables {
		n, err := copyTable(ctx, c.src, c.dst, t)
		if err != nil {
			return err
		}
		c.rows += n
	}
	c.end = time.Now()
	return nil
}

// wait reports the copy that start made; copy carries no marker.
func (c *bulkCopy) wait(context.Context, stretch) (arrival, error) {
	return arrival{at: c.end, rows: c.rows}, nil
}

func (c *bulkCopy) usage() (usage, error) { return c.meter.sample() }

func (c *bulkCopy) check(ctx context.Context) error { return c.e.check(ctx) }

func (c *bulkCopy) close(ctx context.Context) error {
	for _, conn := range []*pgx.Conn{c.src, c.dst} {
		if conn != nil {
			conn.Close(ctx)
		}
	}
	return nil
}
