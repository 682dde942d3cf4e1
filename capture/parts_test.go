package capture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// checkParts checks that the batches carry ids first..last of table item
// in order, one change each, that seq runs 1, 2, 3 … and that every
// continued batch is a part of the transaction the next batch starts with.
func checkParts(t *testing.T, bs []*pgcourier.Batch, first, last int) {
	t.Helper()
	for i, b := range bs {
		if b.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d, want %d", i, b.Seq, i+1)
		}
		if !b.Continued {
			continue
		}
		if len(b.Transactions) != 1 || len(b.Transactions[0].Changes) == 0 {
			t.Fatalf("continued batch %d holds %d transactions, want one part", b.Seq, len(b.Transactions))
		}
		if i+1 == len(bs) {
			t.Fatalf("continued batch %d is the last in the outbox", b.Seq)
		}
		part, next := b.Transactions[0], bs[i+1].Transactions[0]
		if part.CommitLSN != next.CommitLSN || !part.CommitTime.Equal(next.CommitTime) {
			t.Errorf("batch %d is a part of the transaction committed at %s %s; batch %d starts with %s %s",
				b.Seq, part.CommitLSN, part.CommitTime, bs[i+1].Seq, next.CommitLSN, next.CommitTime)
		}
	}
	cs := changes(bs)
	if len(cs) != last-first+1 {
		t.Fatalf("outbox holds %d changes, want %d", len(cs), last-first+1)
	}
	for i, ch := range cs {
		if want := strconv.Itoa(first + i); ch.Op != pgcourier.OpInsert || ch.New[0].Text != want {
			t.Fatalf("change %d is %s of id %q, want insert of %s", i, ch.Op, ch.New[0].Text, want)
		}
	}
}

func TestCaptureLargeTransactionInParts(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE item (id int PRIMARY KEY, note text)`)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.PartRows = 500
	runCapture(t, opts)

	c.Exec(t, `INSERT INTO item VALUES (0, 'before')`)
	c.Exec(t, `INSERT INTO item SELECT g, 'big' FROM generate_series(1, 2345) g`)
	// Relayed data is not captured, however large.
	commitAs(t, c, "laptop-08", `INSERT INTO item SELECT g, 'relayed' FROM generate_series(10001, 12000) g`)
	c.Exec(t, `INSERT INTO item VALUES (2346, 'after')`)

	conn := c.Connect(t)
	waitChanges(t, conn, 2347)
	waitState(t, c, "part_lsn IS NULL AND part_rows = 0")
	bs := outboxBatches(t, conn)
	checkParts(t, bs, 0, 2346)
	var parts, rows []int
	for _, b := range bs {
		if b.Continued {
			parts = append(parts, b.Rows())
		}
		rows = append(rows, b.Rows())
	}
	// 2,345 rows in parts of 500: four parts, the rest with the commit.
	if fmt.Sprint(parts) != "[500 500 500 500]" {
		t.Errorf("parts of %v rows (batches of %v), want four of 500", parts, rows)
	}
}

// TestCapturePartsResume stops capture in the middle of a transaction it
// writes in parts: the next capture writes the rest of it, and nothing
// twice.
func TestCapturePartsResume(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE item (id int PRIMARY KEY, note text)`)
	prepare(t, c, allPublic)
	const total = 5000
	c.Exec(t, fmt.Sprintf(`INSERT INTO item SELECT g, 'big' FROM generate_series(1, %d) g`, total))

	opts := testOptions(c, allPublic)
	opts.PartRows = 250
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var appended atomic.Int32
	opts.Appended = func() {
		if appended.Add(1) == 3 {
			cancel()
		}
	}
	cp, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}

	conn := c.Connect(t)
	bs := outboxBatches(t, conn)
	if len(bs) < 3 || !bs[len(bs)-1].Continued {
		t.Fatalf("capture stopped with %d batches in the outbox, the last continued: %v; want it stopped between parts",
			len(bs), len(bs) > 0 && bs[len(bs)-1].Continued)
	}
	var written int
	for _, b := range bs {
		written += b.Rows()
	}
	var partRows int
	if err := conn.QueryRow(context.Background(), `SELECT part_rows FROM pgcourier.capture_state WHERE part_lsn IS NOT NULL`).Scan(&partRows); err != nil {
		t.Fatalf("read part state: %v", err)
	}
	if partRows != written {
		t.Errorf("capture state records %d changes written in parts, the outbox holds %d", partRows, written)
	}

	opts.Appended = nil
	runCapture(t, opts)
	waitChanges(t, conn, total)
	waitState(t, c, "part_lsn IS NULL")
	c.Exec(t, fmt.Sprintf(`INSERT INTO item VALUES (%d, 'after')`, total+1))
	waitChanges(t, conn, total+1)
	checkParts(t, outboxBatches(t, conn), 1, total+1)
}

// waitState waits until the test slot's capture state matches cond.
func waitState(t *testing.T, c *pgtest.Cluster, cond string) {
	t.Helper()
	conn := c.Connect(t)
	for range 600 {
		var ok bool
		err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pgcourier.capture_state WHERE slot = $1 AND `+cond+`)`, testSlot).Scan(&ok)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("capture state never came to %s", cond)
}

// TestCapturePartsKill9 kills the capturing process with SIGKILL while it
// writes large transactions in parts, each time soon after a part was
// written: every change ends up in the outbox once, in order.
func TestCapturePartsKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE item (id int PRIMARY KEY, note text)`)
	prepare(t, c, allPublic)
	// Two large transactions between small ones.
	c.Exec(t, `INSERT INTO item VALUES (0, 'small')`)
	c.Exec(t, `INSERT INTO item SELECT g, 'big' FROM generate_series(1, 40000) g`)
	c.Exec(t, `INSERT INTO item VALUES (40001, 'small')`)
	c.Exec(t, `INSERT INTO item SELECT g, 'big' FROM generate_series(40002, 80001) g`)
	c.Exec(t, `INSERT INTO item VALUES (80002, 'small')`)

	child := startChild(t, childEnv+"="+c.URL(), partEnv+"=200")
	conn := c.Connect(t)
	ctx := context.Background()
	kills, midway := 0, 0
	for kills < 8 {
		var inParts bool
		var rows int
		err := conn.QueryRow(ctx, `SELECT part_lsn IS NOT NULL, (SELECT coalesce(sum(rows), 0) FROM pgcourier.outbox)
			FROM pgcourier.capture_state WHERE slot = $1`, testSlot).Scan(&inParts, &rows)
		if err != nil {
			t.Fatal(err)
		}
		if rows == 80003 {
			break
		}
		if !inParts {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		// Small parts and a short wait: the kill mostly lands while a
		// transaction is half written, but at a random point of it.
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
		if err := child.restart(true); err != nil {
			t.Fatal(err)
		}
		kills++
		if err := conn.QueryRow(ctx, `SELECT part_lsn IS NOT NULL FROM pgcourier.capture_state`).Scan(&inParts); err == nil && inParts {
			midway++
		}
	}
	t.Logf("%d kills, %d of them with a transaction half written", kills, midway)
	if midway == 0 {
		t.Errorf("no kill came while a transaction was half written; the test proves little")
	}
	waitChanges(t, conn, 80003)
	waitState(t, c, "part_lsn IS NULL")
	checkParts(t, outboxBatches(t, conn), 0, 80002)
}
