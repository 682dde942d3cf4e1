package apply

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// childEnv marks a test binary started by TestApplierKill9 to apply
// batches in its own process, so that the test can kill it with SIGKILL.
// Its value is the upstream URL.
const childEnv = "PGCOURIER_TEST_APPLY_CHILD_DB"

// partsChildEnv marks a child of TestApplierKill9Parts: it applies the
// parts stream instead.
const partsChildEnv = "PGCOURIER_TEST_APPLY_CHILD_PARTS"

func TestMain(m *testing.M) {
	if db := os.Getenv(childEnv); db != "" {
		if os.Getenv(partsChildEnv) != "" {
			os.Exit(runPartsChild(db))
		}
		os.Exit(runChild(db))
	}
	os.Exit(m.Run())
}

// Every crash test applies the same stream: crashBatches batches of
// crashRows inserts, each updating half of the batch before it and deleting
// a tenth of the one before that.
const (
	crashBatches = 40
	crashRows    = 4000
	crashSource  = "laptop-07"
	eventsTable  = `CREATE TABLE events (id bigint PRIMARY KEY, v bigint NOT NULL, note text)`
)

var events = relation("events", "id bigint key", "v bigint", "note text")

// crashBatch is batch k of the stream: one transaction per 500 changes.
func crashBatch(k uint64) *pgcourier.Batch {
	var chs []pgcourier.Change
	for i := range uint64(crashRows) {
		chs = append(chs, ins(events, fmt.Sprint(k*crashRows+i), fmt.Sprint(k), "inserted by batch "+fmt.Sprint(k)))
	}
	if k > 1 {
		for i := range uint64(crashRows / 2) {
			chs = append(chs, upd(events, fmt.Sprint((k-1)*crashRows+i), fmt.Sprint(-int64(k)), "UNCHANGED"))
		}
	}
	if k > 2 {
		for i := range uint64(crashRows / 10) {
			chs = append(chs, del(events, fmt.Sprint((k-2)*crashRows+i), "NULL", "NULL"))
		}
	}
	b := &pgcourier.Batch{Source: crashSource, Epoch: 1, Seq: k}
	for len(chs) > 0 {
		n := min(500, len(chs))
		b.Transactions = append(b.Transactions, txn(at(int(k)*10+len(b.Transactions)), chs[:n]...))
		chs = chs[n:]
	}
	return b
}

// checkStream fails the test unless the upstream holds exactly what the
// first n batches make, n being the applied seq it records: every batch
// wholly applied or not at all.
func checkStream(t *testing.T, c *pgtest.Cluster) uint64 {
	t.Helper()
	// One statement, one snapshot: a killed client's session may still be
	// committing its last batch.
	got := query(t, c, `
		WITH p AS (
		  SELECT coalesce(max(applied_seq), 0) AS n, coalesce(max(batches), 0) AS batches
		    FROM pgcourier.source_progress WHERE source = $2)
		SELECT p.n, p.batches, count(e.id),
		       count(e.id) FILTER (WHERE e.id / $1 < 1 OR e.id / $1 > p.n
		                             OR (e.id / $1 <= p.n - 2 AND e.id % $1 < $1 / 10)
		                             OR e.v <> CASE WHEN e.id / $1 <= p.n - 1 AND e.id % $1 < $1 / 2 THEN -(e.id / $1 + 1) ELSE e.id / $1 END
		                             OR e.note IS DISTINCT FROM 'inserted by batch ' || (e.id / $1))
		  FROM p LEFT JOIN events e ON true
		 GROUP BY p.n, p.batches`, crashRows, crashSource)
	var n, batches, rows, wrong uint64
	fmt.Sscanf(got[0], "%d|%d|%d|%d", &n, &batches, &rows, &wrong)
	if batches != n {
		t.Errorf("progress counts %d batches applied for seq %d: a batch applied twice or not recorded", batches, n)
	}
	wantRows := n*crashRows - uint64(max(int64(n)-2, 0))*crashRows/10
	if rows != wantRows || wrong != 0 {
		t.Fatalf("after %d batches: %d rows, %d of them wrong; want %d rows, none wrong", n, rows, wrong, wantRows)
	}
	return n
}

// TestPostgresCrashMidBatch crashes Postgres (every process killed at once)
// while batches apply, again and again: after each recovery the upstream
// holds whole batches only, and applying goes on where it stopped.
func TestPostgresCrashMidBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	pgtest.RequireLocal(t, c)
	migrate(t, c)
	c.Exec(t, eventsTable)
	w := newWriter(t, c)
	ctx := context.Background()

	// Every other attempt crashes Postgres while the batch is provably in
	// the middle of its transaction: another session holds a lock the
	// batch's writes wait for, and the crash comes once the applier waits.
	crashes, rolledBack := 0, 0
	for seq, attempt := uint64(1), 0; seq <= crashBatches; attempt++ {
		b := crashBatch(seq)
		crash := attempt%2 == 1 && crashes < 6
		var locker *pgx.Conn
		if crash {
			var err error
			if locker, err = pgx.Connect(ctx, c.URL()); err != nil {
				t.Fatal(err)
			}
			if _, err := locker.Exec(ctx, `BEGIN; LOCK TABLE events IN SHARE MODE`); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan struct{})
		var res Result
		var err error
		go func() {
			defer close(done)
			res, err = w.Apply(ctx, b)
		}()
		if crash {
			waitForLockWait(t, c, locker)
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			if err := c.Kill(); err != nil {
				t.Fatal(err)
			}
			crashes++
			<-done
			locker.Close(ctx) //nolint:errcheck // its server is gone
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
		} else {
			<-done
		}
		n := checkStream(t, c)
		switch {
		case err != nil:
		case res.Status == Applied || res.Status == Duplicate:
		default:
			t.Fatalf("Apply(seq %d) = %v (%v)", seq, res.Status, res.Err)
		}
		if crash && n < seq {
			rolledBack++
		}
		seq = n + 1
	}
	t.Logf("%d crashes, %d of them while a batch was not yet committed", crashes, rolledBack)
	if crashes < 3 || rolledBack != crashes {
		t.Errorf("%d crashes mid-batch, %d batches rolled back; want at least 3, every one rolled back", crashes, rolledBack)
	}
	if got := query(t, c, `SELECT count(*) FROM pgcourier.conflicts`); got[0] != "0" {
		t.Errorf("%s conflicts recorded, want none", got[0])
	}
}

// waitForLockWait waits until a session other than locker's waits for a
// lock: the applier, inside its batch's transaction.
func waitForLockWait(t *testing.T, c *pgtest.Cluster, locker *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		err := locker.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the batch never waited for the held lock")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runChild applies the crash stream to db from where it stands, then
// exits 0.
func runChild(db string) int { return applyStream(db, crashBatch, crashBatches) }

// applyStream applies batch(seq) for every seq up to last to db, from where
// its progress stands, then returns 0; 1 on a failure.
func applyStream(db string, batch func(seq uint64) *pgcourier.Batch, last uint64) int {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(db)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w, err := New(cfg, Options{Node: testNode})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer w.Close()
	for {
		p, err := w.Progress(ctx, crashSource)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if p.AppliedSeq >= last {
			return 0
		}
		// Duplicate is fine: a killed process's session may still commit
		// the batch it sent in full, and this one waits for it.
		res, err := w.Apply(ctx, batch(p.AppliedSeq+1))
		if err != nil || (res.Status != Applied && res.Status != Duplicate) {
			fmt.Fprintln(os.Stderr, "apply:", res.Status, res.Err, err)
			return 1
		}
	}
}

// TestApplierKill9 kills the applying process with SIGKILL at random
// moments, restarting it each time: after every kill the upstream holds
// whole batches only, and the stream ends complete.
func TestApplierKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	migrate(t, c)
	c.Exec(t, eventsTable)

	start := func() (*exec.Cmd, chan error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+c.URL())
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return cmd, done
	}
	kills, stuck, last := 0, 0, uint64(0)
	for {
		cmd, done := start()
		// Kill at a random moment, later each time a kill found no new
		// batch; after ten kills let the stream finish.
		wait := time.Duration(20+rand.IntN(200)+150*stuck) * time.Millisecond
		if kills >= 10 {
			wait = 5 * time.Minute
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("applying process failed: %v", err)
			}
			n := checkStream(t, c)
			t.Logf("%d kills", kills)
			if n != crashBatches {
				t.Errorf("stream ended at seq %d, want %d", n, crashBatches)
			}
			if kills < 3 {
				t.Errorf("only %d kills; the test proves little", kills)
			}
			return
		case <-time.After(wait):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			kills++
			n := checkStream(t, c)
			if n == last {
				stuck++
			} else {
				stuck, last = 0, n
			}
			t.Logf("kill %d at seq %d", kills, n)
		}
	}
}
