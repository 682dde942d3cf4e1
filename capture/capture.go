// Package capture turns a node's committed local changes into batches in its
// durable outbox.
//
// A Capturer streams the node's logical replication slot (pgoutput, through
// pglogrepl), assembles whole transactions, and appends them as numbered
// batches to pgcourier.outbox in the node's own database. It confirms a
// position to the slot only after the outbox transaction that holds
// everything before it has committed, so a crash at any moment loses nothing
// and, because the outbox records the last captured commit LSN in the same
// transaction, captures nothing twice. A transaction too large for one
// batch is written in parts as it streams in (Options.PartRows); the state
// records how much of it each part's transaction wrote, so a restart goes on
// from there. Transactions that carry a replication origin were written by
// pgcourier's applier on behalf of another source and are skipped.
package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// Options configure a Capturer.
type Options struct {
	Node        string                // the source id written into every batch
	Database    string                // connection string of the node's own database
	Slot        string                // the logical replication slot (see Setup)
	Publication string                // the publication the slot streams
	Tables      pgcourier.TableFilter // the tables to capture; the publication follows it at start

	// A batch closes when it holds MaxBatchRows changes or about
	// MaxBatchBytes of values, or MaxBatchDelay after its first transaction
	// arrived: small batches while changes trickle in, large ones under load.
	MaxBatchRows  int
	MaxBatchBytes int
	MaxBatchDelay time.Duration
	// MaxBatchSpan bounds the commit times within one batch. Upstream, every
	// row a batch writes carries the batch's last commit time, so this is
	// the precision of last-writer-wins between sources.
	MaxBatchSpan time.Duration

	// A transaction that grows past PartRows changes or about PartBytes of
	// values is written to the outbox in parts of that size as it streams
	// in, before its commit arrives, so that capture's memory stays bounded
	// whatever the size of a transaction. The parts are batches of their
	// own, marked continued (see pgcourier.Batch); the applier applies them
	// as one transaction.
	PartRows  int
	PartBytes int

	// SnapshotChunkRows is the most rows one chunk of the initial snapshot
	// reads.
	SnapshotChunkRows int

	// StatusInterval is how often the slot hears from the capturer when
	// nothing else prompts it.
	StatusInterval time.Duration
	// ReadTimeout bounds every read of the replication stream; a server that
	// stays silent longer is treated as gone. A walsender whose client
	// replies regularly sends nothing while nothing is published, so after
	// half of it without a word capture asks the server for an answer.
	ReadTimeout time.Duration

	// Appended, if set, is called after every batch the outbox committed,
	// so that a sender can wake at once. It must not block.
	Appended func()

	Logger *slog.Logger
}

// Defaults for zero Options fields.
const (
	DefaultMaxBatchRows   = 10000
	DefaultMaxBatchBytes  = 8 << 20
	DefaultMaxBatchDelay  = 100 * time.Millisecond
	DefaultMaxBatchSpan   = time.Second
	DefaultPartRows       = 20000
	DefaultPartBytes      = 16 << 20
	DefaultStatusInterval = 10 * time.Second
	DefaultReadTimeout    = 90 * time.Second
)

// shutdownTimeout bounds the work capture does after it was told to stop.
const shutdownTimeout = 5 * time.Second

// At the head of the stream the server sends each message as it decodes
// it, and a read would wake capture for every one of them: after a read
// that had to wait longer than readWaited, capture pauses readCoalesce
// before the next, which then takes everything that arrived meanwhile at
// once. Under W1's flat-out single-row load a 1 ms pause took about a
// tenth off capture's CPU and cut its lag p99 from 0.30–0.64 s to
// 0.17–0.27 s (three runs each, alternating). 5 ms rather than 1 lowered
// the end-to-end flat-out lag p99 in five of six alternating pairs of W1
// runs on each route: over REST 0.17–1.06 s (median 0.59 s) against
// 0.25–1.45 s (0.86 s), over the postgres route 0.22–0.92 s (0.30 s)
// against 0.42–1.56 s (0.67 s). It adds about 5 ms to the lag at a steady
// 1,000 rows/s.
const (
	readWaited   = 200 * time.Microsecond
	readCoalesce = 5 * time.Millisecond
)

// Capturer streams a node's changes into its outbox. Create it with New and
// run it with Run.
type Capturer struct {
	opts Options
	log  *slog.Logger
}

// New checks opts, fills in defaults and returns a Capturer. It starts
// nothing.
func New(opts Options) (*Capturer, error) {
	if err := pgcourier.CheckNodeID(opts.Node); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	if opts.Database == "" || opts.Slot == "" || opts.Publication == "" {
		return nil, fmt.Errorf("capture: database, slot and publication are required")
	}
	for _, name := range []string{opts.Slot, opts.Publication} {
		if !plainName(name) {
			return nil, fmt.Errorf("capture: name %q: use lowercase letters, digits and '_'", name)
		}
	}
	if opts.MaxBatchRows <= 0 {
		opts.MaxBatchRows = DefaultMaxBatchRows
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if opts.MaxBatchDelay <= 0 {
		opts.MaxBatchDelay = DefaultMaxBatchDelay
	}
	if opts.MaxBatchSpan <= 0 {
		opts.MaxBatchSpan = DefaultMaxBatchSpan
	}
	if opts.PartRows <= 0 {
		opts.PartRows = DefaultPartRows
	}
	if opts.PartBytes <= 0 {
		opts.PartBytes = DefaultPartBytes
	}
	if opts.SnapshotChunkRows <= 0 {
		opts.SnapshotChunkRows = DefaultSnapshotChunkRows
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = DefaultStatusInterval
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Capturer{opts: opts, log: log.With("slot", opts.Slot)}, nil
}

// Run captures until ctx is done, then returns nil. A lost connection or a
// Postgres restart is retried with backoff; a lost slot (ErrSlotLost) ends
// Run with that error, because capture cannot go on without losing data.
func (c *Capturer) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 500 * time.Millisecond, 30 * time.Second
	backoff := minBackoff
	for {
		started := time.Now()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrSlotLost) {
			return err
		}
		if time.Since(started) > time.Minute {
			backoff = minBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if hint := needsOperator(err); hint != "" {
			// It will not heal by itself, but capture keeps trying so that
			// it resumes on its own once someone fixed it.
			c.log.Error("capture stopped; retrying", "err", err, "hint", hint, "retry_in", wait.Round(time.Millisecond))
		} else {
			c.log.Warn("capture interrupted; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// session runs one replication connection until it fails or ctx is done.
func (c *Capturer) session(ctx context.Context) error {
	db, err := pgx.Connect(ctx, c.opts.Database)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	// The slot hears of a position once the outbox commit that holds it
	// returns, and never sends it again: that commit must be on disk when
	// it returns. Where the server, database or role turned
	// synchronous_commit off, the outbox's connection turns it back to
	// local; a stronger setting (waiting for a standby) stays.
	if _, err := db.Exec(ctx, `SELECT CASE WHEN current_setting('synchronous_commit') = 'off'
		THEN set_config('synchronous_commit', 'local', false) END`); err != nil {
		return fmt.Errorf("connect: %w", err)
	}

	res, err := Setup(ctx, db, SetupOptions{Slot: c.opts.Slot, Publication: c.opts.Publication, Tables: c.opts.Tables})
	if errors.Is(err, ErrNoIdentity) {
		c.log.Error("tables left out of capture", "err", err)
	} else if err != nil {
		return err
	}
	for _, t := range res.Added {
		c.log.Info("table added to capture", "table", t.Ident())
	}

	ob, err := openOutbox(ctx, db, c.opts.Node, c.opts.Slot)
	if err != nil {
		return err
	}

	rcfg, err := pgconn.ParseConfig(c.opts.Database)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	rcfg.RuntimeParams["replication"] = "database"
	rcfg.RuntimeParams["application_name"] = "pgcourier capture " + c.opts.Node
	withValueSettings(rcfg.RuntimeParams)
	repl, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer repl.Close(context.WithoutCancel(ctx))

	err = pglogrepl.StartReplication(ctx, repl, c.opts.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", c.opts.Publication), "messages 'true'"},
	})
	if err != nil {
		return fmt.Errorf("start replication: %w", err)
	}
	c.log.Info("capture streaming", "epoch", ob.epoch, "next_seq", ob.nextSeq, "last_commit_lsn", ob.lastCommitLSN)

	snap, err := newSnapshotter(ctx, c.opts.Database, c.opts.Slot, c.opts.SnapshotChunkRows, c.log)
	if err != nil {
		return err
	}
	defer snap.close(ctx)

	s := &stream{c: c, db: db, repl: repl, ob: ob, snap: snap}
	s.asm = newAssembler(s.typeName, ob.written, c.opts.PartRows, c.opts.PartBytes)
	err = s.run(ctx)
	if ctx.Err() != nil {
		// Shutting down: keep what was received, tell the slot, and go.
		// Whatever does not make it is sent again by the slot next time.
		done, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if len(s.pending) > 0 {
			if err := s.flush(done); err != nil {
				c.log.Warn("capture: pending batch not written on shutdown", "err", err)
			}
		}
		s.sendStatus(done) //nolint:errcheck // best effort on the way out
	}
	return err
}

// stream is the state of one replication session.
type stream struct {
	c    *Capturer
	db   *pgx.Conn
	repl *pgconn.PgConn
	ob   *outbox
	asm  *assembler

	pending      []pgcourier.Transaction
	pendingRows  int
	pendingBytes int
	flushAt      time.Time
	progress     []snapProgress // snapshot progress to record with the pending batch

	snap *snapshotter

	processed  pgcourier.LSN // end of the last commit handled (pending or skipped)
	durable    pgcourier.LSN // confirmed to the slot: everything before it is in the outbox
	nextStatus time.Time

	// heard is when the server was last heard from, or when capture went
	// back to reading after a pause in which it did not listen (a snapshot
	// chunk); asked says a status update asking for an answer has been
	// sent since.
	heard time.Time
	asked bool

	types map[typeKey]string
}

type typeKey struct {
	oid    uint32
	typmod int32
}

func (s *stream) typeName(ctx context.Context, oid uint32, typmod int32) (string, error) {
	k := typeKey{oid, typmod}
	if n, ok := s.types[k]; ok {
		return n, nil
	}
	var n string
	if err := s.db.QueryRow(ctx, `SELECT format_type($1, nullif($2, -1))`, oid, typmod).Scan(&n); err != nil {
		return "", fmt.Errorf("look up type %d: %w", oid, err)
	}
	if s.types == nil {
		s.types = map[typeKey]string{}
	}
	s.types[k] = n
	return n, nil
}

func (s *stream) run(ctx context.Context) error {
	opts := s.c.opts
	s.nextStatus = time.Now().Add(opts.StatusInterval)
	s.heard = time.Now()
	// Reads block on the connection without a context; cancelling ctx
	// wakes a blocked read by moving its deadline to now.
	var readDeadline time.Time
	// waited: the last read waited for the server, at the head of the stream.
	waited := false
	stop := context.AfterFunc(ctx, func() { s.repl.Conn().SetReadDeadline(time.Now()) }) //nolint:errcheck // the read fails either way
	defer stop()
	defer s.repl.Conn().SetReadDeadline(time.Time{}) //nolint:errcheck // the session ends; best effort for the shutdown status
	for {
		// A chunk is read as soon as none is in flight, however far behind
		// the stream is (a logical walsender sends its read position as
		// the WAL end, so the stream cannot tell): it waits in memory, at
		// most a chunk's rows, for its high watermark to come through.
		if s.snap.idle() {
			if err := s.snap.start(ctx); err != nil {
				return err
			}
			s.heard, s.asked = time.Now(), false // the server was not silent: nobody listened
		}
		deadline := s.nextStatus
		if len(s.pending) > 0 && s.flushAt.Before(deadline) {
			deadline = s.flushAt
		}
		if askAt := s.askAt(); !s.asked && askAt.Before(deadline) {
			deadline = askAt
		}
		if heardBy := s.heard.Add(opts.ReadTimeout); heardBy.Before(deadline) {
			deadline = heardBy
		}
		// The read deadline lives on the connection and changes only when
		// the next flush or status is due: a deadline context per message
		// cost a third of capture's CPU when draining a backlog.
		if !deadline.Equal(readDeadline) {
			if err := s.repl.Conn().SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("receive: %w", err)
			}
			readDeadline = deadline
			if ctx.Err() != nil { // cancelled before the new deadline was set
				return ctx.Err()
			}
		}
		if waited {
			time.Sleep(readCoalesce)
		}
		began := time.Now()
		raw, err := s.repl.ReceiveMessage(context.Background())
		waited = time.Since(began) > readWaited
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !pgconn.Timeout(err) {
				return fmt.Errorf("receive: %w", err)
			}
			if time.Since(s.heard) >= opts.ReadTimeout {
				return fmt.Errorf("receive: no message from the server for %s", opts.ReadTimeout)
			}
			if err := s.tick(ctx); err != nil {
				return err
			}
			continue
		}
		s.heard, s.asked = time.Now(), false
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if err := s.copyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		default:
			return fmt.Errorf("replication stream: unexpected message %T", raw)
		}
		if err := s.tick(ctx); err != nil {
			return err
		}
	}
}

// tick flushes a batch that is due and sends a status update that is due,
// or one that asks the server for an answer (see askAt).
func (s *stream) tick(ctx context.Context) error {
	now := time.Now()
	if len(s.pending) > 0 && !now.Before(s.flushAt) {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	if !now.Before(s.nextStatus) || s.mustAsk(now) {
		return s.sendStatus(ctx)
	}
	return nil
}

// askAt returns when capture asks the server for an answer, if it has not
// heard from it by then. A walsender pings its client only when the client
// has not replied for half of wal_sender_timeout, and capture replies every
// StatusInterval: on a quiet database, or while the server decodes a long
// stretch of WAL that publishes nothing (a large transaction on a table
// not captured, after a restart), the server would say nothing until
// ReadTimeout ended the session, and the next session would start that
// stretch over.
// Asked, it answers with a keepalive at once, even while decoding; a large
// transaction it replays at its commit delays the answer by at most half
// of wal_sender_timeout.
func (s *stream) askAt() time.Time {
	return s.heard.Add(s.c.opts.ReadTimeout / 2)
}

// mustAsk reports whether a status update sent at now asks the server for
// an answer: askAt has passed and no question is out yet.
func (s *stream) mustAsk(now time.Time) bool { return !s.asked && !now.Before(s.askAt()) }

func (s *stream) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("replication stream: empty message")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		// Nothing in flight: every transaction before the server's WAL end
		// has been handled, so the slot may move on even if the published
		// tables are quiet while others churn.
		if !s.asm.inTransaction() && len(s.pending) == 0 && pgcourier.LSN(ka.ServerWALEnd) > s.durable {
			s.durable = pgcourier.LSN(ka.ServerWALEnd)
			s.processed = s.durable
		}
		if ka.ReplyRequested {
			return s.sendStatus(ctx)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		msg, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		done, err := s.asm.add(ctx, msg)
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		switch {
		case done == nil:
		case done.part:
			return s.part(ctx, done)
		default:
			return s.commit(ctx, done)
		}
	}
	return nil
}

// part writes the next part of an open transaction to the outbox, after
// the transactions before it. The slot hears nothing of it: the position
// it may confirm is still the end of the last whole transaction, and a
// restarted capture skips the changes written (outbox.written).
func (s *stream) part(ctx context.Context, t *committed) error {
	s.snap.observe(&t.tx, t.skipped)
	if t.skipped {
		return nil // relayed data: observed, and not kept
	}
	// When an update in the part makes a snapshot start over, the
	// restart is recorded with the part (see moved).
	restarts, err := s.snap.moved(ctx, &t.tx)
	if err != nil {
		return err
	}
	if len(s.pending) > 0 {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	b := &pgcourier.Batch{Transactions: []pgcourier.Transaction{t.tx}, Continued: true}
	if err := s.ob.append(ctx, b, restarts); err != nil {
		return err
	}
	s.c.log.Debug("part of a large transaction captured", "seq", b.Seq, "rows", len(t.tx.Changes),
		"rows_so_far", s.ob.partRows, "commit_lsn", t.tx.CommitLSN)
	if s.c.opts.Appended != nil {
		s.c.opts.Appended()
	}
	return nil
}

// commit takes a finished transaction into the pending batch, or skips it.
func (s *stream) commit(ctx context.Context, t *committed) error {
	s.snap.observe(&t.tx, t.skipped)
	// Relayed data, or nothing published, is skipped; but the last part
	// of a transaction written in parts must follow the others even if
	// every change in it was written before.
	tx, keep := &t.tx, !t.skipped && (len(t.tx.Changes) > 0 || t.parted)
	var prog *snapProgress
	size := t.bytes
	if t.marker != "" {
		tx, prog, size = s.snap.marker(t.marker, t.tx)
		keep = tx != nil && len(tx.Changes) > 0
	}
	if keep && tx.CommitLSN <= s.ob.lastCommitLSN {
		// Already in the outbox: the slot had not heard so before a crash.
		keep = false
	}
	var restarts []snapProgress
	if !t.skipped {
		// When an update in the transaction makes a snapshot start over,
		// the restart is recorded with the batch that holds it (see
		// moved). The changes of a transaction the outbox holds already
		// were dropped on the way in: it does not restart one again.
		// moved runs before the transaction joins the pending batch, which
		// shutdown writes even when the session ended in moved: that batch
		// must not hold the transaction without its restart, or a restarted
		// capture would skip the transaction and the restart with it.
		var err error
		if restarts, err = s.snap.moved(ctx, &t.tx); err != nil {
			return err
		}
	}
	if keep {
		if len(s.pending) > 0 && tx.CommitTime.Sub(s.pending[0].CommitTime) > s.c.opts.MaxBatchSpan ||
			t.parted && len(s.pending) > 0 {
			if err := s.flush(ctx); err != nil {
				return err
			}
		}
		if len(s.pending) == 0 {
			s.flushAt = time.Now().Add(s.c.opts.MaxBatchDelay)
		}
		s.pending = append(s.pending, *tx)
		s.pendingRows += len(tx.Changes)
		s.pendingBytes += size
	}
	if prog != nil {
		s.progress = append(s.progress, *prog)
	}
	s.progress = append(s.progress, restarts...)
	s.processed = t.endLSN
	if len(s.pending) == 0 {
		if len(s.progress) > 0 {
			if err := s.ob.saveProgress(ctx, s.progress); err != nil {
				return err
			}
			s.progress = nil
		}
		s.durable = s.processed
		return nil
	}
	if s.pendingRows >= s.c.opts.MaxBatchRows || s.pendingBytes >= s.c.opts.MaxBatchBytes {
		return s.flush(ctx)
	}
	return nil
}

// flush writes the pending transactions to the outbox as one batch and
// confirms them to the slot.
func (s *stream) flush(ctx context.Context) error {
	start := time.Now()
	if err := s.ob.append(ctx, &pgcourier.Batch{Transactions: s.pending}, s.progress); err != nil {
		return err
	}
	if s.c.log.Enabled(ctx, slog.LevelDebug) {
		// The ages of its first and last commits (by the server's clock)
		// say how long the batch gathered and, at most, how far behind
		// the stream capture was (a quiet moment before the batch closed
		// counts too).
		s.c.log.Debug("batch captured", "seq", s.ob.nextSeq-1, "transactions", len(s.pending), "rows", s.pendingRows, "lsn", s.processed,
			"oldest", start.Sub(s.pending[0].CommitTime).Round(time.Millisecond),
			"newest", start.Sub(s.pending[len(s.pending)-1].CommitTime).Round(time.Millisecond),
			"took", time.Since(start).Round(10*time.Microsecond))
	}
	s.pending, s.pendingRows, s.pendingBytes, s.progress = nil, 0, 0, nil
	s.durable = s.processed
	if s.c.opts.Appended != nil {
		s.c.opts.Appended()
	}
	return s.sendStatus(ctx)
}

// sendStatus tells the slot what is durable: write, flush and apply
// positions are all the outbox's position, never what is merely received.
// Once the server has been silent past askAt, it asks for an answer.
func (s *stream) sendStatus(ctx context.Context) error {
	now := time.Now()
	ask := s.mustAsk(now)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.repl, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(s.durable),
		WALFlushPosition: pglogrepl.LSN(s.durable),
		WALApplyPosition: pglogrepl.LSN(s.durable),
		ReplyRequested:   ask,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.asked = s.asked || ask
	s.nextStatus = now.Add(s.c.opts.StatusInterval)
	return nil
}

// outbox appends batches for one slot.
type outbox struct {
	db            *pgx.Conn
	source        string
	slot          string
	epoch         int64
	nextSeq       uint64
	lastCommitLSN pgcourier.LSN
	// The transaction being written in parts, if any: its commit LSN and
	// the changes of it written so far.
	partLSN  pgcourier.LSN
	partRows int
}

func openOutbox(ctx context.Context, db *pgx.Conn, source, slot string) (*outbox, error) {
	ob := &outbox{db: db, source: source, slot: slot}
	var lsn string
	var partLSN *string
	err := db.QueryRow(ctx, `
		SELECT epoch, next_seq, last_commit_lsn::text, part_lsn::text, part_rows
		  FROM pgcourier.capture_state WHERE slot = $1`, slot).
		Scan(&ob.epoch, &ob.nextSeq, &lsn, &partLSN, &ob.partRows)
	if err != nil {
		return nil, fmt.Errorf("read capture state: %w", err)
	}
	if ob.lastCommitLSN, err = pgcourier.ParseLSN(lsn); err != nil {
		return nil, fmt.Errorf("read capture state: %w", err)
	}
	if partLSN != nil {
		if ob.partLSN, err = pgcourier.ParseLSN(*partLSN); err != nil {
			return nil, fmt.Errorf("read capture state: %w", err)
		}
	}
	return ob, nil
}

// written says how much of the transaction committed at lsn the outbox
// holds: all of it, or its first rows changes.
func (ob *outbox) written(lsn pgcourier.LSN) (all bool, rows int) {
	if lsn <= ob.lastCommitLSN {
		return true, 0
	}
	if lsn == ob.partLSN {
		return false, ob.partRows
	}
	return false, 0
}

// append writes b's transactions as the next batch, the new capture state
// and the snapshot progress the batch makes, in one transaction. It fills
// in b's source, epoch and seq. A continued batch is the next part of its
// last transaction: the state records how much of that is written instead
// of its commit, which is still to come.
func (ob *outbox) append(ctx context.Context, b *pgcourier.Batch, progress []snapProgress) error {
	b.Source, b.Epoch, b.Seq = ob.source, ob.epoch, ob.nextSeq
	txs := b.Transactions
	payload, err := wire.Encode(b)
	if err != nil {
		return fmt.Errorf("encode batch %d: %w", b.Seq, err)
	}
	first, last := txs[0], txs[len(txs)-1]
	if !b.Continued && ob.partLSN != 0 && last.CommitLSN < ob.partLSN {
		// Only the batch that ends the transaction in parts may clear its
		// state; clearing it sooner would write its first parts again
		// after a restart.
		return fmt.Errorf("batch %d ends before the transaction in parts (commit LSN %s) it would close", b.Seq, ob.partLSN)
	}
	partLSN, partRows := pgcourier.LSN(0), 0
	if b.Continued {
		partLSN, partRows = last.CommitLSN, len(last.Changes)
		if partLSN == ob.partLSN {
			partRows += ob.partRows
		}
	}
	err = pgx.BeginFunc(ctx, ob.db, func(tx pgx.Tx) error {
		var tag pgconn.CommandTag
		var err error
		if b.Continued {
			tag, err = tx.Exec(ctx, `
				UPDATE pgcourier.capture_state
				   SET next_seq = next_seq + 1, part_lsn = $4::text::pg_lsn, part_rows = $5, updated_at = now()
				 WHERE slot = $1 AND epoch = $2 AND next_seq = $3`,
				ob.slot, ob.epoch, b.Seq, partLSN.String(), partRows)
		} else {
			tag, err = tx.Exec(ctx, `
				UPDATE pgcourier.capture_state
				   SET next_seq = next_seq + 1, last_commit_lsn = $4::text::pg_lsn,
				       part_lsn = NULL, part_rows = 0, updated_at = now()
				 WHERE slot = $1 AND epoch = $2 AND next_seq = $3`,
				ob.slot, ob.epoch, b.Seq, last.CommitLSN.String())
		}
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("capture state of slot %s changed under this capturer (another pgcourier on the same database?)", ob.slot)
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO pgcourier.outbox
			       (epoch, seq, first_commit_lsn, last_commit_lsn, last_commit_time, transactions, rows, payload)
			VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, $5, $6, $7, $8)`,
			ob.epoch, b.Seq, first.CommitLSN.String(), last.CommitLSN.String(), last.CommitTime, len(txs), b.Rows(), payload)
		if err != nil {
			return err
		}
		return recordProgress(ctx, tx, ob.slot, progress)
	})
	if err != nil {
		return fmt.Errorf("append batch %d to outbox: %w", b.Seq, err)
	}
	ob.nextSeq++
	if b.Continued {
		ob.partLSN, ob.partRows = partLSN, partRows
	} else {
		ob.lastCommitLSN = last.CommitLSN
		ob.partLSN, ob.partRows = 0, 0
	}
	return nil
}

// saveProgress records snapshot progress that no batch carries (a chunk
// whose rows all changed while it was read, or an empty last chunk).
func (ob *outbox) saveProgress(ctx context.Context, progress []snapProgress) error {
	err := pgx.BeginFunc(ctx, ob.db, func(tx pgx.Tx) error {
		return recordProgress(ctx, tx, ob.slot, progress)
	})
	if err != nil {
		return fmt.Errorf("record snapshot progress: %w", err)
	}
	return nil
}

func recordProgress(ctx context.Context, tx pgx.Tx, slot string, progress []snapProgress) error {
	for _, p := range progress {
		_, err := tx.Exec(ctx, `
			UPDATE pgcourier.snapshot_progress
			   SET last_key = $3, key_columns = $4, rows_done = $5, done = $6, updated_at = now()
			 WHERE slot = $1 AND table_name = $2`, slot, p.table, p.lastKey, p.keyOrder, p.rows, p.done)
		if err != nil {
			return err
		}
	}
	return nil
}

// plainName reports whether name is a slot or publication name that needs
// no quoting: lowercase letters, digits and '_', at most 63 bytes.
func plainName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, c := range name {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// needsOperator returns what an operator must do about err, or "" when the
// error is of the kind that heals by itself (a restart, a network drop).
// It goes by SQLSTATE, never by message text.
func needsOperator(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return ""
	}
	switch pgErr.Code {
	case "28P01", "28000": // invalid password, invalid authorization
		return "check the user and password in [database] url (or password-file)"
	case "3D000": // database does not exist
		return "check the database name in [database] url"
	case "42501": // insufficient privilege
		return "run pgcourier doctor -c FILE: it prints the GRANT or ALTER ROLE needed"
	case "42P01", "3F000": // undefined table, schema: pgcourier's own tables are missing
		return "run pgcourier init -c FILE"
	case "55000", "42704": // object not in prerequisite state (wal_level), undefined object (slot, publication)
		return "run pgcourier doctor -c FILE and pgcourier init -c FILE"
	}
	return ""
}

// withValueSettings adds pgcourier.ValueSettings to a connection's startup
// parameters. Values travel as Postgres prints them; fixing the output
// styles makes every upstream read them the same, whatever this server's
// defaults are.
func withValueSettings(params map[string]string) {
	for k, v := range pgcourier.ValueSettings() {
		params[k] = v
	}
}
