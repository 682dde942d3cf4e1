package capture

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	pgcourier "github.com/pgcourier/pgcourier"
)

// Outbox is the delivery side of a node's outbox: the batches capture
// appended and their final destination has not confirmed yet, and the
// records of how each route upstream fared. The router reads and
// acknowledges through it. It is safe for concurrent use.
type Outbox struct {
	db     querier
	close  func()
	source string
}

// querier is what the outbox runs its statements on: a pool of
// connections, or one connection.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// OpenOutbox returns the outbox of node source in the database that
// database (a connection string) names. It connects lazily, and reconnects
// after a lost connection by itself. Close it when done.
func OpenOutbox(ctx context.Context, database, source string) (*Outbox, error) {
	if err := pgcourier.CheckNodeID(source); err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(database)
	if err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	cfg.MaxConns = 2
	cfg.MinConns = 0
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgcourier outbox"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	return &Outbox{db: pool, close: pool.Close, source: source}, nil
}

// OutboxOn returns the outbox of node source read and written through
// conn, for a command's one-off use; conn must not be used concurrently.
// Close leaves conn open.
func OutboxOn(conn *pgx.Conn, source string) *Outbox {
	return &Outbox{db: conn, close: func() {}, source: source}
}

// Close closes the outbox's connections.
func (o *Outbox) Close() { o.close() }

// Pending returns up to max batches not yet acknowledged by their final
// destination, oldest first, starting at (epoch, seq) or after it, all of
// one epoch, and no more than about maxBytes of them (at least one).
func (o *Outbox) Pending(ctx context.Context, epoch int64, seq uint64, max, maxBytes int) ([]pgcourier.Parcel, error) {
	rows, err := o.db.Query(ctx, `
		SELECT epoch, seq, rows, payload
		  FROM pgcourier.outbox
		 WHERE acked_at IS NULL AND (epoch, seq) >= ($1, $2)
		 ORDER BY epoch, seq
		 LIMIT $3`, epoch, int64(seq), max)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var parcels []pgcourier.Parcel
	size := 0
	for rows.Next() {
		p := pgcourier.Parcel{Source: o.source}
		var s int64
		if err := rows.Scan(&p.Epoch, &s, &p.Rows, &p.Data); err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		p.Seq = uint64(s)
		if n := len(parcels); n > 0 && (p.Epoch != parcels[0].Epoch || p.Seq != parcels[n-1].Seq+1 || size+len(p.Data) > maxBytes) {
			break
		}
		parcels = append(parcels, p)
		size += len(p.Data)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return parcels, nil
}

// Acknowledge records that the final destination applied every batch of
// epoch up to and including seq. It is idempotent. Batches of other epochs
// are left alone: an upstream that moved on to a newer epoch has not
// applied what is left of an older one.
func (o *Outbox) Acknowledge(ctx context.Context, epoch int64, seq uint64) error {
	_, err := o.db.Exec(ctx, `
		UPDATE pgcourier.outbox SET acked_at = now()
		 WHERE acked_at IS NULL AND epoch = $1 AND seq <= $2`, epoch, int64(seq))
	if err != nil {
		return fmt.Errorf("acknowledge batches up to %d: %w", seq, err)
	}
	return nil
}

// Relayed records that a relay stored every batch of epoch up to and
// including seq. The batches stay pending.
func (o *Outbox) Relayed(ctx context.Context, epoch int64, seq uint64) error {
	_, err := o.db.Exec(ctx, `
		UPDATE pgcourier.outbox SET relayed_at = now()
		 WHERE relayed_at IS NULL AND acked_at IS NULL AND epoch = $1 AND seq <= $2`, epoch, int64(seq))
	if err != nil {
		return fmt.Errorf("record batches up to %d as relayed: %w", seq, err)
	}
	return nil
}

// Reopen makes the batches of epoch from seq on pending again, for an
// upstream that lost them (a database restored from a backup). It reports
// whether the outbox still holds batch seq; if not, those batches can
// only be recovered by a new epoch.
func (o *Outbox) Reopen(ctx context.Context, epoch int64, seq uint64) (bool, error) {
	var held bool
	err := pgx.BeginFunc(ctx, o.db, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgcourier.outbox WHERE epoch = $1 AND seq = $2)`,
			epoch, int64(seq)).Scan(&held); err != nil {
			return err
		}
		if !held {
			return nil
		}
		_, err := tx.Exec(ctx, `UPDATE pgcourier.outbox SET acked_at = NULL WHERE epoch = $1 AND seq >= $2 AND acked_at IS NOT NULL`,
			epoch, int64(seq))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("reopen batches from %d: %w", seq, err)
	}
	return held, nil
}

// Trim deletes the acknowledged batches older than retention and returns
// how many it deleted.
func (o *Outbox) Trim(ctx context.Context, retention time.Duration) (int64, error) {
	tag, err := o.db.Exec(ctx, `
		DELETE FROM pgcourier.outbox
		 WHERE acked_at IS NOT NULL AND acked_at < now() - $1::interval`, retention.String())
	if err != nil {
		return 0, fmt.Errorf("trim outbox: %w", err)
	}
	return tag.RowsAffected(), nil
}

// RecordRoute records what just happened on a route for status: a
// delivery up to seq when failure is nil, the failure otherwise, marked as
// needing action when it wraps pgcourier.ErrRejected.
func (o *Outbox) RecordRoute(ctx context.Context, route, target string, seq uint64, failure error) error {
	var err error
	if failure == nil {
		_, err = o.db.Exec(ctx, `
			INSERT INTO pgcourier.route_state AS r (route, target, last_success_at, last_seq)
			VALUES ($1, $2, now(), $3)
			ON CONFLICT (route) DO UPDATE
			   SET target = $2, last_success_at = now(), last_seq = $3, updated_at = now()`,
			route, target, int64(seq))
	} else {
		_, err = o.db.Exec(ctx, `
			INSERT INTO pgcourier.route_state AS r (route, target, last_error, last_error_at, needs_action)
			VALUES ($1, $2, $3, now(), $4)
			ON CONFLICT (route) DO UPDATE
			   SET target = $2, last_error = $3, last_error_at = now(), needs_action = $4, updated_at = now()`,
			route, target, failure.Error(), errors.Is(failure, pgcourier.ErrRejected))
	}
	if err != nil {
		return fmt.Errorf("record state of %s: %w", route, err)
	}
	return nil
}

// OutboxStats describe what a node's outbox holds.
type OutboxStats struct {
	Pending      int       // batches not yet acknowledged by their final destination
	PendingRows  int64     // row changes in them
	PendingBytes int64     // encoded bytes of them
	Oldest       time.Time // when the oldest pending batch was captured; zero if none
	Relayed      int       // pending batches a relay holds
	Acknowledged int       // acknowledged batches kept for the retention
}

// RouteState is the last success and the last error of one route.
type RouteState struct {
	Route       string
	Target      string
	LastSuccess time.Time // zero if none
	LastSeq     uint64
	LastError   string
	LastErrorAt time.Time // zero if none
	NeedsAction bool      // the last error is one someone must fix (pgcourier.ErrRejected)
}

// Stats returns what the outbox holds.
func (o *Outbox) Stats(ctx context.Context) (OutboxStats, error) {
	var st OutboxStats
	var oldest *time.Time
	err := o.db.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE acked_at IS NULL),
		       coalesce(sum(rows) FILTER (WHERE acked_at IS NULL), 0),
		       coalesce(sum(octet_length(payload)) FILTER (WHERE acked_at IS NULL), 0),
		       min(created_at) FILTER (WHERE acked_at IS NULL),
		       count(*) FILTER (WHERE acked_at IS NULL AND relayed_at IS NOT NULL),
		       count(*) FILTER (WHERE acked_at IS NOT NULL)
		  FROM pgcourier.outbox`).
		Scan(&st.Pending, &st.PendingRows, &st.PendingBytes, &oldest, &st.Relayed, &st.Acknowledged)
	if err != nil {
		return st, fmt.Errorf("read outbox stats: %w", err)
	}
	if oldest != nil {
		st.Oldest = *oldest
	}
	return st, nil
}

// Routes returns the recorded state of every route, by name.
func (o *Outbox) Routes(ctx context.Context) (map[string]RouteState, error) {
	rows, err := o.db.Query(ctx, `
		SELECT route, target, last_success_at, coalesce(last_seq, 0), coalesce(last_error, ''), last_error_at, needs_action
		  FROM pgcourier.route_state`)
	if err != nil {
		return nil, fmt.Errorf("read route state: %w", err)
	}
	defer rows.Close()
	states := map[string]RouteState{}
	for rows.Next() {
		var r RouteState
		var ok, failed *time.Time
		var seq int64
		if err := rows.Scan(&r.Route, &r.Target, &ok, &seq, &r.LastError, &failed, &r.NeedsAction); err != nil {
			return nil, fmt.Errorf("read route state: %w", err)
		}
		r.LastSeq = uint64(seq)
		if ok != nil {
			r.LastSuccess = *ok
		}
		if failed != nil {
			r.LastErrorAt = *failed
		}
		states[r.Route] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read route state: %w", err)
	}
	return states, nil
}
