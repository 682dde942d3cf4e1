package rest

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// TestInFlightOrdering sends two uploads of one source at once, the later
// one reaching the sink first: it must wait for the earlier one instead of
// answering a gap, and both end applied.
func TestInFlightOrdering(t *testing.T) {
	sink := newFakeSink()
	calls := make(chan uint64, 16)
	sink.hook = func(ps []pgcourier.Parcel) { calls <- ps[0].Seq }
	h := newTestHandler(t, sink, 0)
	h.gapWait = 10 * time.Second // the test must not pass by waiting it out
	srv := serve(t, h)
	c := newTestClient(t, srv.URL, token, ClientOptions{})

	type result struct {
		receipts []pgcourier.Receipt
		err      error
	}
	later := make(chan result, 1)
	start := time.Now()
	go func() {
		rs, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 3, 2))
		later <- result{rs, err}
	}()
	if seq := <-calls; seq != 3 {
		t.Fatalf("first delivery starts at seq %d, want 3", seq)
	}

	got, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 2))
	if err != nil {
		t.Fatalf("Deliver(1, 2) error: %v", err)
	}
	want := []pgcourier.Receipt{receipt(1, pgcourier.Applied, 1, 2), receipt(2, pgcourier.Applied, 2, 3)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Deliver(1, 2) receipts (-want +got):\n%s", diff)
	}

	var res result
	select {
	case res = <-later:
	case <-time.After(5 * time.Second):
		t.Fatal("the later upload is still waiting 5s after the earlier one was applied")
	}
	if res.err != nil {
		t.Fatalf("Deliver(3, 4) error: %v", res.err)
	}
	want = []pgcourier.Receipt{receipt(3, pgcourier.Applied, 3, 4), receipt(4, pgcourier.Applied, 4, 5)}
	if diff := cmp.Diff(want, res.receipts); diff != "" {
		t.Errorf("Deliver(3, 4) receipts (-want +got):\n%s", diff)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the uploads took %s: the later one waited out its timeout instead of being woken", d)
	}
	close(calls)
	seqs := []uint64{3} // read above
	for s := range calls {
		seqs = append(seqs, s)
	}
	if diff := cmp.Diff([]uint64{3, 1, 3}, seqs); diff != "" {
		t.Errorf("deliveries by first seq (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]map[int64]uint64{laptop: {1: 4}}, sink.state().Applied); diff != "" {
		t.Errorf("sink applied (-want +got):\n%s", diff)
	}
}

// TestGapWithoutEarlierUpload checks that a real gap is answered once the
// wait for an earlier upload runs out.
func TestGapWithoutEarlierUpload(t *testing.T) {
	sink := newFakeSink()
	h := newTestHandler(t, sink, 0)
	h.gapWait = 100 * time.Millisecond
	srv := serve(t, h)
	c := newTestClient(t, srv.URL, token, ClientOptions{})

	start := time.Now()
	got, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 3, 2))
	if err != nil {
		t.Fatalf("Deliver() error: %v", err)
	}
	if diff := cmp.Diff([]pgcourier.Receipt{receipt(3, pgcourier.Gap, 0, 1)}, got); diff != "" {
		t.Errorf("Deliver() receipts (-want +got):\n%s", diff)
	}
	if d := time.Since(start); d < h.gapWait {
		t.Errorf("Deliver() took %s, want at least the wait of %s", d, h.gapWait)
	}
	if n := sink.state().Calls; n != 1 {
		t.Errorf("sink got %d deliveries, want 1", n)
	}
}

// TestDeliveriesOfOneSourceSerialize checks that the handler never runs two
// deliveries of one source at once, as pgcourier.Sink requires, while other
// sources go ahead.
func TestDeliveriesOfOneSourceSerialize(t *testing.T) {
	sink := newFakeSink()
	entered := make(chan string, 16)
	release := make(chan struct{})
	sink.hook = func(ps []pgcourier.Parcel) {
		entered <- ps[0].Source
		if ps[0].Source == laptop && ps[0].Seq == 1 {
			<-release
		}
	}
	h := newTestHandler(t, sink, 0)
	srv := serve(t, h)
	c := newTestClient(t, srv.URL, token, ClientOptions{})
	c2 := newTestClient(t, srv.URL, token2, ClientOptions{})

	done := make(chan error, 2)
	go func() { _, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1)); done <- err }()
	if src := <-entered; src != laptop {
		t.Fatalf("first delivery is of %s, want %s", src, laptop)
	}
	go func() { _, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 2, 1)); done <- err }()
	// Another source is not held up.
	if _, err := c2.Deliver(t.Context(), parcels(t, laptop2, 1, 1, 1)); err != nil {
		t.Fatalf("Deliver(%s) error: %v", laptop2, err)
	}
	if src := <-entered; src != laptop2 {
		t.Fatalf("second delivery is of %s, want %s", src, laptop2)
	}
	select {
	case src := <-entered:
		t.Fatalf("a delivery of %s started while one of %s ran", src, laptop)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]map[int64]uint64{laptop: {1: 2}, laptop2: {1: 1}}
	if diff := cmp.Diff(want, sink.state().Applied); diff != "" {
		t.Errorf("sink applied (-want +got):\n%s", diff)
	}
}

// slowSink takes wait to apply each delivery and, like apply.Writer, rolls
// back when its context ends first. entered receives one value per
// delivery as it starts, ended how it ended (nil: applied).
type slowSink struct {
	*fakeSink
	wait    atomic.Int64 // a time.Duration
	entered chan struct{}
	ended   chan error
}

func newSlowSink(wait time.Duration) *slowSink {
	s := &slowSink{fakeSink: newFakeSink(), entered: make(chan struct{}, 1), ended: make(chan error, 1)}
	s.wait.Store(int64(wait))
	return s
}

func (s *slowSink) Deliver(ctx context.Context, ps []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	s.entered <- struct{}{}
	t := time.NewTimer(time.Duration(s.wait.Load()))
	defer t.Stop()
	select {
	case <-ctx.Done():
		s.ended <- ctx.Err()
		return nil, ctx.Err()
	case <-t.C:
	}
	rs, err := s.fakeSink.Deliver(ctx, ps)
	s.ended <- err
	return rs, err
}

// TestSlowApplyOutlivesSender: the sender gives up on an upload whose apply
// takes longer than its attempt may (the last part of a large transaction
// applies every part at once). The apply still commits, and the sender's
// next attempt hears that the batch is a duplicate instead of starting the
// apply over.
func TestSlowApplyOutlivesSender(t *testing.T) {
	sink := newSlowSink(300 * time.Millisecond)
	srv := serve(t, newTestHandler(t, sink, 0))
	c := newTestClient(t, srv.URL, token, ClientOptions{Timeout: 50 * time.Millisecond, RetryMax: -1})
	ps := parcels(t, laptop, 1, 1, 1)

	if _, err := c.Deliver(t.Context(), ps); !errors.Is(err, pgcourier.ErrUnreachable) {
		t.Fatalf("Deliver() with an apply slower than the attempt = %v, want an error wrapping ErrUnreachable", err)
	}
	<-sink.entered
	if err := <-sink.ended; err != nil {
		t.Fatalf("the apply ended with %v after the sender gave up, want it applied", err)
	}
	sink.wait.Store(0)
	go func() { <-sink.entered; <-sink.ended }()
	rs, err := newTestClient(t, srv.URL, token, ClientOptions{}).Deliver(t.Context(), ps)
	if err != nil {
		t.Fatalf("Deliver() again = %v", err)
	}
	if len(rs) != 1 || rs[0].Outcome != pgcourier.Duplicate {
		t.Errorf("receipts of the second attempt = %+v, want one duplicate", rs)
	}
	if st := sink.state(); st.Applied[laptop][1] != 1 || st.Calls != 2 {
		t.Errorf("sink: applied seq %d in %d calls, want seq 1 applied by the first of 2", st.Applied[laptop][1], st.Calls)
	}
}
