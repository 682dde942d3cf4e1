package capture

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// TestResync loses the slot of a node that captured for a while, and
// recovers with Resync: a new, later epoch whose snapshot brings every row
// again, the old epoch's batches kept in the outbox.
func TestResync(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id int PRIMARY KEY, note text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'before' FROM generate_series(1, 50) g`)
	prepare(t, c, allPublic)
	conn := c.Connect(t)
	ctx := context.Background()
	opts := SetupOptions{Slot: testSlot, Publication: testPub, Tables: allPublic}

	// Capture the snapshot and a change, then stop.
	cctx, stop := context.WithCancel(ctx)
	cp, err := New(testOptions(c, allPublic))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cp.Run(cctx) }()
	c.Exec(t, `UPDATE visit SET note = 'edited' WHERE id = 1`)
	waitChanges(t, conn, 51)

	// While capture streams the slot, a resync is refused.
	if _, err := Resync(ctx, conn, opts, true); !errors.Is(err, ErrCaptureRunning) {
		t.Errorf("Resync while capture runs = %v, want ErrCaptureRunning", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	// A healthy slot needs force.
	if _, err := Resync(ctx, conn, opts, false); !errors.Is(err, ErrSlotHealthy) {
		t.Errorf("Resync of a healthy slot = %v, want ErrSlotHealthy", err)
	}

	var oldEpoch int64
	if err := conn.QueryRow(ctx, `SELECT epoch FROM pgcourier.capture_state`).Scan(&oldEpoch); err != nil {
		t.Fatal(err)
	}
	// The slot is lost; rows change meanwhile. (The stopped capturer's
	// walsender may hold the slot for a moment longer.)
	for deadline := time.Now().Add(10 * time.Second); ; {
		var active bool
		if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&active); err != nil {
			t.Fatal(err)
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot is still active 10 s after capture stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Exec(t, `SELECT pg_drop_replication_slot($1)`, testSlot)
	c.Exec(t, `UPDATE visit SET note = 'while lost' WHERE id <= 10`)
	c.Exec(t, `INSERT INTO visit VALUES (51, 'while lost')`)
	if _, err := Setup(ctx, conn, opts); !errors.Is(err, ErrSlotLost) {
		t.Fatalf("Setup after the slot was lost = %v, want ErrSlotLost", err)
	}

	res, err := Resync(ctx, conn, opts, false)
	if err != nil {
		t.Fatalf("Resync: %v", err)
	}
	if res.Epoch <= oldEpoch {
		t.Errorf("Resync epoch = %d, want later than %d", res.Epoch, oldEpoch)
	}
	if len(res.Snapshots) != 1 || res.Snapshots[0].Ident() != "public.visit" {
		t.Errorf("Resync snapshots = %v, want public.visit", res.Snapshots)
	}

	// Capture again: the new epoch starts at seq 1 with every row.
	runCapture(t, testOptions(c, allPublic))
	waitChanges(t, conn, 51+51)
	var oldBatches, newBatches, firstSeq int
	err = conn.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE epoch = $1), count(*) FILTER (WHERE epoch = $2), min(seq) FILTER (WHERE epoch = $2)
		  FROM pgcourier.outbox`, oldEpoch, res.Epoch).Scan(&oldBatches, &newBatches, &firstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if oldBatches == 0 || newBatches == 0 || firstSeq != 1 {
		t.Errorf("outbox: %d batches of the old epoch, %d of the new from seq %d; want both, the new from seq 1", oldBatches, newBatches, firstSeq)
	}
	var lost int
	for _, ch := range changes(outboxBatches(t, conn))[51:] {
		if ch.New[1].Text == "while lost" {
			lost++
		}
	}
	if lost != 11 {
		t.Errorf("rows changed while the slot was lost, in the new epoch's snapshot: %d, want 11", lost)
	}
}

// TestSnapshots reads the snapshots under way: pending before capture
// runs, none once it has copied the rows.
func TestSnapshots(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id int PRIMARY KEY, note text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'x' FROM generate_series(1, 300) g; ANALYZE visit`)
	prepare(t, c, allPublic)
	conn := c.Connect(t)
	ctx := context.Background()
	got, err := Snapshots(ctx, conn, testSlot)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Table != "public.visit" || got[0].RowsDone != 0 || got[0].RowsEstimate != 300 {
		t.Errorf("Snapshots before capture = %+v, want public.visit, 0 of 300 rows", got)
	}
	runCapture(t, testOptions(c, allPublic))
	waitChanges(t, conn, 300)
	for deadline := time.Now().Add(10 * time.Second); ; {
		got, err := Snapshots(ctx, conn, testSlot)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Snapshots after the copy = %+v, want none", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
