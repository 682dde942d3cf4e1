// Package sinktest is the conformance suite every transport runs: whatever
// carries batches upstream (the applier itself, the postgres route, the
// REST client talking to a listener) must behave the same at its end.
//
//   - a batch delivered again is a duplicate and changes nothing;
//   - a batch after a gap is refused with the seq needed next, changing
//     nothing;
//   - a receipt says applied only once the batch is durable upstream;
//   - a delivery cancelled in flight is either applied whole or not at all,
//     and delivering it again settles which.
package sinktest

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/wire"
)

// Node is the id of the upstream node the suite prepares.
const Node = "server-1"

// Encode returns the parcel of b.
func Encode(t testing.TB, b *pgcourier.Batch) pgcourier.Parcel {
	t.Helper()
	data, err := wire.Encode(b)
	if err != nil {
		t.Fatalf("wire.Encode: %v", err)
	}
	return pgcourier.Parcel{Source: b.Source, Epoch: b.Epoch, Seq: b.Seq, Rows: b.Rows(), Data: data}
}

// Visit is the relation of the table the suite's batches write.
var Visit = &pgcourier.Relation{Schema: "public", Name: "visit", Columns: []pgcourier.Column{
	{Name: "id", Type: "bigint", Key: true},
	{Name: "source", Type: "text"},
	{Name: "note", Type: "text"},
}}

// Batch returns batch seq of source and epoch: rows inserts into
// public.visit, with ids that depend on (source, epoch, seq) only.
func Batch(source string, epoch int64, seq uint64, rows int) *pgcourier.Batch {
	h := fnv.New32a()
	h.Write([]byte(source))
	base := int64(h.Sum32()%100_000)*1_000_000_000_000 + int64(seq)*1_000_000
	if epoch%2 == 0 {
		base += 500_000
	}
	tx := pgcourier.Transaction{
		CommitLSN:  pgcourier.LSN(seq) << 20,
		CommitTime: time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second),
	}
	for i := range rows {
		tx.Changes = append(tx.Changes, pgcourier.Change{Rel: Visit, Op: pgcourier.OpInsert, New: []pgcourier.Value{
			pgcourier.TextValue(fmt.Sprint(base + int64(i))),
			pgcourier.TextValue(source),
			pgcourier.TextValue(fmt.Sprintf("batch %d row %d", seq, i)),
		}})
	}
	return &pgcourier.Batch{Source: source, Epoch: epoch, Seq: seq, Transactions: []pgcourier.Transaction{tx}}
}

// Upstream starts a cluster prepared as an applying node's database: the
// pgcourier schema, registered to Node as a server, and the table the
// suite's batches write.
func Upstream(t testing.TB) *pgtest.Cluster {
	t.Helper()
	c := pgtest.Start(t)
	conn := c.Connect(t)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := schema.Register(ctx, conn, Node, pgcourier.RoleServer); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, `CREATE TABLE public.visit (id bigint PRIMARY KEY, source text NOT NULL, note text)`)
	return c
}

// Sources are the ids of the sources the suite sends as, one per subtest.
var Sources = []string{"laptop-01", "laptop-02", "laptop-03", "laptop-04", "laptop-05", "laptop-06"}

// Run runs the suite against the sinks that open returns for the upstream
// database c (see Upstream), one per subtest, to deliver as the source it
// is given (one of Sources).
func Run(t *testing.T, c *pgtest.Cluster, open func(t *testing.T, source string) pgcourier.Sink) {
	var n atomic.Int32
	source := func() string { return Sources[n.Add(1)-1] }
	ctx := context.Background()

	t.Run("applied in order and durable", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		parcels := []pgcourier.Parcel{Encode(t, Batch(src, 1, 1, 3)), Encode(t, Batch(src, 1, 2, 2)), Encode(t, Batch(src, 1, 3, 1))}
		receipts := deliver(t, sink, parcels)
		wantOutcomes(t, receipts, pgcourier.Applied, pgcourier.Applied, pgcourier.Applied)
		if last := receipts[2]; last.AppliedSeq != 3 || last.NextSeq != 4 {
			t.Errorf("last receipt = applied seq %d, next seq %d; want 3, 4", last.AppliedSeq, last.NextSeq)
		}
		// Durable: a new session of the upstream sees the rows at once.
		if got := rowsOf(t, c, src); got != 6 {
			t.Errorf("rows of %s upstream after the receipts = %d, want 6", src, got)
		}
		p, err := sink.Progress(ctx, src)
		if err != nil {
			t.Fatalf("Progress: %v", err)
		}
		if p.Epoch != 1 || p.AppliedSeq != 3 {
			t.Errorf("Progress = epoch %d applied seq %d, want 1, 3", p.Epoch, p.AppliedSeq)
		}
	})

	t.Run("duplicate changes nothing", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		first := []pgcourier.Parcel{Encode(t, Batch(src, 1, 1, 2)), Encode(t, Batch(src, 1, 2, 2))}
		wantOutcomes(t, deliver(t, sink, first), pgcourier.Applied, pgcourier.Applied)
		before := progressRow(t, c, src)
		again := deliver(t, sink, first)
		wantOutcomes(t, again, pgcourier.Duplicate, pgcourier.Duplicate)
		if again[1].AppliedSeq != 2 {
			t.Errorf("duplicate receipt applied seq = %d, want 2", again[1].AppliedSeq)
		}
		// Only the first is new: the duplicate is skipped, the next applied.
		mixed := []pgcourier.Parcel{first[1], Encode(t, Batch(src, 1, 3, 1))}
		wantOutcomes(t, deliver(t, sink, mixed), pgcourier.Duplicate, pgcourier.Applied)
		if got := rowsOf(t, c, src); got != 5 {
			t.Errorf("rows of %s = %d, want 5", src, got)
		}
		after := progressRow(t, c, src)
		if after.batches != before.batches+1 {
			t.Errorf("batches applied went from %d to %d, want one more (the duplicates count for nothing)", before.batches, after.batches)
		}
	})

	t.Run("gap refused with the next seq", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		wantOutcomes(t, deliver(t, sink, []pgcourier.Parcel{Encode(t, Batch(src, 1, 1, 1))}), pgcourier.Applied)
		receipts := deliver(t, sink, []pgcourier.Parcel{Encode(t, Batch(src, 1, 3, 1)), Encode(t, Batch(src, 1, 4, 1))})
		wantOutcomes(t, receipts, pgcourier.Gap)
		if receipts[0].NextSeq != 2 {
			t.Errorf("gap receipt next seq = %d, want 2", receipts[0].NextSeq)
		}
		if got := rowsOf(t, c, src); got != 1 {
			t.Errorf("rows of %s after a gap = %d, want 1 (nothing changed)", src, got)
		}
	})

	t.Run("new epoch starts at seq 1", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		wantOutcomes(t, deliver(t, sink, []pgcourier.Parcel{Encode(t, Batch(src, 1, 1, 1))}), pgcourier.Applied)
		receipts := deliver(t, sink, []pgcourier.Parcel{Encode(t, Batch(src, 2, 2, 1))})
		wantOutcomes(t, receipts, pgcourier.Gap)
		if receipts[0].NextSeq != 1 {
			t.Errorf("gap receipt of a new epoch: next seq = %d, want 1", receipts[0].NextSeq)
		}
		wantOutcomes(t, deliver(t, sink, []pgcourier.Parcel{Encode(t, Batch(src, 2, 1, 1))}), pgcourier.Applied)
	})

	t.Run("a transaction in parts applies whole", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		// Batches 1 to 3 carry one source transaction: 2 rows, 2 rows, 1 row.
		parts := []*pgcourier.Batch{Batch(src, 1, 1, 2), Batch(src, 1, 2, 2), Batch(src, 1, 3, 1)}
		for _, b := range parts[1:] {
			b.Transactions[0].CommitLSN, b.Transactions[0].CommitTime = parts[0].Transactions[0].CommitLSN, parts[0].Transactions[0].CommitTime
		}
		parts[0].Continued, parts[1].Continued = true, true
		var parcels []pgcourier.Parcel
		for _, b := range parts {
			parcels = append(parcels, Encode(t, b))
		}
		wantOutcomes(t, deliver(t, sink, parcels[:2]), pgcourier.Applied, pgcourier.Applied)
		if got := rowsOf(t, c, src); got != 0 {
			t.Errorf("rows of %s before the last part = %d, want 0", src, got)
		}
		wantOutcomes(t, deliver(t, sink, parcels[1:2]), pgcourier.Duplicate)
		wantOutcomes(t, deliver(t, sink, parcels[2:]), pgcourier.Applied)
		if got := rowsOf(t, c, src); got != 5 {
			t.Errorf("rows of %s after the last part = %d, want 5", src, got)
		}
		wantOutcomes(t, deliver(t, sink, parcels), pgcourier.Duplicate, pgcourier.Duplicate, pgcourier.Duplicate)
	})

	t.Run("cancelled in flight applies at most once", func(t *testing.T) {
		src := source()
		sink := open(t, src)
		parcels := make([]pgcourier.Parcel, 8)
		for i := range parcels {
			parcels[i] = Encode(t, Batch(src, 1, uint64(i+1), 2000))
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			sink.Deliver(cctx, parcels) //nolint:errcheck // cancelled on purpose; the outcome is read back below
		}()
		time.Sleep(20 * time.Millisecond)
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Deliver did not return within 30 s of its context's cancellation")
		}
		// Delivering again settles it: each batch applied exactly once.
		var receipts []pgcourier.Receipt
		for try := 0; ; try++ {
			r, err := sink.Deliver(ctx, parcels)
			if err == nil {
				receipts = r
				break
			}
			if try == 20 {
				t.Fatalf("Deliver after the cancelled one: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if len(receipts) != len(parcels) {
			t.Fatalf("Deliver again = %d receipts, want %d: %+v", len(receipts), len(parcels), receipts)
		}
		for i, r := range receipts {
			if r.Outcome != pgcourier.Applied && r.Outcome != pgcourier.Duplicate {
				t.Errorf("receipt %d = %s (%s), want applied or duplicate", i, r.Outcome, r.Error)
			}
		}
		if got := rowsOf(t, c, src); got != 8*2000 {
			t.Errorf("rows of %s = %d, want %d", src, got, 8*2000)
		}
		if p := progressRow(t, c, src); p.applied != 8 || p.batches != 8 {
			t.Errorf("progress = applied seq %d after %d batches, want 8 after 8 (none applied twice)", p.applied, p.batches)
		}
	})
}

func deliver(t *testing.T, sink pgcourier.Sink, parcels []pgcourier.Parcel) []pgcourier.Receipt {
	t.Helper()
	receipts, err := sink.Deliver(context.Background(), parcels)
	if err != nil {
		t.Fatalf("Deliver(%s seq %d..%d): %v", parcels[0].Source, parcels[0].Seq, parcels[len(parcels)-1].Seq, err)
	}
	for i, r := range receipts {
		if r.Source != parcels[i].Source || r.Epoch != parcels[i].Epoch || r.Seq != parcels[i].Seq {
			t.Fatalf("receipt %d is for %s epoch %d seq %d, want parcel %d's (%s epoch %d seq %d)",
				i, r.Source, r.Epoch, r.Seq, i, parcels[i].Source, parcels[i].Epoch, parcels[i].Seq)
		}
	}
	return receipts
}

func wantOutcomes(t *testing.T, receipts []pgcourier.Receipt, want ...pgcourier.Outcome) {
	t.Helper()
	var got []pgcourier.Outcome
	for _, r := range receipts {
		got = append(got, r.Outcome)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("outcomes (-want +got):\n%s\nreceipts: %+v", diff, receipts)
	}
}

// rowsOf counts source's rows upstream on a connection of its own.
func rowsOf(t *testing.T, c *pgtest.Cluster, source string) int {
	t.Helper()
	conn := connect(t, c)
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM public.visit WHERE source = $1`, source).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

type progress struct{ applied, batches int64 }

func progressRow(t *testing.T, c *pgtest.Cluster, source string) progress {
	t.Helper()
	conn := connect(t, c)
	defer conn.Close(context.Background())
	var p progress
	err := conn.QueryRow(context.Background(), `SELECT applied_seq, batches FROM pgcourier.source_progress WHERE source = $1`, source).
		Scan(&p.applied, &p.batches)
	if err != nil {
		t.Fatalf("read progress of %s: %v", source, err)
	}
	return p
}

func connect(t *testing.T, c *pgtest.Cluster) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.URL())
	if err != nil {
		t.Fatal(err)
	}
	return conn
}
