// Package apply writes batches into an upstream database exactly once, in
// order per source, deciding between writers of one row by the
// last-writer-by-source rule.
//
// A Writer applies each batch in one upstream transaction. The transaction
// takes the source's advisory lock, checks the source's progress
// (pgcourier.source_progress), sets the session's replication origin
// pgcourier:<source> with the batch's commit LSN and commit time, applies
// the changes in source order, records the new progress and commits. So
// Postgres itself records which source wrote every row version, and when;
// the next change to that row from another source, or a local edit made
// upstream, is judged against it:
//
//   - a change to a row last written by the same source is applied;
//   - a change to a row last written by another source or locally is
//     applied only if its commit time is later (ties broken by source id),
//     or refused under a table's Reject policy;
//   - an insert whose key exists from another writer is a key collision;
//   - an incoming row identical to the stored one changes nothing;
//   - a TRUNCATE is refused unless Options.AllowTruncate names the source.
//
// Every change that is not applied is kept whole in pgcourier.conflicts.
// A batch that cannot be applied at all (a missing table or column, a value
// the upstream type refuses, a constraint violation) is rolled back and
// reported as Blocked, with an error naming the table and column; its
// source's stream waits for it while other sources go on. See
// docs/apply.md for the tables and the rules in full.
//
// Consecutive changes to one table are applied together, a few thousand
// rows per statement: the rows travel as text arrays, the server parses
// them under pgcourier.ValueSettings, and one statement locks the stored
// rows, judges each change, writes the winners and records the losers. All
// statements of a batch go to the server in one pipeline. Where grouping
// could change the outcome (a key repeated in the run, a unique constraint
// other than the key, a table without a key) changes go one per statement,
// in order.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
)

// Policy decides what happens to a change from one source to a row another
// source (or a local edit) wrote last.
type Policy string

// The policies a table can have.
const (
	// LastWriterWins applies the change if its commit time is later than
	// the stored row version's (ties broken by source id), and records it
	// as a conflict otherwise.
	LastWriterWins Policy = "last-writer-wins"
	// Reject records every such change as a conflict for review.
	Reject Policy = "reject"
)

// Options configure a Writer.
type Options struct {
	// Node is this node's id. Batches whose source is this node are refused:
	// sync is one-way. It is also the writer's name for local edits when
	// last-writer-wins breaks a tie by source id.
	Node string
	// Policy is the policy of every table not named in Policies; the zero
	// value means LastWriterWins.
	Policy Policy
	// Policies set the policy per table, keyed by "schema.table" as the
	// catalog spells it (no quotes).
	Policies map[string]Policy
	// AllowTruncate names the sources whose TRUNCATE is applied. A TRUNCATE
	// from any other source would wipe every other source's rows upstream:
	// it is refused and recorded in pgcourier.conflicts.
	AllowTruncate []string
	// MaxConns bounds the connections the writer opens to the upstream
	// database, and so the batches it applies at once; zero means
	// DefaultMaxConns.
	MaxConns int
	// Logger receives a Debug record per batch and a Warn record per
	// blocked batch. Nil discards them.
	Logger *slog.Logger
}

// DefaultMaxConns is the connection limit of a Writer whose Options leave
// MaxConns zero.
const DefaultMaxConns = 4

// Status is the outcome of Apply.
type Status int

// The outcomes of Apply.
const (
	// Applied: the batch committed, with any refused changes recorded in
	// pgcourier.conflicts (Result.Conflicts of them).
	Applied Status = iota + 1
	// Duplicate: the batch was applied (or parked) before; nothing changed.
	// Acknowledge it.
	Duplicate
	// Gap: the batch is not the next one. Result.NextSeq is the seq needed
	// next (1 for a new epoch).
	Gap
	// Blocked: the batch cannot be applied as the database stands
	// (Result.Err says why, naming the table and column). Nothing changed
	// except the record in pgcourier.blocked. Retry it after
	// Result.RetryAfter; the source's later batches must wait for it.
	Blocked
	// Refused: the batch can never be applied here (Result.Err says why): it
	// comes from this node itself, it is malformed, or it belongs to an epoch
	// a newer one replaced. Nothing changed.
	Refused
)

// String returns the status in lower case.
func (s Status) String() string {
	switch s {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	case Gap:
		return "gap"
	case Blocked:
		return "blocked"
	case Refused:
		return "refused"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Result is what Apply did with a batch.
type Result struct {
	Status Status
	// AppliedSeq is the last seq applied from the batch's source and epoch
	// (0 if none), after the call.
	AppliedSeq uint64
	// NextSeq is the seq the writer needs next from the batch's source: the
	// next one of its epoch, or 1 when a new epoch must start.
	NextSeq uint64
	// Changes counts the row changes applied (Applied only).
	Changes int
	// Conflicts counts the row changes recorded in pgcourier.conflicts
	// instead of being applied (Applied only).
	Conflicts int
	// Err says why a batch is Blocked (a *BlockedError) or Refused.
	Err error
	// RetryAfter is how long to wait before applying a Blocked batch again:
	// it doubles with every failed attempt, from one second to a minute.
	RetryAfter time.Duration
}

var (
	// ErrOwnSource wraps the Err of a Refused result for a batch whose
	// source is the applying node itself.
	ErrOwnSource = errors.New("batch comes from this node: sync is one-way")
	// ErrInvalid wraps the Err of a Refused result for a malformed batch.
	ErrInvalid = errors.New("invalid batch")
	// ErrStaleEpoch wraps the Err of a Refused result for a batch of an epoch
	// that a newer epoch of its source replaced, beyond the last batch
	// applied from it. It can only be parked.
	ErrStaleEpoch = errors.New("batch of a replaced epoch")
	// ErrNotNext is returned by Park for a batch that is not the source's
	// next one: already applied, or after a gap.
	ErrNotNext = errors.New("not the next batch of its source")
)

// maxAttempts bounds how often Apply runs a batch whose transaction lost a
// deadlock or a serialization check.
const maxAttempts = 3

// Writer applies batches to one upstream database. It is safe for
// concurrent use: batches of different sources apply in parallel, each on
// its own connection; batches of one source serialize on the source's
// advisory lock, in this process and across processes.
type Writer struct {
	conns    *conns
	node     string
	policy   Policy
	policies map[string]Policy
	truncate map[string]bool
	log      *slog.Logger

	origins sync.Map // source → struct{}: origins known to exist

	mu    sync.Mutex
	stmts map[string][]stmt // generated statements by run shape
	// judge counts, per source and table, the runs still to apply with
	// judged statements after a fast statement missed (see judgeFor).
	judge map[string]int
}

// New checks opts and returns a Writer that applies batches to the
// database cfg connects to (see pgx.ParseConfig). It starts nothing and
// does not connect yet: connections open on demand, up to opts.MaxConns,
// and stay open for the next batch until Close. The pgcourier schema must
// be migrated (internal/schema) before the first Apply. Every transaction
// that applies sets pgcourier.ValueSettings itself, so cfg needs no
// particular settings; its query exec mode is not used (see newConns).
func New(cfg *pgx.ConnConfig, opts Options) (*Writer, error) {
	if cfg == nil {
		return nil, fmt.Errorf("apply: no connection config")
	}
	if opts.MaxConns < 0 {
		return nil, fmt.Errorf("apply: max conns %d: want 0 (the default) or more", opts.MaxConns)
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if err := pgcourier.CheckNodeID(opts.Node); err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	w := &Writer{
		conns:    newConns(cfg.Copy(), opts.MaxConns),
		node:     opts.Node,
		policy:   LastWriterWins,
		policies: map[string]Policy{},
		truncate: map[string]bool{},
		log:      opts.Logger,
		stmts:    map[string][]stmt{},
		judge:    map[string]int{},
	}
	if opts.Policy != "" {
		if err := checkPolicy(opts.Policy); err != nil {
			return nil, fmt.Errorf("apply: default policy: %w", err)
		}
		w.policy = opts.Policy
	}
	for table, p := range opts.Policies {
		if s, n, ok := strings.Cut(table, "."); !ok || s == "" || n == "" {
			return nil, fmt.Errorf("apply: policy for %q: want schema.table", table)
		}
		if err := checkPolicy(p); err != nil {
			return nil, fmt.Errorf("apply: policy for %s: %w", table, err)
		}
		w.policies[table] = p
	}
	for _, s := range opts.AllowTruncate {
		if err := pgcourier.CheckNodeID(s); err != nil {
			return nil, fmt.Errorf("apply: allow truncate: %w", err)
		}
		w.truncate[s] = true
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w, nil
}

func checkPolicy(p Policy) error {
	if p != LastWriterWins && p != Reject {
		return fmt.Errorf("policy %q: want %q or %q", p, LastWriterWins, Reject)
	}
	return nil
}

// policyOf returns the policy of the table schema.name.
func (w *Writer) policyOf(schema, name string) Policy {
	if p, ok := w.policies[schema+"."+name]; ok {
		return p
	}
	return w.policy
}

// Apply applies b, or recognises it as a duplicate or a gap, in one
// upstream transaction that also records the source's progress; see
// Status for the outcomes. It is idempotent: applying a batch again, from
// any process, changes nothing.
//
// The returned error is for failures of the database link or server
// (connection lost, server shutting down, context done): the batch may or
// may not have committed, and applying it again is the way to find out.
// Everything about the batch itself is in the Result.
func (w *Writer) Apply(ctx context.Context, b *pgcourier.Batch) (Result, error) {
	return w.applyEncoded(ctx, b, nil)
}

// applyEncoded is Apply for a batch whose encoding is at hand (data, nil
// if not): a continued batch is staged as it came, not encoded again.
func (w *Writer) applyEncoded(ctx context.Context, b *pgcourier.Batch, data []byte) (Result, error) {
	if err := validate(b); err != nil {
		return Result{Status: Refused, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}, nil
	}
	if b.Source == w.node {
		return Result{Status: Refused, Err: fmt.Errorf("%w (source %s)", ErrOwnSource, b.Source)}, nil
	}
	cautious := false
	for attempt := 1; ; attempt++ {
		started := time.Now()
		res, err := w.apply(ctx, b, data, cautious)
		if errors.Is(err, errRegroup) && !cautious {
			w.log.Debug("the grouped changes failed; applying them in source order, one by one where it matters", "source", b.Source, "seq", b.Seq)
			cautious = true
			attempt--
			continue
		}
		if attempt < maxAttempts && ctx.Err() == nil {
			if err != nil && transient(err) {
				w.log.Debug("batch transaction lost a lock conflict; retrying", "source", b.Source, "seq", b.Seq, "err", err)
				continue
			}
			if err == nil && res.Status == Blocked && catalogRace(res.Err) {
				w.log.Debug("schema changed under the batch; retrying", "source", b.Source, "seq", b.Seq, "err", res.Err)
				continue
			}
		}
		if err == nil {
			w.logResult(b, res, time.Since(started))
		}
		return res, err
	}
}

func (w *Writer) logResult(b *pgcourier.Batch, res Result, took time.Duration) {
	switch res.Status {
	case Blocked:
		w.log.Warn("batch blocked", "source", b.Source, "epoch", b.Epoch, "seq", b.Seq, "err", res.Err, "retry_in", res.RetryAfter)
	default:
		w.log.Debug("batch "+res.Status.String(), "source", b.Source, "epoch", b.Epoch, "seq", b.Seq,
			"rows", res.Changes, "conflicts", res.Conflicts, "next_seq", res.NextSeq, "took", took)
	}
}

// Close closes the writer's idle connections. Calls in flight finish and
// close theirs; later calls fail.
func (w *Writer) Close() {
	w.conns.close(context.Background())
}

// Progress returns how far the source's stream has been applied, so that a
// sender can start from the right batch. StoredSeq equals AppliedSeq: this
// node applies what it takes.
func (w *Writer) Progress(ctx context.Context, source string) (pgcourier.Progress, error) {
	p := pgcourier.Progress{Source: source}
	var epoch, seq *int64
	var blocked *string
	conn, err := w.conns.acquire(ctx)
	if err != nil {
		return p, fmt.Errorf("read progress of %s: %w", source, err)
	}
	defer func() { w.conns.release(ctx, conn, err == nil) }()
	err = conn.QueryRow(ctx, `
		SELECT p.epoch, p.applied_seq, b.error
		  FROM (SELECT 1) one
		  LEFT JOIN pgcourier.source_progress p ON p.source = $1
		  LEFT JOIN pgcourier.blocked b ON b.source = $1`, source).Scan(&epoch, &seq, &blocked)
	if err != nil {
		return p, fmt.Errorf("read progress of %s: %w", source, err)
	}
	if epoch != nil {
		p.Epoch, p.AppliedSeq = *epoch, uint64(*seq)
		p.StoredSeq = p.AppliedSeq
	}
	if blocked != nil {
		p.Blocked = *blocked
	}
	return p, nil
}

// backoff is the wait before a blocked batch's next attempt.
func backoff(attempts int) time.Duration {
	const most = time.Minute
	if attempts < 1 {
		attempts = 1
	}
	if attempts > 7 {
		return most
	}
	return min(time.Second<<(attempts-1), most)
}
