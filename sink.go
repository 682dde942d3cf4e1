package pgcourier

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Parcel is one encoded batch as it travels between nodes: its identity, as
// its header states it, and its bytes in the wire format (see package wire).
// Relays pass the bytes on unchanged.
type Parcel struct {
	Source string
	Epoch  int64
	Seq    uint64
	Rows   int    // row changes in the batch
	Data   []byte // the encoded batch
	// Batch is Data decoded, when the holder has decoded it already (a
	// receiver that checked every parcel of a request before taking any);
	// nil otherwise. Receivers that need the changes use it instead of
	// decoding Data again.
	Batch *Batch
}

// Outcome is what a receiver did with a parcel.
type Outcome string

// The outcomes a receipt can report.
const (
	// Applied: the final destination applied the batch.
	Applied Outcome = "applied"
	// Duplicate: the final destination had applied (or parked) the batch
	// before; nothing changed. It counts as applied.
	Duplicate Outcome = "duplicate"
	// Stored: a relay keeps the batch durably and will pass it on. The
	// batch is not applied upstream yet; the sender must keep it.
	Stored Outcome = "stored"
	// Gap: the receiver needs an earlier batch first; Receipt.NextSeq says
	// which.
	Gap Outcome = "gap"
	// Blocked: the batch cannot be applied as the upstream database stands
	// (Receipt.Error says why). Nothing changed; try again after
	// Receipt.RetryAfter. Later batches of the source wait for it.
	Blocked Outcome = "blocked"
	// Refused: the receiver will never take the batch (Receipt.Error says
	// why): it comes from the receiver itself, it is malformed, or a newer
	// epoch of its source replaced it. Someone must act.
	Refused Outcome = "refused"
)

// Done reports whether the outcome lets a sender stop offering the batch to
// this receiver: Applied, Duplicate or Stored.
func (o Outcome) Done() bool { return o == Applied || o == Duplicate || o == Stored }

// Receipt is a receiver's answer about one parcel.
type Receipt struct {
	Source  string
	Epoch   int64
	Seq     uint64
	Outcome Outcome
	// AppliedSeq is the last seq of Epoch the final destination has
	// applied, as far as the receiver knows (0 if none or unknown).
	AppliedSeq uint64
	// NextSeq is the seq the receiver needs next from the source: the next
	// one of its current epoch, or 1 when a new epoch must start.
	NextSeq uint64
	// Error says why a parcel is Blocked or Refused.
	Error string
	// RetryAfter is when to offer a Blocked parcel again.
	RetryAfter time.Duration
}

// Progress is how far a source's stream has got on a receiver.
type Progress struct {
	Source string
	// Epoch and AppliedSeq are the source's last batch applied by the final
	// destination; zero when none was.
	Epoch      int64
	AppliedSeq uint64
	// StoredSeq is the last seq of Epoch a relay holds; it equals
	// AppliedSeq on an applying node.
	StoredSeq uint64
	// Blocked is the error keeping the source's next batch from applying,
	// empty if none.
	Blocked string
}

// Sink is a way upstream: it takes parcels of one source and says what
// became of them. The transports implement it: the REST client, the direct
// postgres route (the applier itself) and, for a relay, its store.
type Sink interface {
	// Deliver hands over parcels: consecutive batches of one source and
	// epoch, oldest first. It returns one receipt per parcel it handled,
	// in order, and stops after the first whose outcome is not Done, so the
	// last receipt says why. Delivering a parcel again is always safe:
	// receivers deduplicate by (source, epoch, seq).
	//
	// An error means the link or the receiver failed: parcels without a
	// receipt may or may not have arrived. It wraps ErrUnreachable when the
	// receiver could not be reached at all, and ErrTooLarge when it refused
	// the request for its size. Deliver is safe for concurrent use; parcels
	// of one source must not be delivered concurrently.
	Deliver(ctx context.Context, parcels []Parcel) ([]Receipt, error)
	// Progress returns the receiver's position for source. It is cheap:
	// senders use it to probe a link that was down.
	Progress(ctx context.Context, source string) (Progress, error)
}

// ErrUnreachable is wrapped by a Sink's errors when its receiver could not
// be reached at all (no route, connection refused, timeout, or a gateway in
// front of it that could not reach it).
var ErrUnreachable = errors.New("upstream unreachable")

// ErrTooLarge is wrapped by a Sink's errors when the receiver refused a
// request for its size: fewer parcels per request may get through. It comes
// with ErrRejected, as a single parcel over the receiver's limit needs
// someone to raise the limit.
var ErrTooLarge = errors.New("request too large for the upstream")

// SlowestLink is the slowest link, in bytes a second, that a delivery is
// given time for: senders let a delivery take as long as its parcels need
// at this rate (LinkTime), on top of a fixed timeout.
const SlowestLink = 4 << 10

// LinkTime returns how long n bytes take over the slowest link.
func LinkTime(n int) time.Duration { return time.Duration(n) * time.Second / SlowestLink }

// ErrRejected is wrapped by a Sink's errors when the receiver refused the
// request itself: a token it does not know or that speaks for another
// source, a body over its limit, a database password it refuses. Retrying
// does not help until someone fixes the configuration.
var ErrRejected = errors.New("upstream refused the request")

// CheckParcels checks that parcels are consecutive batches of one source and
// epoch, as Sink.Deliver requires.
func CheckParcels(parcels []Parcel) error {
	for i, p := range parcels {
		if p.Seq == 0 {
			return fmt.Errorf("parcel %d: seq 0: seqs start at 1", i)
		}
		if i == 0 {
			continue
		}
		first := parcels[0]
		if p.Source != first.Source || p.Epoch != first.Epoch {
			return fmt.Errorf("parcel %d is %s epoch %d, parcel 0 %s epoch %d: want one source and epoch", i, p.Source, p.Epoch, first.Source, first.Epoch)
		}
		if p.Seq != parcels[i-1].Seq+1 {
			return fmt.Errorf("parcel %d has seq %d after %d: want consecutive seqs", i, p.Seq, parcels[i-1].Seq)
		}
	}
	return nil
}
