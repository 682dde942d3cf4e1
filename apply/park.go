package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
)

// parkSQL records every change of a parked batch in pgcourier.conflicts,
// once: parking the same batch again adds nothing.
const parkSQL = `
INSERT INTO pgcourier.conflicts (source, epoch, seq, position, commit_lsn, commit_time, table_schema, table_name,
                                 op, rule, incoming, incoming_old, unchanged, detail)
SELECT $1, $2, $3, u.pos, u.lsn::pg_lsn, u.ct, u.sch, u.tbl, u.op, 'parked', u.inc::jsonb, u.old::jsonb,
       CASE WHEN u.unch IS NOT NULL THEN ARRAY(SELECT pg_catalog.jsonb_array_elements_text(u.unch::jsonb)) END,
       $4
  FROM unnest($5::int4[], $6::text[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
       AS u(pos, lsn, ct, sch, tbl, op, inc, old, unch)
 WHERE NOT EXISTS (SELECT 1 FROM pgcourier.conflicts c
                    WHERE c.source = $1 AND c.epoch = $2 AND c.seq = $3 AND c.rule = 'parked')`

// Park records batch (source, epoch, seq) whole in pgcourier.conflicts,
// with rule "parked" and reason as the detail, and advances the source's
// progress past it, in one transaction: the source's later batches can then
// apply, and nothing of the parked one is lost. An operator re-applies its
// changes by hand, or not at all. The staged parts of the batch's first
// transaction are parked with it: a source transaction is parked whole.
// A part itself (a continued batch) is refused: it is staged, never
// blocked, and its transaction is parked with the batch that ends it.
//
// The batch must be the source's next one (Apply reported it Blocked, for
// instance), or a batch of a replaced epoch, which is recorded without
// moving the progress; anything else is refused with ErrNotNext. batch may
// be nil when its contents are not at hand: one row then records the park.
// Parking a batch again records nothing twice.
func (w *Writer) Park(ctx context.Context, source string, epoch int64, seq uint64, batch *pgcourier.Batch, reason string) error {
	if err := pgcourier.CheckNodeID(source); err != nil {
		return fmt.Errorf("park: %w", err)
	}
	if seq == 0 {
		return fmt.Errorf("park: seq 0: want 1 or more")
	}
	if batch != nil {
		if batch.Source != source || batch.Epoch != epoch || batch.Seq != seq {
			return fmt.Errorf("park %s epoch %d seq %d: the batch given is %s epoch %d seq %d", source, epoch, seq, batch.Source, batch.Epoch, batch.Seq)
		}
		if err := validate(batch); err != nil {
			return fmt.Errorf("park %s seq %d: %w: %w", source, seq, ErrInvalid, err)
		}
	}
	conn, err := w.conns.acquire(ctx)
	if err != nil {
		return fmt.Errorf("park: %w", err)
	}
	s := &session{conn: conn}
	defer s.release(ctx, w.conns)

	st, err := s.begin(ctx, source, epoch, pgcourier.OriginName(source), nil)
	if err != nil {
		return fmt.Errorf("park %s seq %d: %w", source, seq, err)
	}
	v, applied := decide(st.progress, epoch, seq)
	switch v {
	case vDuplicate, vGap:
		if err := s.finish(ctx, source); err != nil {
			return fmt.Errorf("park %s seq %d: %w", source, seq, err)
		}
		if v == vDuplicate {
			return fmt.Errorf("%w: seq %d of source %s epoch %d is already applied or parked (applied up to %d)", ErrNotNext, seq, source, epoch, applied)
		}
		return fmt.Errorf("%w: source %s needs seq %d of epoch %d next, not %d", ErrNotNext, source, applied+1, epoch, seq)
	}
	if v == vApply && batch != nil && batch.Continued {
		if err := s.finish(ctx, source); err != nil {
			return fmt.Errorf("park %s seq %d: %w", source, seq, err)
		}
		return fmt.Errorf("park %s seq %d: a part of a larger transaction is staged, never blocked; park the batch that ends the transaction: %w", source, seq, ErrNotNext)
	}

	bt := &pgx.Batch{}
	from := seq
	if v == vApply && st.staged > 0 {
		// The parts before it first, in order, one at a time: a
		// transaction in parts can be larger than memory.
		var decoding sync.WaitGroup
		defer decoding.Wait()
		for part := st.staged; part < seq; part++ {
			next, err := s.fetchPart(ctx, &decoding, source, epoch, part)
			if err != nil {
				return fmt.Errorf("park %s seq %d: %w", source, seq, err)
			}
			d, why := <-next, reason
			switch {
			case d.missing:
				why = fmt.Sprintf("%s (staged part %d is missing)", reason, part)
			case d.err != nil:
				d.part, why = nil, fmt.Sprintf("%s (staged part %d does not decode: %v)", reason, part, d.err)
			}
			if _, err := s.conn.Exec(ctx, parkSQL, parkArgs(source, epoch, part, d.part, why)...); err != nil {
				return fmt.Errorf("park %s seq %d: part %d: %w", source, seq, part, err)
			}
		}
		bt.Queue(unstageSQL, source, epoch, int64(seq))
		from = st.staged
	}
	bt.Queue(parkSQL, parkArgs(source, epoch, seq, batch, reason)...)
	if v == vApply {
		var lastLSN *string
		var lastTime *time.Time
		rows := 0
		if batch != nil && len(batch.Transactions) > 0 {
			last := batch.Transactions[len(batch.Transactions)-1]
			l := last.CommitLSN.String()
			lastLSN, lastTime, rows = &l, &last.CommitTime, batch.Rows()
		}
		prevEpoch, prevSeq := any(nil), any(nil)
		if st.known {
			prevEpoch, prevSeq = st.epoch, int64(st.applied)
		}
		bt.Queue(advanceSQL, source, epoch, int64(seq), lastLSN, lastTime, int64(rows), prevEpoch, prevSeq, int64(from))
	}
	bt.Queue("COMMIT")
	bt.Queue(unlockSQL, source)
	if err := s.conn.SendBatch(ctx, bt).Close(); err != nil {
		return fmt.Errorf("park %s seq %d: %w", source, seq, err)
	}
	s.dirty = false
	w.log.Info("batch parked", "source", source, "epoch", epoch, "seq", seq, "reason", reason)
	return nil
}

// parkArgs binds parkSQL for the batch's changes, or for one row naming the
// batch when its contents are not at hand.
func parkArgs(source string, epoch int64, seq uint64, b *pgcourier.Batch, reason string) []any {
	var (
		pos               []*int32
		lsns              []*string
		times             []*time.Time
		schemas, names    []*string
		ops               []string
		inc, old, unchang []*string
	)
	str := func(s string) *string { return &s }
	if b == nil || b.Rows() == 0 {
		pos, lsns, times, schemas, names = []*int32{nil}, []*string{nil}, []*time.Time{nil}, []*string{nil}, []*string{nil}
		ops, inc, old, unchang = []string{"batch"}, []*string{nil}, []*string{nil}, []*string{nil}
		if b == nil {
			reason += " (the batch's contents were not at hand)"
		}
	} else {
		n := int32(0)
		for _, tx := range b.Transactions {
			for _, ch := range tx.Changes {
				p := n
				n++
				pos = append(pos, &p)
				lsns = append(lsns, str(tx.CommitLSN.String()))
				times = append(times, &tx.CommitTime)
				schemas = append(schemas, str(ch.Rel.Schema))
				names = append(names, str(ch.Rel.Name))
				ops = append(ops, ch.Op.String())
				var i, o, u *string
				switch ch.Op {
				case pgcourier.OpInsert, pgcourier.OpUpdate:
					i = str(imageJSON(ch.Rel, ch.New, false))
					if ch.Old != nil {
						o = str(imageJSON(ch.Rel, ch.Old, true))
					}
					var un []string
					for c, v := range ch.New {
						if v.Kind == pgcourier.Unchanged {
							un = append(un, ch.Rel.Columns[c].Name)
						}
					}
					if len(un) > 0 {
						j, _ := json.Marshal(un)
						u = str(string(j))
					}
				case pgcourier.OpDelete:
					i = str(imageJSON(ch.Rel, ch.Old, true))
				}
				inc, old, unchang = append(inc, i), append(old, o), append(unchang, u)
			}
		}
	}
	return []any{source, epoch, int64(seq), reason, pos, lsns, times, schemas, names, ops, inc, old, unchang}
}
