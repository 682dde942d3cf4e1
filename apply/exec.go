package apply

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// cleanupTimeout bounds how long a session spends giving back what it
// holds (lock, transaction, origin) after a failure or a cancel.
const cleanupTimeout = 10 * time.Second

const (
	// The source's advisory lock serializes its batches across sessions. It
	// is a session lock, taken before the transaction and released after
	// the origin is reset, because only one session at a time may use the
	// source's replication origin.
	lockSQL   = `SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended('pgcourier apply ' || $1::text, 0))`
	unlockSQL = `SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended('pgcourier apply ' || $1::text, 0))`

	beginSQL    = `BEGIN ISOLATION LEVEL READ COMMITTED`
	deferredSQL = `SET CONSTRAINTS ALL DEFERRED`

	progressSQL = `
SELECT p.epoch, p.applied_seq,
       (SELECT e.final_seq FROM pgcourier.source_epochs e WHERE e.source = $1 AND e.epoch = $2),
       pg_catalog.current_setting('track_commit_timestamp')::bool,
       pg_catalog.pg_replication_origin_oid($3),
       (SELECT min(s.first_seq) FROM pgcourier.staged s WHERE s.source = $1 AND s.epoch = $2)
  FROM (SELECT 1) one
  LEFT JOIN pgcourier.source_progress p ON p.source = $1`

	// advanceSQL records a batch as applied (or parked, or staged): the new
	// progress, the epoch history, and the end of any block. It fails
	// unless the progress is still what the batch was checked against. The
	// conflicts it counts are those of seqs $9 to $3: the batch's, and
	// those of the parts of its first transaction applied with it.
	advanceSQL = `
WITH prev AS (
  SELECT epoch, applied_seq FROM pgcourier.source_progress WHERE source = $1
), closed AS (
  UPDATE pgcourier.source_epochs e SET ended_at = now(), final_seq = prev.applied_seq
    FROM prev WHERE e.source = $1 AND e.epoch = prev.epoch AND prev.epoch <> $2
  RETURNING 1
), opened AS (
  INSERT INTO pgcourier.source_epochs (source, epoch)
  SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM prev WHERE prev.epoch = $2)
  ON CONFLICT (source, epoch) DO NOTHING
  RETURNING 1
), unblocked AS (
  DELETE FROM pgcourier.blocked WHERE source = $1 RETURNING 1
), up AS (
  INSERT INTO pgcourier.source_progress AS p
         (source, epoch, applied_seq, applied_at, last_commit_lsn, last_commit_time, batches, rows, conflicts)
  VALUES ($1, $2, $3, now(), $4::text::pg_lsn, $5::timestamptz, 1, $6::int8,
          (SELECT count(*) FROM pgcourier.conflicts c WHERE c.source = $1 AND c.epoch = $2 AND c.seq BETWEEN $9::int8 AND $3))
  ON CONFLICT (source) DO UPDATE SET
    epoch = excluded.epoch, applied_seq = excluded.applied_seq, applied_at = excluded.applied_at,
    last_commit_lsn = coalesce(excluded.last_commit_lsn, p.last_commit_lsn),
    last_commit_time = coalesce(excluded.last_commit_time, p.last_commit_time),
    batches = p.batches + 1, rows = p.rows + excluded.rows, conflicts = p.conflicts + excluded.conflicts
  WHERE p.epoch = $7::int8 AND p.applied_seq = $8::int8
  RETURNING 1
)
SELECT pgcourier.apply_check((SELECT count(*) FROM up) = 1, 'the progress of source ' || $1 || ' changed while its batch applied')`

	originSetupSQL = `SELECT pg_catalog.pg_replication_origin_session_setup($1)`
	xactSetupSQL   = `SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::timestamptz)`
	originResetSQL = `SELECT pg_catalog.pg_replication_origin_session_reset()`
	cleanupSQL     = `SELECT pg_catalog.pg_replication_origin_session_reset() WHERE pg_catalog.pg_replication_origin_session_is_setup()`
	unlockAllSQL   = `SELECT pg_catalog.pg_advisory_unlock_all()`

	blockSQL = `
INSERT INTO pgcourier.blocked AS b (source, epoch, seq, sqlstate, table_name, column_name, error, hint, payload)
VALUES ($1, $2, $3, nullif($4, ''), nullif($5, ''), nullif($6, ''), $7, $8, $9)
ON CONFLICT (source) DO UPDATE SET
  first_at = CASE WHEN (b.epoch, b.seq) = (excluded.epoch, excluded.seq) THEN b.first_at ELSE now() END,
  attempts = CASE WHEN (b.epoch, b.seq) = (excluded.epoch, excluded.seq) THEN b.attempts + 1 ELSE 1 END,
  epoch = excluded.epoch, seq = excluded.seq, sqlstate = excluded.sqlstate, table_name = excluded.table_name,
  column_name = excluded.column_name, error = excluded.error, hint = excluded.hint, last_at = now(),
  payload = CASE WHEN (b.epoch, b.seq) = (excluded.epoch, excluded.seq) THEN coalesce(excluded.payload, b.payload)
                 ELSE excluded.payload END
RETURNING attempts`
	retrySQL = `UPDATE pgcourier.blocked SET retry_at = now() + $2::int8 * interval '1 millisecond' WHERE source = $1`
)

// settingsSQL sets pgcourier.ValueSettings for the transaction: values are
// parsed (and stored rows printed) under the settings they were captured
// under.
var settingsSQL = func() string {
	s := pgcourier.ValueSettings()
	// The statements that apply changes are planned at every execution
	// anyway (see conns); "auto" lets the queries Postgres runs for them,
	// such as a foreign key's check of every row, use their cached plans.
	s["plan_cache_mode"] = "auto"
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s)) {
		parts = append(parts, fmt.Sprintf("pg_catalog.set_config(%s, %s, true)", literal(k), literal(s[k])))
	}
	return "SELECT " + strings.Join(parts, ", ")
}()

// genericPlansSQL makes the statements after it in the transaction use
// their cached generic plans.
const genericPlansSQL = `SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true)`

// session is one connection while it applies a batch.
type session struct {
	conn  *pgx.Conn
	dirty bool // may hold the source's lock, an open transaction or the origin
}

// cleanup gives back whatever the session holds. It uses the simple
// protocol: in an aborted transaction the server accepts nothing but its
// end, not even the statement preparations pgx would send first.
func (s *session) cleanup(ctx context.Context) error {
	if !s.dirty {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := s.conn.PgConn().Exec(ctx, "ROLLBACK; "+cleanupSQL+"; "+unlockAllSQL).ReadAll(); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

// release gives the connection back for reuse, or closes it if it may
// still hold the lock or the origin.
func (s *session) release(ctx context.Context, p *conns) {
	if s.dirty && !s.conn.IsClosed() {
		s.cleanup(ctx) //nolint:errcheck // the connection is closed below if it failed
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	p.release(cctx, s.conn, !s.dirty)
}

// ensureOrigin creates the source's replication origin unless it is known
// to exist. Two writers may race to create it: the loser's unique
// violation means it exists.
func (w *Writer) ensureOrigin(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, ok := w.origins.Load(name); ok {
		return nil
	}
	_, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1) WHERE pg_catalog.pg_replication_origin_oid($1) IS NULL`, name)
	var pe *pgconn.PgError
	if err != nil && !(errors.As(err, &pe) && pe.Code == "23505") {
		return fmt.Errorf("create replication origin %s: %w", name, err)
	}
	w.origins.Store(name, struct{}{})
	return nil
}

// progress is a source's position as a batch finds it.
type progress struct {
	known   bool
	epoch   int64
	applied uint64
	final   int64 // the last seq applied from the batch's epoch, if a newer one replaced it; -1 if unknown
}

type verdict int

const (
	vApply verdict = iota
	vDuplicate
	vGap
	vStale
)

// decide says what to do with batch (epoch, seq) at progress p, and the
// last seq applied from the batch's epoch.
func decide(p progress, epoch int64, seq uint64) (verdict, uint64) {
	switch {
	case !p.known || epoch > p.epoch:
		if seq == 1 {
			return vApply, 0
		}
		return vGap, 0
	case epoch == p.epoch:
		switch {
		case seq <= p.applied:
			return vDuplicate, p.applied
		case seq == p.applied+1:
			return vApply, p.applied
		}
		return vGap, p.applied
	case p.final >= 0 && seq <= uint64(p.final):
		return vDuplicate, uint64(p.final)
	}
	return vStale, uint64(max(p.final, 0))
}

// started is what the first round trip of a batch learns.
type started struct {
	progress
	tracking bool    // track_commit_timestamp is on
	origin   *uint32 // the source's replication origin, nil if it vanished
	staged   uint64  // the seq of the first part of the transaction staged in the batch's epoch; 0 if none
	tables   map[tableName]*table
}

// begin takes the source's lock, opens the batch's transaction and reads
// the source's progress and the catalog of the batch's tables, in one
// round trip.
func (s *session) begin(ctx context.Context, source string, epoch int64, origin string, names []tableName) (started, error) {
	st := started{progress: progress{final: -1}}
	bt := &pgx.Batch{}
	bt.Queue(lockSQL, source)
	bt.Queue(beginSQL)
	bt.Queue(deferredSQL)
	// The progress and catalog reads are the same every batch: planned
	// once, not every time (planning the catalog read costs more than
	// running it). The batch's own settings follow them.
	bt.Queue(genericPlansSQL)
	bt.Queue(progressSQL, source, epoch, origin)
	if len(names) > 0 {
		bt.Queue(catalogSQL, catalogArgs(names)...)
	}
	bt.Queue(settingsSQL)
	s.dirty = true
	br := s.conn.SendBatch(ctx, bt)
	defer br.Close()
	for range 4 {
		if _, err := br.Exec(); err != nil {
			return st, err
		}
	}
	var pEpoch, pSeq, final, staged *int64
	if err := br.QueryRow().Scan(&pEpoch, &pSeq, &final, &st.tracking, &st.origin, &staged); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42883") {
			return st, fmt.Errorf("read progress: %w (run pgcourier init: the pgcourier schema is missing or older than this build)", err)
		}
		return st, fmt.Errorf("read progress: %w", err)
	}
	if pEpoch != nil {
		st.known, st.epoch, st.applied = true, *pEpoch, uint64(*pSeq)
	}
	if final != nil {
		st.final = *final
	}
	if staged != nil {
		st.staged = uint64(*staged)
	}
	st.tables = map[tableName]*table{}
	if len(names) > 0 {
		rows, err := br.Query()
		if err != nil {
			return st, fmt.Errorf("read catalog: %w", err)
		}
		if st.tables, err = scanCatalog(rows, names); err != nil {
			return st, fmt.Errorf("read catalog: %w", err)
		}
	}
	if _, err := br.Exec(); err != nil {
		return st, err
	}
	return st, br.Close()
}

// finish ends a session that applied nothing: rollback and unlock.
func (s *session) finish(ctx context.Context, source string) error {
	bt := &pgx.Batch{}
	bt.Queue("ROLLBACK")
	bt.Queue(unlockSQL, source)
	if err := s.conn.SendBatch(ctx, bt).Close(); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

// batchTables returns the tables the batch's changes name, in order of
// first appearance.
func batchTables(b *pgcourier.Batch) []tableName {
	seen := map[tableName]bool{}
	var names []tableName
	for _, tx := range b.Transactions {
		for _, ch := range tx.Changes {
			n := tableName{ch.Rel.Schema, ch.Rel.Name}
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	return names
}

// errRegroup is returned by apply when an optimistic plan failed in a way
// the cautious plan might not: the batch must be applied again cautiously.
var errRegroup = errors.New("the optimistic plan failed")

// apply applies b in one transaction; see Apply. data is b encoded, if at
// hand. cautious asks for the cautious plan (see planRuns).
func (w *Writer) apply(ctx context.Context, b *pgcourier.Batch, data []byte, cautious bool) (Result, error) {
	origin := pgcourier.OriginName(b.Source)
	conn, err := w.conns.acquire(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("apply: %w", err)
	}
	s := &session{conn: conn}
	defer s.release(ctx, w.conns)
	if err := w.ensureOrigin(ctx, conn, origin); err != nil {
		if infrastructure(err) {
			return Result{}, err
		}
		return w.block(ctx, conn, b, blockedFrom(err, nil), b.Seq-1), nil
	}

	var names []tableName
	if !b.Continued { // staging a part needs no catalog
		names = batchTables(b)
	}
	st, err := s.begin(ctx, b.Source, b.Epoch, origin, names)
	if err != nil {
		return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
	}
	v, applied := decide(st.progress, b.Epoch, b.Seq)
	res := Result{AppliedSeq: applied, NextSeq: applied + 1}
	if v != vApply {
		if err := s.finish(ctx, b.Source); err != nil {
			return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
		}
		switch v {
		case vDuplicate:
			res.Status = Duplicate
		case vGap:
			res.Status = Gap
		default:
			res.Status = Refused
			res.Err = fmt.Errorf("%w: epoch %d of source %s was replaced by epoch %d after seq %d; seq %d cannot be applied in order: park it (pgcourier park)",
				ErrStaleEpoch, b.Epoch, b.Source, st.epoch, applied, b.Seq)
		}
		return res, nil
	}
	if b.Continued {
		return w.stage(ctx, s, b, data, st)
	}
	if !st.tracking {
		be := &BlockedError{SQLState: "55000", Message: "track_commit_timestamp is off upstream: last writer wins cannot tell who wrote a row"}
		be.Hint = hintFor(be, nil)
		return w.blockAfter(ctx, s, b, be, applied)
	}
	if st.origin == nil {
		// Dropped since this writer created it: create it again next time.
		w.origins.Delete(origin)
		s.cleanup(ctx) //nolint:errcheck // release closes the connection if it failed
		return Result{}, fmt.Errorf("apply %s seq %d: replication origin %s vanished; retry", b.Source, b.Seq, origin)
	}

	// The parts of the batch's first transaction, staged before it, apply
	// first, in the same transaction.
	ps := pass{of: b, first: true, last: true}
	var parts Result
	if st.staged > 0 {
		var err error
		if parts, err = w.applyStaged(ctx, s, b, &st, cautious); err != nil || parts.Status != 0 {
			return parts, err
		}
		ps.first = false
	}
	runs, reordered, be := w.plan(b, st.tables, cautious)
	if be != nil {
		return w.blockAfter(ctx, s, b, be, applied)
	}
	res, err = w.write(ctx, s, b, st, runs, reordered, ps)
	if err == nil && res.Status == Applied {
		res.Changes += parts.Changes
		res.Conflicts += parts.Conflicts
	}
	return res, err
}

// plan plans the runs of batch part's changes, with the catalog of their
// tables; a missing table, or one whose columns do not fit, blocks it.
func (w *Writer) plan(part *pgcourier.Batch, tables map[tableName]*table, cautious bool) ([]*run, bool, *BlockedError) {
	plans := map[*pgcourier.Relation]*relPlan{}
	for _, tx := range part.Transactions {
		for _, ch := range tx.Changes {
			if plans[ch.Rel] != nil {
				continue
			}
			t := tables[tableName{ch.Rel.Schema, ch.Rel.Name}]
			if t == nil {
				return nil, false, missingTable(ch.Rel, ch.Op)
			}
			p, err := planRelation(ch.Rel, t, w.policyOf(t.Schema, t.Name))
			if err != nil {
				var be *BlockedError
				errors.As(err, &be)
				be.Op = ch.Op
				return nil, false, be
			}
			plans[ch.Rel] = p
		}
	}
	runs, reordered := planRuns(part, plans, cautious)
	for _, r := range runs {
		r.judge = w.judging(part.Source, r.p.t)
	}
	return runs, reordered, nil
}

// queued is a statement of a batch's second round trip.
type queued struct {
	run  *run // nil for the bookkeeping around the runs
	stmt stmt
}

// pass is one round trip of a batch's transaction: the batch's own changes,
// or those of a part of its first transaction staged before it.
type pass struct {
	of    *pgcourier.Batch // the batch whose changes the runs hold
	first bool             // the transaction's first round trip: it sets up the origin
	last  bool             // its last: it records the progress, deletes the parts (st.staged on) and commits
}

// write applies the runs of ps.of in b's transaction. The last pass also
// records progress and commits, in the same round trip (two when
// statements must be prepared first).
func (w *Writer) write(ctx context.Context, s *session, b *pgcourier.Batch, st started, runs []*run, reordered bool, ps pass) (Result, error) {
	var q []queued
	bt := &pgx.Batch{}
	add := func(r *run, sm stmt, args ...any) {
		q = append(q, queued{r, sm})
		bt.Queue(sm.sql, args...)
	}
	origin := pgcourier.OriginName(b.Source)
	var lastLSN *string
	var lastTime *time.Time
	if n := len(b.Transactions); n > 0 {
		last := b.Transactions[n-1]
		l := last.CommitLSN.String()
		lastLSN, lastTime = &l, &last.CommitTime
	}
	if ps.first {
		add(nil, stmt{sql: originSetupSQL, exec: true}, origin)
		if lastLSN != nil {
			add(nil, stmt{sql: xactSetupSQL, exec: true}, *lastLSN, *lastTime)
		}
	}
	for _, r := range runs {
		stmts := w.statements(r)
		if r.kind == runTruncate && w.truncate[b.Source] {
			stmts = []stmt{truncateApply(r)}
		}
		for _, sm := range stmts {
			add(r, sm, w.args(r, sm, ps.of, *st.origin)...)
		}
	}
	committed := len(q) + 1 // past the end: nothing commits in this round trip
	if ps.last {
		prevEpoch, prevSeq := any(nil), any(nil)
		if st.known {
			prevEpoch, prevSeq = st.epoch, int64(st.applied)
		}
		from := b.Seq
		if st.staged > 0 { // the parts it applied before
			from = st.staged
			add(nil, stmt{sql: unstageSQL, exec: true}, b.Source, b.Epoch, int64(b.Seq))
		}
		add(nil, stmt{sql: advanceSQL, exec: true}, b.Source, b.Epoch, int64(b.Seq), lastLSN, lastTime, int64(b.Rows()), prevEpoch, prevSeq, int64(from))
		add(nil, stmt{sql: "COMMIT", exec: true})
		committed = len(q) - 1
		add(nil, stmt{sql: originResetSQL, exec: true})
		add(nil, stmt{sql: unlockSQL, exec: true}, b.Source)
	}

	res := Result{Status: Applied, AppliedSeq: b.Seq, NextSeq: b.Seq + 1}
	failed, ferr := -1, error(nil)
	br := s.conn.SendBatch(ctx, bt)
	for i, e := range q {
		var err error
		if e.stmt.exec {
			_, err = br.Exec()
			if err == nil && e.run != nil {
				res.Changes += len(e.run.items)
			}
		} else {
			var ok bool
			var applied, conflicts int64
			err = br.QueryRow().Scan(&ok, &applied, &conflicts)
			if err == nil && e.run != nil && !e.stmt.lock {
				res.Changes += int(applied)
				res.Conflicts += int(conflicts)
			}
		}
		if err != nil {
			failed, ferr = i, err
			break
		}
	}
	if err := br.Close(); ferr == nil && err != nil {
		ferr = err
	}
	if ferr == nil {
		s.dirty = !ps.last
		return res, nil
	}
	if failed > committed {
		// The batch committed; only giving back the origin or the lock
		// failed. The connection is closed on release if cleaning up
		// fails too.
		w.log.Warn("batch applied, but its session could not be reset", "source", b.Source, "seq", b.Seq, "err", ferr)
		return res, nil
	}

	var failedRun *run
	if failed >= 0 {
		failedRun = q[failed].run
	}
	var pre pgx.ErrPreprocessingBatch
	if errors.As(ferr, &pre) {
		for _, e := range q {
			if e.stmt.sql == pre.SQL() {
				failedRun = e.run
				break
			}
		}
	}
	if err := s.cleanup(ctx); err != nil {
		return Result{}, fmt.Errorf("apply %s seq %d: %w (and after it: %v)", b.Source, b.Seq, ferr, err)
	}
	if failed >= 0 && q[failed].stmt.sql == "COMMIT" {
		failedRun = nil // a deferred constraint: the error names the table
	}
	// The optimistic plan failed: the cautious one may not (planRuns). A
	// fast statement met a change that needs judging; an integrity error
	// (a unique or exclusion violation) is what a grouped run may cause;
	// anything the database refused, what a reordered batch may.
	if failedRun != nil && failedRun.fast() {
		// A fast statement missed, or its insert met an existing key.
		w.missedFast(b.Source, failedRun.p.t.Schema, failedRun.p.t.Name)
	}
	if pe := (*pgconn.PgError)(nil); errors.As(ferr, &pe) && (pe.Code == fastMissed ||
		!infrastructure(ferr) && (reordered || slices.ContainsFunc(runs, (*run).fast) ||
			strings.HasPrefix(pe.Code, "23") && slices.ContainsFunc(runs, (*run).hazardous))) {
		return Result{}, errRegroup
	}
	if infrastructure(ferr) {
		return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, ferr)
	}
	be := blockedFrom(ferr, failedRun)
	be.server = true
	if failedRun != nil && needsDiagnosis(be, ferr) {
		w.diagnose(ctx, s.conn, failedRun, be)
	}
	var pe *pgconn.PgError
	if be.Column == "" && errors.As(ferr, &pe) && pe.ConstraintName != "" && pe.TableName != "" {
		be.Column = constraintColumns(ctx, s.conn, pe.SchemaName, pe.TableName, pe.ConstraintName)
	}
	return w.block(ctx, s.conn, b, be, b.Seq-1), nil
}

// blockAfter ends the session's transaction and reports the batch blocked.
func (w *Writer) blockAfter(ctx context.Context, s *session, b *pgcourier.Batch, be *BlockedError, applied uint64) (Result, error) {
	if err := s.cleanup(ctx); err != nil {
		return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
	}
	return w.block(ctx, s.conn, b, be, applied), nil
}

// block records the blocked batch in pgcourier.blocked on conn, outside
// any transaction of the batch, and returns the Blocked result.
func (w *Writer) block(ctx context.Context, conn *pgx.Conn, b *pgcourier.Batch, be *BlockedError, applied uint64) Result {
	res := Result{Status: Blocked, Err: be, AppliedSeq: applied, NextSeq: applied + 1, RetryAfter: backoff(1)}
	q := func(sql string, args ...any) pgx.Row { return conn.QueryRow(ctx, sql, args...) }
	// The batch is kept for "pgcourier park"; Encode gives back the bytes
	// the source sent.
	payload, err := wire.Encode(b)
	if err != nil {
		w.log.Warn("could not encode a blocked batch to keep it", "source", b.Source, "seq", b.Seq, "err", err)
		payload = nil
	}
	var attempts int
	err = q(blockSQL, b.Source, b.Epoch, int64(b.Seq), be.SQLState, be.Table, be.Column, be.Error(), be.Hint, payload).Scan(&attempts)
	if err == nil {
		res.RetryAfter = backoff(attempts)
		var n int
		err = q(retrySQL+" RETURNING 1", b.Source, res.RetryAfter.Milliseconds()).Scan(&n)
	}
	if err != nil {
		w.log.Warn("could not record a blocked batch", "source", b.Source, "seq", b.Seq, "err", err)
	}
	return res
}
