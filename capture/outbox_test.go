package capture

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// seqs returns the seqs of parcels.
func seqs(ps []pgcourier.Parcel) []uint64 {
	var s []uint64
	for _, p := range ps {
		s = append(s, p.Seq)
	}
	return s
}

// TestOutbox fills the outbox through capture, then walks the batches
// through delivery: pending, relayed, acknowledged, reopened, trimmed.
func TestOutbox(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE public.visit (id int PRIMARY KEY, note text)`)
	prepare(t, c, allPublic)
	conn := c.Connect(t)
	ctx := context.Background()
	appended := make(chan struct{}, 100)
	opts := testOptions(c, allPublic)
	opts.MaxBatchRows = 1 // one batch per transaction
	opts.Appended = func() { appended <- struct{}{} }
	runCapture(t, opts)
	for i := range 5 {
		c.Exec(t, `INSERT INTO public.visit VALUES ($1, 'x')`, i)
	}
	for range 5 {
		select {
		case <-appended:
		case <-time.After(20 * time.Second):
			t.Fatal("Appended was not called for every batch within 20 s")
		}
	}

	ob, err := OpenOutbox(ctx, c.URL(), testNode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ob.Close)
	var epoch int64
	if err := conn.QueryRow(ctx, `SELECT epoch FROM pgcourier.capture_state`).Scan(&epoch); err != nil {
		t.Fatal(err)
	}

	pending := func(from uint64, max, maxBytes int) []uint64 {
		t.Helper()
		ps, err := ob.Pending(ctx, epoch, from, max, maxBytes)
		if err != nil {
			t.Fatalf("Pending: %v", err)
		}
		for _, p := range ps {
			if p.Source != testNode || p.Epoch != epoch || p.Rows != 1 || len(p.Data) == 0 {
				t.Errorf("parcel %+v: want source %s, epoch %d, 1 row, data", p, testNode, epoch)
			}
		}
		return seqs(ps)
	}
	if diff := cmp.Diff([]uint64{1, 2, 3, 4, 5}, pending(1, 10, 1<<20)); diff != "" {
		t.Errorf("Pending (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{3, 4}, pending(3, 2, 1<<20)); diff != "" {
		t.Errorf("Pending from 3, max 2 (-want +got):\n%s", diff)
	}
	if got := pending(1, 10, 1); len(got) != 1 {
		t.Errorf("Pending with a 1-byte budget = %v, want one batch", got)
	}

	stats := func() OutboxStats {
		t.Helper()
		st, err := ob.Stats(ctx)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		return st
	}
	if err := ob.Relayed(ctx, epoch, 3); err != nil {
		t.Fatal(err)
	}
	if st := stats(); st.Pending != 5 || st.Relayed != 3 || st.PendingRows != 5 || st.Oldest.IsZero() {
		t.Errorf("Stats after relaying 3 = %+v, want 5 pending, 3 relayed, 5 rows", st)
	}
	if err := ob.Acknowledge(ctx, epoch, 4); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{5}, pending(1, 10, 1<<20)); diff != "" {
		t.Errorf("Pending after acknowledging 4 (-want +got):\n%s", diff)
	}
	if st := stats(); st.Pending != 1 || st.Acknowledged != 4 {
		t.Errorf("Stats after acknowledging 4 = %+v, want 1 pending, 4 acknowledged", st)
	}

	// The upstream lost batches 3 and 4: they come back.
	held, err := ob.Reopen(ctx, epoch, 3)
	if err != nil || !held {
		t.Fatalf("Reopen(3) = %v, %v; want true, nil", held, err)
	}
	if diff := cmp.Diff([]uint64{3, 4, 5}, pending(1, 10, 1<<20)); diff != "" {
		t.Errorf("Pending after reopening 3 (-want +got):\n%s", diff)
	}

	// Trim keeps what is unacknowledged, whatever its age.
	if err := ob.Acknowledge(ctx, epoch, 3); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.Trim(ctx, time.Hour); err != nil || n != 0 {
		t.Errorf("Trim(1h) = %d, %v; want 0, nil", n, err)
	}
	if n, err := ob.Trim(ctx, 0); err != nil || n != 3 {
		t.Errorf("Trim(0) = %d, %v; want 3 (seqs 1-3), nil", n, err)
	}
	if held, err := ob.Reopen(ctx, epoch, 2); err != nil || held {
		t.Errorf("Reopen(2) after trimming = %v, %v; want false, nil", held, err)
	}
	if diff := cmp.Diff([]uint64{4, 5}, pending(1, 10, 1<<20)); diff != "" {
		t.Errorf("Pending after trimming (-want +got):\n%s", diff)
	}

	// Route state: the last success and the last error, kept apart.
	if err := ob.RecordRoute(ctx, "route[0] rest", "http://server:8470", 5, nil); err != nil {
		t.Fatal(err)
	}
	if err := ob.RecordRoute(ctx, "route[0] rest", "http://server:8470", 0, errors.New("connection refused")); err != nil {
		t.Fatal(err)
	}
	routes, err := ob.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := routes["route[0] rest"]
	if r.LastSeq != 5 || r.LastSuccess.IsZero() || r.LastError != "connection refused" || r.LastErrorAt.Before(r.LastSuccess) {
		t.Errorf("route state = %+v, want seq 5, a success, then the error", r)
	}
}
