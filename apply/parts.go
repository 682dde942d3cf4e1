package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// A source transaction too large for one batch arrives in parts: batches
// marked continued, then the batch that holds its last changes (see
// pgcourier.Batch). Each part is staged in pgcourier.staged, in a
// transaction of its own that also advances the source's progress, so a
// part is taken exactly once like any batch. The batch after the parts
// applies them all, one round trip per part, and then its own changes, in
// one transaction that also deletes them from the stage: the source
// transaction takes effect whole or not at all. The writer decodes the
// next part while the server applies the one before, so it holds two
// parts in memory at most.

const (
	// stageSQL stages a part. A part staged right before it belongs to the
	// same transaction (the transaction's last batch deletes its parts), so
	// the transaction's first part is that one's, or this one.
	stageSQL = `
INSERT INTO pgcourier.staged (source, epoch, seq, first_seq, rows, payload)
VALUES ($1, $2, $3::int8, coalesce((SELECT s.first_seq FROM pgcourier.staged s
                                    WHERE s.source = $1 AND s.epoch = $2 AND s.seq = $3::int8 - 1), $3::int8), $4, $5)`
	partSQL = `SELECT payload FROM pgcourier.staged WHERE source = $1 AND epoch = $2 AND seq = $3`
	// unstageSQL deletes the parts a batch applied.
	unstageSQL = `DELETE FROM pgcourier.staged WHERE source = $1 AND epoch = $2 AND seq < $3`
)

// stage keeps the continued batch b in the stage and records it taken, in
// the transaction s has open. payload is b encoded, if at hand (a batch
// has one encoding: the bytes it arrived in); otherwise stage encodes it.
// The result is Applied: the batch is the writer's to apply, and its
// sender need not keep it. Its changes count when the batch that ends its
// transaction applies them.
func (w *Writer) stage(ctx context.Context, s *session, b *pgcourier.Batch, payload []byte, st started) (Result, error) {
	if len(payload) == 0 {
		var err error
		if payload, err = wire.Encode(b); err != nil {
			s.cleanup(ctx) //nolint:errcheck // release closes the connection if it failed
			return Result{Status: Refused, Err: fmt.Errorf("%w: %w", ErrInvalid, err), AppliedSeq: b.Seq - 1, NextSeq: b.Seq}, nil
		}
	}
	prevEpoch, prevSeq := any(nil), any(nil)
	if st.known {
		prevEpoch, prevSeq = st.epoch, int64(st.applied)
	}
	bt := &pgx.Batch{}
	bt.Queue(stageSQL, b.Source, b.Epoch, int64(b.Seq), b.Rows(), payload)
	bt.Queue(advanceSQL, b.Source, b.Epoch, int64(b.Seq), nil, nil, int64(b.Rows()), prevEpoch, prevSeq, int64(b.Seq))
	bt.Queue("COMMIT")
	bt.Queue(unlockSQL, b.Source)
	if err := s.conn.SendBatch(ctx, bt).Close(); err != nil {
		return Result{}, fmt.Errorf("stage %s seq %d: %w", b.Source, b.Seq, err)
	}
	s.dirty = false
	return Result{Status: Applied, AppliedSeq: b.Seq, NextSeq: b.Seq + 1}, nil
}

// applyStaged applies the parts staged before b, st.staged to b.Seq-1, in
// the transaction s has open, adding the catalog of their tables to
// st.tables. A Result with a Status (Blocked) or an error ends the batch;
// otherwise the Result counts the changes and conflicts of the parts. The
// next part decodes while the server applies the one before it, so at most
// two parts are in memory at a time.
func (w *Writer) applyStaged(ctx context.Context, s *session, b *pgcourier.Batch, st *started, cautious bool) (Result, error) {
	var total Result
	applied := b.Seq - 1
	var decoding sync.WaitGroup
	defer decoding.Wait()
	next, err := s.fetchPart(ctx, &decoding, b.Source, b.Epoch, st.staged)
	if err != nil {
		return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
	}
	var goesOn pgcourier.LSN // the commit LSN of the transaction the part before goes on with
	for seq := st.staged; seq < b.Seq; seq++ {
		d := <-next
		if d.missing {
			be := &BlockedError{Message: fmt.Sprintf("part seq %d of the transaction that batch %d ends is not staged", seq, b.Seq),
				Hint: "park the batch (pgcourier park) and resync the source"}
			return w.blockAfter(ctx, s, b, be, applied)
		}
		part, err := d.part, d.err
		if err == nil && (part.Source != b.Source || part.Epoch != b.Epoch || part.Seq != seq || !part.Continued) {
			err = fmt.Errorf("holds %s epoch %d seq %d (continued %t)", part.Source, part.Epoch, part.Seq, part.Continued)
		}
		if err == nil && seq > st.staged && part.Transactions[0].CommitLSN != goesOn {
			err = fmt.Errorf("it does not go on with the transaction (commit LSN %s) of the part before it", goesOn)
		}
		if err == nil {
			goesOn = part.Transactions[len(part.Transactions)-1].CommitLSN
			if seq == b.Seq-1 && (len(b.Transactions) == 0 || b.Transactions[0].CommitLSN != goesOn) {
				err = fmt.Errorf("its transaction (commit LSN %s) does not go on in batch %d", goesOn, b.Seq)
			}
		}
		if err != nil {
			be := &BlockedError{Message: fmt.Sprintf("staged part seq %d: %v", seq, err), Hint: "park the batch (pgcourier park) and resync the source"}
			return w.blockAfter(ctx, s, b, be, applied)
		}
		if err := s.describe(ctx, part, st.tables); err != nil {
			return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
		}
		runs, reordered, be := w.plan(part, st.tables, cautious)
		if be != nil {
			return w.blockAfter(ctx, s, b, be, applied)
		}
		if seq+1 < b.Seq {
			if next, err = s.fetchPart(ctx, &decoding, b.Source, b.Epoch, seq+1); err != nil {
				return Result{}, fmt.Errorf("apply %s seq %d: %w", b.Source, b.Seq, err)
			}
		}
		res, err := w.write(ctx, s, b, *st, runs, reordered, pass{of: part, first: seq == st.staged})
		if err != nil || res.Status != Applied {
			return res, err
		}
		total.Changes += res.Changes
		total.Conflicts += res.Conflicts
	}
	return total, nil
}

// stagedPart is a staged part decoded, or why not.
type stagedPart struct {
	part    *pgcourier.Batch
	missing bool // not staged
	err     error
}

// fetchPart reads the bytes of staged part seq and decodes them in the
// background, in a goroutine of decoding: the channel yields the part once
// decoded.
func (s *session) fetchPart(ctx context.Context, decoding *sync.WaitGroup, source string, epoch int64, seq uint64) (<-chan stagedPart, error) {
	out := make(chan stagedPart, 1)
	var payload []byte
	err := s.conn.QueryRow(ctx, partSQL, source, epoch, int64(seq)).Scan(&payload)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		out <- stagedPart{missing: true}
	case err != nil:
		return nil, fmt.Errorf("read part %d: %w", seq, err)
	default:
		decoding.Go(func() {
			part, err := wire.Decode(payload)
			out <- stagedPart{part: part, err: err}
		})
	}
	return out, nil
}

// describe adds the catalog of the tables of part that tables lacks.
func (s *session) describe(ctx context.Context, part *pgcourier.Batch, tables map[tableName]*table) error {
	var names []tableName
	for _, n := range batchTables(part) {
		if _, ok := tables[n]; !ok {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil
	}
	rows, err := s.conn.Query(ctx, catalogSQL, catalogArgs(names)...)
	if err != nil {
		return fmt.Errorf("read catalog: %w", err)
	}
	got, err := scanCatalog(rows, names)
	if err != nil {
		return fmt.Errorf("read catalog: %w", err)
	}
	for n, t := range got {
		tables[n] = t
	}
	return nil
}
