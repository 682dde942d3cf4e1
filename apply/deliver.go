package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// A Writer is the sink at the end of every route: the REST listener hands
// it what arrives, and the postgres route is a Writer on the upstream
// database.
var _ pgcourier.Sink = (*Writer)(nil)

// Deliver applies parcels in order, as Apply does, and stops after the
// first that is not applied or a duplicate; see pgcourier.Sink. A parcel
// that does not decode, or whose header does not match its identity, is
// Refused. The error is for the database link: wrapped in
// pgcourier.ErrUnreachable when no connection could be made.
func (w *Writer) Deliver(ctx context.Context, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	if err := pgcourier.CheckParcels(parcels); err != nil {
		return nil, fmt.Errorf("deliver: %w", err)
	}
	// The next parcel decodes while this one applies.
	decoded := make(chan decodedParcel, 1)
	dctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Go(func() { decodeAhead(dctx, parcels, decoded) })

	receipts := make([]pgcourier.Receipt, 0, len(parcels))
	for _, p := range parcels {
		r := pgcourier.Receipt{Source: p.Source, Epoch: p.Epoch, Seq: p.Seq}
		var d decodedParcel
		select {
		case d = <-decoded:
		case <-ctx.Done():
			return receipts, ctx.Err()
		}
		if d.err != nil {
			r.Outcome, r.Error = pgcourier.Refused, fmt.Sprintf("%v: %v", ErrInvalid, d.err)
			return append(receipts, r), nil
		}
		b := d.batch
		if b.Source != p.Source || b.Epoch != p.Epoch || b.Seq != p.Seq {
			r.Outcome = pgcourier.Refused
			r.Error = fmt.Sprintf("%v: parcel says %s epoch %d seq %d, its batch %s epoch %d seq %d",
				ErrInvalid, p.Source, p.Epoch, p.Seq, b.Source, b.Epoch, b.Seq)
			return append(receipts, r), nil
		}
		res, err := w.applyEncoded(ctx, b, p.Data)
		if err != nil {
			return receipts, linkError(err) // it names the batch
		}
		receipts = append(receipts, receipt(r, res))
		if !receipts[len(receipts)-1].Outcome.Done() {
			break
		}
	}
	return receipts, nil
}

// decodedParcel is a parcel's batch, or why it does not decode.
type decodedParcel struct {
	batch *pgcourier.Batch
	err   error
}

// decodeAhead sends the batch of every parcel to out in order, decoding
// those that come without one, until ctx is done.
func decodeAhead(ctx context.Context, parcels []pgcourier.Parcel, out chan<- decodedParcel) {
	for _, p := range parcels {
		d := decodedParcel{batch: p.Batch}
		if d.batch == nil {
			d.batch, d.err = wire.Decode(p.Data)
		}
		select {
		case out <- d:
		case <-ctx.Done():
			return
		}
	}
}

// receipt fills r from what Apply did.
func receipt(r pgcourier.Receipt, res Result) pgcourier.Receipt {
	r.AppliedSeq, r.NextSeq = res.AppliedSeq, res.NextSeq
	switch res.Status {
	case Applied:
		r.Outcome = pgcourier.Applied
	case Duplicate:
		r.Outcome = pgcourier.Duplicate
	case Gap:
		r.Outcome = pgcourier.Gap
	case Blocked:
		r.Outcome, r.RetryAfter = pgcourier.Blocked, res.RetryAfter
	default:
		r.Outcome = pgcourier.Refused
	}
	if res.Err != nil {
		r.Error = res.Err.Error()
	}
	return r
}

// linkError returns err, marked when it means no connection to the
// database could be made: pgcourier.ErrRejected when the upstream refused
// the user, its password or the database name (someone must fix that),
// pgcourier.ErrUnreachable otherwise (a working link heals it).
func linkError(err error) error {
	var connect *pgconn.ConnectError
	if !errors.As(err, &connect) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "28") || pe.Code == "3D000") {
		return fmt.Errorf("%w: %w", pgcourier.ErrRejected, err)
	}
	return fmt.Errorf("%w: %w", pgcourier.ErrUnreachable, err)
}
