package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// contender is one way of carrying the source's changes to the target. The
// harness makes a fresh one for every scenario (one workload on fresh
// clusters, schema and seed rows in place) and drives it so:
//
//	live:     prepare, start, [workload, marker, wait] per stretch, check, close
//	backlog:  prepare, workload, marker, [filled], start, wait, check, close
//
// with usage read around the timed stretch. The timed window runs from the
// workload's first statement (live) or from just before start (backlog) to
// the moment wait reports. Live is used when the contender can replicate
// while the workload runs and the workload is not a backlog one (W5, W6).
// filled is called only on a contender that captures while its link is
// down (see backlogFiller).
//
// pgcourier's routes (route.go) are contenders like the others: prepare
// sets up both nodes and starts the capturing one behind a link that is
// down (a relay in the harness), so a backlog fills its outbox; start
// brings the link up; wait is e.waitMarker and e.arrived, check is
// e.check, and usage comes from a meter tracking its processes and
// connections, with the relay's byte count as wire bytes.
type contender interface {
	// live reports whether the contender can replicate while the workload
	// runs. One that cannot (copy) runs every workload as a backlog.
	live() bool
	// prepare readies the contender on fresh clusters before the workload's
	// first change: it creates what must capture changes from then on (a
	// slot, a subscription, an outbox), with the link still down. Called
	// once.
	prepare(ctx context.Context, e *env) error
	// start brings the link up and returns once the contender replicates
	// (or, for copy, once it has copied). Called once, after prepare.
	start(ctx context.Context) error
	// wait blocks until the marker of stretch s has arrived at the target
	// and reports on the stretch. Called after start, once per stretch, in
	// order.
	wait(ctx context.Context, s stretch) (arrival, error)
	// usage returns what the contender consumed so far: the CPU time of its
	// processes and of the Postgres backends working for it, the peak RSS
	// of its own processes, and the bytes that crossed between the nodes on
	// its behalf. It is called around the timed stretch, also before start,
	// and must be cheap.
	usage() (usage, error)
	// check confirms, after the last wait, that everything arrived intact
	// (e.check compares the target's tables with the source's).
	check(ctx context.Context) error
	// close stops every process the contender started and drops its slots
	// and subscriptions, whatever state it is in. Called exactly once,
	// also after an error or an interrupt, with a context that outlives
	// the run's.
	close(ctx context.Context) error
}

// stretch is a stretch of workload committed on the source, closed by a
// marker row committed after its last change.
type stretch struct {
	marker  int64 // id of the marker row in bench_marker
	changes int64 // row changes the workload committed in the stretch
	// lag, when set, asks for the per-row lag of the subjects lagLo to
	// lagHi (the stretch's rows), or of every lagEvery-th of them from
	// lagLo on, for a sample of a long stretch.
	lag          bool
	lagLo, lagHi int64
	lagEvery     int64
	// since, when set, asks when the first row applied at the target at or
	// after it arrived there: it is when the link came up in backlog mode.
	since time.Time
}

// lagSample returns how many subjects the stretch asks the lag of.
func (s stretch) lagSample() int64 {
	if !s.lag || s.lagHi < s.lagLo {
		return 0
	}
	return (s.lagHi-s.lagLo)/max(s.lagEvery, 1) + 1
}

// arrival is what a contender reports about a stretch once it arrived.
type arrival struct {
	// at is when the marker arrived: applied on the target (its
	// applied_at), received from the stream, or the end of the copy.
	at time.Time
	// rows is how many rows the contender carried for the stretch: the
	// stretch's changes for a replicator, the final row images for copy.
	rows int64
	// lags holds the per-row lag when the stretch asked for it.
	lags []time.Duration
	// first is when the first row applied at the target since the
	// stretch's since arrived, for a contender that applies there; zero
	// otherwise.
	first time.Time
}

// backlogFiller is a contender that captures while its link is down, as
// pgcourier's client node does into its outbox. In backlog mode the harness
// waits, before it brings the link up, until the stretch is captured: the
// catch-up then ships a full outbox, as after a day offline, and does not
// wait for capture.
type backlogFiller interface {
	// filled returns once every change of the stretch, and its marker, is
	// captured and waits for the link.
	filled(ctx context.Context, s stretch) error
}

// contenderEntry names a contender and says what it is.
type contenderEntry struct {
	name  string
	about string // one sentence for the method section
	make  func() contender
}

// contenders lists every contender in report order; native comes first as
// every ratio is taken against it.
var contenders = []contenderEntry{
	{
		name:  "native",
		about: "Postgres's own logical replication: CREATE PUBLICATION on the source, CREATE SUBSCRIPTION (copy_data = false) on the target, the baseline.",
		make:  func() contender { return &native{} },
	},
	{
		name: "native-offline",
		about: "native facing the link pgcourier's routes face, for the backlog workloads: its subscription stays enabled while the link is down, " +
			"the source refusing the role it connects as (ALTER ROLE … NOLOGIN), so its apply worker fails and is started again as Postgres " +
			"does by default, every wal_retrieve_retry_interval (5 s); link up is ALTER ROLE … LOGIN. Its catch-up includes noticing the link is back, " +
			"as pgcourier's does (its router probes every second).",
		make: func() contender { return &native{offline: true} },
	},
	{
		name: "decode",
		about: "pg_recvlogical draining the same publication through pgoutput (proto_version 1) into the harness, which parses every message: " +
			"the decoding ceiling, with nothing applied.",
		make: func() contender { return &decode{} },
	},
	{
		name: "capture",
		about: "pgcourier's capture, in a process of its own with default options: the slot streamed through pgoutput into whole " +
			"transactions and zstd-compressed batches appended to pgcourier.outbox in the source database, nothing applied upstream yet; " +
			"compare it with decode. Its wire bytes are the outbox payload bytes, what will cross the wire later. A transaction over " +
			"20,000 changes is written in parts as it streams in, so W6's peak RSS stays bounded whatever the transaction's size.",
		make: func() contender { return &outboxCapture{} },
	},
	{
		name: "copy",
		about: "a plain COPY of the final rows of the workload's tables from the source into emptied target tables, after the workload, " +
			"in replica mode like the apply worker (no foreign-key checks): the apply ceiling. It is not a replicator, so it runs every " +
			"workload as a backlog and has no lag.",
		make: func() contender { return &bulkCopy{} },
	},
	{
		name: "rest",
		about: "pgcourier's REST route end to end, with default options: on the source a client node in a process of its own " +
			"(pgcourier's capture, and a router shipping the outbox along one REST route, woken by every batch appended); on the " +
			"target a second process listening on 127.0.0.1 (`rest.Server` serving `rest.Handler` in front of an `apply.Writer` " +
			"with the default conflict policy), which applies every batch in one transaction. Between them a relay in the harness " +
			"is the link: down (it accepts and closes every connection) until the link comes up, and counting the bytes it forwards. " +
			"The client runs from the start, so in backlog mode the outbox fills while the link is down.",
		make: func() contender { return &route{kind: routeREST} },
	},
	{
		name: "postgres",
		about: "pgcourier's postgres route: the same client node, its one route an `apply.Route` applying the batches straight " +
			"into the target database over Postgres connections, through a relay of its own; no listener.",
		make: func() contender { return &route{kind: routePostgres} },
	},
}

// env is one scenario's world as a contender sees it: fresh source and
// target clusters, each with the schema in the benchmark database, the
// publication on the source and any seed rows on both sides.
type env struct {
	src, dst       *pgtest.Cluster
	srcURL, dstURL string   // the benchmark database (dbName) on each cluster
	tables         []string // the tables the workload writes, parents first
	dir            string   // scratch directory, removed after the scenario
	// cpuProfile, when set, is the file a contender that runs pgcourier
	// writes a CPU profile of that process to.
	cpuProfile string
}

// conninfo returns a libpq key/value connection string for the benchmark
// database on the cluster at host:port, as superuser postgres.
func conninfo(host string, port int) string { return conninfoAs(host, port, "postgres") }

// conninfoAs is conninfo for the role user.
func conninfoAs(host string, port int, user string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", host, port, user, dbName)
}

// waitMarker polls the target until marker row id exists and returns its
// applied_at: when the row was written there, which bounds every change
// committed on the source before the marker, as changes arrive in commit
// order. watch, if set, is called before every poll; its error ends the
// wait.
func (e *env) waitMarker(ctx context.Context, id int64, watch func() error) (time.Time, error) {
	conn, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return time.Time{}, fmt.Errorf("wait for marker: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var at time.Time
	err = poll(ctx, 5*time.Millisecond, func() (bool, error) {
		if watch != nil {
			if err := watch(); err != nil {
				return false, err
			}
		}
		err := conn.QueryRow(ctx, "SELECT applied_at FROM bench_marker WHERE id = $1", id).Scan(&at)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("wait for marker %d: %w", id, err)
	}
	return at, nil
}

// arrived completes the arrival of stretch s, whose marker was applied at
// the target at at: the lags and the first row the stretch asks for, read
// from the target.
func (e *env) arrived(ctx context.Context, s stretch, at time.Time) (arrival, error) {
	a := arrival{at: at, rows: s.changes}
	var err error
	if s.lag {
		if a.lags, err = e.targetLags(ctx, s); err != nil {
			return a, err
		}
	}
	if !s.since.IsZero() {
		a.first, err = e.firstApplied(ctx, s.since)
	}
	return a, err
}

// targetLags returns applied_at - created_at on the target of the subjects
// the stretch asks about.
func (e *env) targetLags(ctx context.Context, s stretch) ([]time.Duration, error) {
	conn, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return nil, fmt.Errorf("read lags: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT (extract(epoch FROM applied_at - created_at) * 1e6)::bigint
FROM subject WHERE id BETWEEN $1 AND $2 AND (id - $1) % $3 = 0`, s.lagLo, s.lagHi, max(s.lagEvery, 1))
	if err != nil {
		return nil, fmt.Errorf("read lags: %w", err)
	}
	us, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("read lags: %w", err)
	}
	if int64(len(us)) != s.lagSample() {
		return nil, fmt.Errorf("read lags: %d of %d subjects sampled from %d to %d on the target", len(us), s.lagSample(), s.lagLo, s.lagHi)
	}
	lags := make([]time.Duration, len(us))
	for i, v := range us {
		lags[i] = time.Duration(v) * time.Microsecond
	}
	return lags, nil
}

// firstApplied returns the earliest applied_at at or after since among the
// rows of the workload's tables and the marker table on the target: when
// the first row the link carried after it came up was written there.
func (e *env) firstApplied(ctx context.Context, since time.Time) (time.Time, error) {
	conn, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return time.Time{}, fmt.Errorf("read first row applied: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var first time.Time
	for _, t := range slices.Concat(e.tables, []string{markerTable}) {
		var at *time.Time
		err := conn.QueryRow(ctx, "SELECT min(applied_at) FROM "+pgx.Identifier{t}.Sanitize()+" WHERE applied_at >= $1", since).Scan(&at)
		if err != nil {
			return time.Time{}, fmt.Errorf("read first row applied: %w", err)
		}
		if at != nil && (first.IsZero() || at.Before(first)) {
			first = *at
		}
	}
	return first, nil
}

// check compares every table the workload writes on the target with the
// source: row count and a hash of the source's columns of every row.
func (e *env) check(ctx context.Context) error {
	src, err := pgx.Connect(ctx, e.srcURL)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	for _, t := range e.tables {
		cols, err := columns(ctx, src, t)
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		want, err := fingerprint(ctx, src, t, cols)
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		got, err := fingerprint(ctx, dst, t, cols)
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		if got != want {
			return fmt.Errorf("check: table %s on the target has %s, the source %s", t, got, want)
		}
	}
	return nil
}
