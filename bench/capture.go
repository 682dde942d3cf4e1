package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/wire"
)

const (
	// captureSlot names the slot and the publication of pgcourier's
	// capture, apart from the harness's own publication.
	captureSlot = "bench_capture"
	// captureNode is the source id the capture writes into every batch.
	captureNode = "bench"
	// captureAppName is the application_name of the capture's ordinary
	// connections (the outbox writer, the snapshot reader), by which the
	// harness finds their backends. Its replication connection is
	// "pgcourier capture <node>", set by the capturer.
	captureAppName = "pgcourier-bench-capture"
	// captureChildEnv, when set, makes the bench binary (or the test
	// binary, see TestMain) run only a capturer configured by the
	// captureConfig in it, as JSON, until SIGTERM; with a router shipping
	// its outbox when the configuration names a route.
	captureChildEnv = "PGCOURIER_BENCH_CAPTURE"
)

// outboxCapture is pgcourier's capture: a capturer in a process of its own
// streams the slot into batches in pgcourier.outbox on the source, and the
// harness follows the outbox, decoding every batch. Nothing is applied
// upstream: it shows what capture sustains next to decode, the ceiling. Its
// CPU is that of the capture process, its walsender and the backends of its
// ordinary connections (which write the outbox); its memory that of the
// capture process; its wire bytes the outbox payload bytes, the compressed
// batches that will cross the wire later.
type outboxCapture struct {
	e      *env
	conn   *pgx.Conn // the harness's connection to the source, reading the outbox
	reader outboxReader
	want   int64 // row changes of the stretches waited for
	meter  meter
	proc   *child // the capture process, once started
}

var _ contender = (*outboxCapture)(nil)

func (c *outboxCapture) live() bool { return true }

// prepare creates the pgcourier schema, the publication and the slot, so
// that the changes from now on wait for the capture.
func (c *outboxCapture) prepare(ctx context.Context, e *env) error {
	c.e = e
	c.reader.seen = map[int64]outboxMark{}
	var err error
	if c.conn, err = pgx.Connect(ctx, e.srcURL); err != nil {
		return fmt.Errorf("set up capture: %w", err)
	}
	return setupCapture(ctx, c.conn, e)
}

// setupCapture creates the pgcourier schema, the publication and the slot
// of pgcourier's capture on the source conn is connected to. Rows that
// exist already (W3's seed) are on the target too, so their initial
// snapshot is marked done, as native subscribes with copy_data = false.
func setupCapture(ctx context.Context, conn *pgx.Conn, e *env) error {
	if _, err := schema.Migrate(ctx, conn); err != nil {
		return fmt.Errorf("set up capture: %w", err)
	}
	_, err := capture.Setup(ctx, conn, capture.SetupOptions{Slot: captureSlot, Publication: captureSlot, Tables: captureTables(e)})
	if err != nil {
		return fmt.Errorf("set up capture: %w", err)
	}
	if _, err := conn.Exec(ctx, "UPDATE pgcourier.snapshot_progress SET done = true, updated_at = now() WHERE slot = $1", captureSlot); err != nil {
		return fmt.Errorf("set up capture: skip the snapshot of the seed rows: %w", err)
	}
	return nil
}

// captureTables selects the workload's tables and the marker table.
func captureTables(e *env) pgcourier.TableFilter {
	var f pgcourier.TableFilter
	for _, t := range slices.Concat(e.tables, []string{markerTable}) {
		f.Include = append(f.Include, "public."+t)
	}
	return f
}

// newCaptureConfig returns the configuration of a capture process on the
// source of e.
func newCaptureConfig(e *env) (captureConfig, error) {
	db, err := url.Parse(e.srcURL)
	if err != nil {
		return captureConfig{}, err
	}
	q := db.Query()
	q.Set("application_name", captureAppName)
	db.RawQuery = q.Encode()
	return captureConfig{
		Database:    db.String(),
		Slot:        captureSlot,
		Publication: captureSlot,
		Tables:      captureTables(e).Include,
		CPUProfile:  e.cpuProfile,
	}, nil
}

// start runs the capture process and returns once its walsender streams.
func (c *outboxCapture) start(ctx context.Context) error {
	cfg, err := newCaptureConfig(c.e)
	if err != nil {
		return fmt.Errorf("start capture: %w", err)
	}
	if c.proc, err = startChild("capture", captureChildEnv, cfg); err != nil {
		return err
	}
	if err := c.meter.addProc(c.proc.pid(), "pgcourier capture", true); err != nil {
		return err
	}
	err = poll(ctx, 2*time.Millisecond, func() (bool, error) {
		if err := c.exitErr(); err != nil {
			return false, err
		}
		return trackCapture(ctx, c.conn, &c.meter)
	})
	if err != nil {
		return fmt.Errorf("wait for the capture to stream: %w", err)
	}
	return nil
}

// trackCapture finds the walsender of pgcourier's capture and the backends
// of its ordinary connections and, once the walsender streams, adds them to
// m and reports true. The outbox writer connects before the walsender; the
// snapshot reader, idle here, may not have yet and may go uncounted.
func trackCapture(ctx context.Context, conn *pgx.Conn, m *meter) (bool, error) {
	var walsender *int32
	err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", captureSlot).Scan(&walsender)
	if err != nil || walsender == nil {
		return false, err
	}
	if err := m.addProc(int(*walsender), "walsender", false); err != nil {
		return false, err
	}
	if err := trackBackends(ctx, conn, m, "backend", captureAppName); err != nil {
		return false, err
	}
	return true, nil
}

// trackBackends adds to m, under label, the client backends on conn's
// server whose application_name is one of names. A backend that exits
// before it is read is left out.
func trackBackends(ctx context.Context, conn *pgx.Conn, m *meter, label string, names ...string) error {
	rows, err := conn.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1) AND backend_type = 'client backend'", names)
	if err != nil {
		return err
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := m.addProc(int(pid), label, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// exitErr reports a capture process that has exited, with what it said.
func (c *outboxCapture) exitErr() error {
	if c.proc == nil {
		return nil
	}
	return c.proc.err()
}

// wait follows the outbox until the marker's insert is in it and checks
// that exactly the stretch's changes came before it.
func (c *outboxCapture) wait(ctx context.Context, s stretch) (arrival, error) {
	c.reader.lagLo, c.reader.lagHi, c.reader.lagEvery = 1, 0, 1
	if s.lag {
		c.reader.lagLo, c.reader.lagHi, c.reader.lagEvery = s.lagLo, s.lagHi, s.lagEvery
	}
	var m outboxMark
	err := poll(ctx, 5*time.Millisecond, func() (bool, error) {
		if err := c.exitErr(); err != nil {
			return false, err
		}
		if err := c.reader.read(ctx, c.conn); err != nil {
			return false, err
		}
		var ok bool
		m, ok = c.reader.seen[s.marker]
		return ok, nil
	})
	if err != nil {
		return arrival{}, fmt.Errorf("wait for marker %d in the outbox: %w", s.marker, err)
	}
	if m.changes != s.changes {
		return arrival{}, fmt.Errorf("captured %d row changes before marker %d, the workload committed %d", m.changes, s.marker, s.changes)
	}
	c.want += s.changes
	a := arrival{at: m.at, rows: m.changes}
	if s.lag {
		if n := int64(len(m.lags)); n != s.lagSample() {
			return arrival{}, fmt.Errorf("read lags: %d of %d subjects sampled from %d to %d in the outbox", n, s.lagSample(), s.lagLo, s.lagHi)
		}
		a.lags = m.lags
	}
	return a, nil
}

// usage reads the processes; its wire bytes are the outbox payload bytes
// the harness has read.
func (c *outboxCapture) usage() (usage, error) {
	u, err := c.meter.sample()
	u.wire = c.reader.bytes
	return u, err
}

// check reads what else is in the outbox and confirms that it holds the
// workload's row changes and the markers, no more, all decoded without
// error.
func (c *outboxCapture) check(ctx context.Context) error {
	if err := c.exitErr(); err != nil {
		return err
	}
	if err := c.reader.read(ctx, c.conn); err != nil {
		return fmt.Errorf("check outbox: %w", err)
	}
	if c.reader.total != c.want {
		return fmt.Errorf("check outbox: %d row changes captured, the workload committed %d", c.reader.total, c.want)
	}
	var batches, rows int64
	if err := c.conn.QueryRow(ctx, "SELECT count(*), coalesce(sum(rows), 0) FROM pgcourier.outbox").Scan(&batches, &rows); err != nil {
		return fmt.Errorf("check outbox: %w", err)
	}
	if batches != c.reader.batches || rows != c.reader.rows {
		return fmt.Errorf("check outbox: it holds %d batches of %d changes, the harness read %d of %d", batches, rows, c.reader.batches, c.reader.rows)
	}
	return nil
}

// close stops the capture process and drops the slot.
func (c *outboxCapture) close(ctx context.Context) error {
	if c.e == nil {
		return nil
	}
	if c.proc != nil {
		c.proc.stop()
	}
	if c.conn != nil {
		c.conn.Close(ctx)
	}
	return dropSlot(ctx, c.e.srcURL, captureSlot)
}

// outboxReader reads the batches in the outbox in seq order, each once, and
// counts the row changes between markers (inserts into the marker table).
type outboxReader struct {
	seen    map[int64]outboxMark // markers read, by id
	lastSeq int64                // the last batch read
	batches int64                // batches read
	rows    int64                // changes read, markers included: the sum of the outbox's rows column
	total   int64                // row changes read, markers excluded
	bytes   int64                // payload bytes read
	changes int64                // row changes since the last marker
	// lagLo and lagHi select the subjects whose lag to take, every
	// lagEvery-th from lagLo on (every one when lagEvery is 0); none when
	// lagLo > lagHi.
	lagLo, lagHi, lagEvery int64
	lags                   []time.Duration // lags taken since the last marker
}

// outboxMark is what the reader knows when it read a marker.
type outboxMark struct {
	at      time.Time       // created_at of the marker's batch
	changes int64           // row changes since the previous marker
	lags    []time.Duration // their lags, when asked for
}

// read reads the batches appended since the last read.
func (r *outboxReader) read(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, "SELECT seq, created_at, payload FROM pgcourier.outbox WHERE seq > $1 ORDER BY seq", r.lastSeq)
	if err != nil {
		return fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var at time.Time
		var payload []byte
		if err := rows.Scan(&seq, &at, &payload); err != nil {
			return fmt.Errorf("read outbox: %w", err)
		}
		if err := r.add(seq, at, payload); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read outbox: %w", err)
	}
	return nil
}

// add takes in batch seq, written to the outbox at at.
func (r *outboxReader) add(seq int64, at time.Time, payload []byte) error {
	if seq != r.lastSeq+1 {
		return fmt.Errorf("outbox batch %d after batch %d: want no gaps", seq, r.lastSeq)
	}
	b, err := wire.Decode(payload)
	if err != nil {
		return fmt.Errorf("outbox batch %d: %w", seq, err)
	}
	if b.Seq != uint64(seq) {
		return fmt.Errorf("outbox batch %d holds batch %d", seq, b.Seq)
	}
	r.lastSeq = seq
	r.batches++
	r.bytes += int64(len(payload))
	for _, tx := range b.Transactions {
		for i := range tx.Changes {
			ch := &tx.Changes[i]
			r.rows++
			if ch.Rel.Name == markerTable && ch.Op == pgcourier.OpInsert {
				id, err := strconv.ParseInt(columnText(ch, "id"), 10, 64)
				if err != nil {
					return fmt.Errorf("outbox batch %d: marker id: %w", seq, err)
				}
				r.seen[id] = outboxMark{at: at, changes: r.changes, lags: r.lags}
				r.changes, r.lags = 0, nil
				continue
			}
			if ch.Op == pgcourier.OpTruncate {
				continue // not a row change, as for decode
			}
			r.changes++
			r.total++
			if r.lagLo <= r.lagHi && ch.Rel.Name == "subject" && ch.Op == pgcourier.OpInsert {
				if err := r.lag(ch, at); err != nil {
					return fmt.Errorf("outbox batch %d: %w", seq, err)
				}
			}
		}
	}
	return nil
}

// lag takes the lag of a subject insert written to the outbox at at, if
// the subject is one asked about.
func (r *outboxReader) lag(ch *pgcourier.Change, at time.Time) error {
	id, err := strconv.ParseInt(columnText(ch, "id"), 10, 64)
	if err != nil {
		return fmt.Errorf("subject id: %w", err)
	}
	if id < r.lagLo || id > r.lagHi || (id-r.lagLo)%max(r.lagEvery, 1) != 0 {
		return nil
	}
	created, err := parseTimestamptz(columnText(ch, "created_at"))
	if err != nil {
		return fmt.Errorf("subject %d: %w", id, err)
	}
	r.lags = append(r.lags, at.Sub(created))
	return nil
}

// columnText returns the text of column name in the change's new row, or ""
// if there is none.
func columnText(ch *pgcourier.Change, name string) string {
	for i, col := range ch.Rel.Columns {
		if col.Name == name && i < len(ch.New) {
			return ch.New[i].Text
		}
	}
	return ""
}

// parseTimestamptz parses a timestamptz as Postgres prints it with DateStyle
// ISO, such as "2026-11-26 00:05:01.123456+00" (the offset may have
// minutes and seconds).
func parseTimestamptz(s string) (time.Time, error) {
	for _, layout := range []string{
		"2006-01-02 15:04:05.999999-07",
		"2006-01-02 15:04:05.999999-07:00",
		"2006-01-02 15:04:05.999999-07:00:00",
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("timestamptz %q: want ISO format, such as 2026-11-26 00:05:01.123456+00", s)
}

// captureConfig is what the harness tells the capture process.
type captureConfig struct {
	Database    string   `json:"database"`
	Slot        string   `json:"slot"`
	Publication string   `json:"publication"`
	Tables      []string `json:"tables"` // include patterns, schema.table
	CPUProfile  string   `json:"cpu_profile,omitempty"`
	// Route, when set, makes the process a client node: a router ships
	// the outbox along this route, woken by every batch appended.
	Route *routeConfig `json:"route,omitempty"`
}

// runCaptureChild runs a capturer configured by cfg (captureConfig as JSON),
// and a router if it names a route, until SIGTERM or SIGINT, with default
// options otherwise, logging warnings and errors to stderr. With a CPU
// profile asked for, it profiles itself until then. It returns the
// process's exit code.
func runCaptureChild(cfg string) int {
	var c captureConfig
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		fmt.Fprintf(os.Stderr, "capture: %s: %v\n", captureChildEnv, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	stopProfile, err := startProfile(c.CPUProfile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		return 1
	}
	defer stopProfile()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := capture.Options{
		Node:        captureNode,
		Database:    c.Database,
		Slot:        c.Slot,
		Publication: c.Publication,
		Tables:      pgcourier.TableFilter{Include: c.Tables},
		Logger:      log.With("part", "capture"),
	}
	if c.Route != nil {
		err = runClientNode(ctx, opts, *c.Route, log)
	} else {
		var cp *capture.Capturer
		if cp, err = capture.New(opts); err == nil {
			err = cp.Run(ctx)
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "capture:", err)
		return 1
	}
	return 0
}

// startProfile starts a CPU profile of this process into path, if set, and
// returns the function that ends it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
