package capture

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// childEnv marks a test binary started by a crash test to run a Capturer in
// its own process, so that the test can kill it with SIGKILL.
const childEnv = "PGCOURIER_TEST_CAPTURE_CHILD_DB"

// chunkEnv sets the child's snapshot chunk size, partEnv its PartRows.
const (
	chunkEnv = "PGCOURIER_TEST_CAPTURE_CHILD_CHUNK"
	partEnv  = "PGCOURIER_TEST_CAPTURE_CHILD_PART"
)

func TestMain(m *testing.M) {
	if db := os.Getenv(childEnv); db != "" {
		os.Exit(runChild(db))
	}
	os.Exit(m.Run())
}

func runChild(db string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := Options{Node: testNode, Database: db, Slot: testSlot, Publication: testPub, Tables: allPublic,
		MaxBatchDelay: 20 * time.Millisecond, StatusInterval: 200 * time.Millisecond, Logger: log}
	fmt.Sscan(os.Getenv(chunkEnv), &opts.SnapshotChunkRows)
	fmt.Sscan(os.Getenv(partEnv), &opts.PartRows)
	cp, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cp.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childProc is a Capturer running in a child process, which a test kills
// with SIGKILL and restarts. It is stopped when the test ends, whatever
// happened, and dies with the test binary.
type childProc struct {
	env []string
	mu  sync.Mutex
	cmd *exec.Cmd
}

func startChild(t *testing.T, env ...string) *childProc {
	t.Helper()
	p := &childProc{env: append(os.Environ(), env...)}
	if err := p.restart(false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
	})
	return p
}

// restart kills the running child, if kill, and starts a new one.
func (p *childProc) restart(kill bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if kill {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = p.env
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start capture child: %w", err)
	}
	p.cmd = cmd
	return nil
}

// load commits transactions of 1 to 20 inserts into events; every fifth
// transaction also updates a row of an earlier one. It remembers how many
// changes each transaction (numbered in the txn column) made, across runs.
type load struct {
	mu      sync.Mutex
	made    map[int]int
	total   int
	nextTxn int
	nextID  int64
}

// run commits about n more changes from several clients at once.
func (l *load) run(ctx context.Context, url string, clients, n int) error {
	l.mu.Lock()
	if l.made == nil {
		l.made = map[int]int{}
	}
	stop := l.total + n
	l.mu.Unlock()
	g, ctx := errgroup.WithContext(ctx)
	for range clients {
		g.Go(func() error {
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			for {
				l.mu.Lock()
				if l.total >= stop {
					l.mu.Unlock()
					return nil
				}
				l.nextTxn++
				txn, rows, first := l.nextTxn, 1+rand.IntN(20), l.nextID
				l.nextID += int64(rows)
				changes := rows
				if txn%5 == 0 && first > 0 {
					changes++
				}
				l.total += changes
				l.mu.Unlock()

				made := rows
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO events (id, txn) SELECT $1 + g, $2 FROM generate_series(0, $3 - 1) g`, first, txn, rows); err != nil {
						return err
					}
					if changes > rows {
						// The row may belong to a transaction not committed yet.
						tag, err := tx.Exec(ctx, `UPDATE events SET touched = $1 WHERE id = $2`, txn, rand.Int64N(first))
						made += int(tag.RowsAffected())
						return err
					}
					return nil
				})
				if err != nil {
					return err
				}
				l.mu.Lock()
				l.made[txn] = made
				l.total += made - changes
				l.mu.Unlock()
			}
		})
	}
	return g.Wait()
}

// checkExactlyOnce fails the test unless the outbox holds every transaction
// of made exactly once, as whole transactions, in contiguous batches.
func checkExactlyOnce(t *testing.T, conn *pgx.Conn, made map[int]int) {
	t.Helper()
	bs := outboxBatches(t, conn)
	seen := map[int]int{}
	var last pgcourier.LSN
	for i, b := range bs {
		if b.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d: want 1, 2, 3 … without gaps", i, b.Seq)
		}
		for _, tx := range b.Transactions {
			if tx.CommitLSN <= last {
				t.Errorf("batch %d: transaction at %s after one at %s: want commit order", b.Seq, tx.CommitLSN, last)
			}
			last = tx.CommitLSN
			txnCol := column(t, tx.Changes[0].Rel, "txn")
			txn := -1
			for _, ch := range tx.Changes {
				if ch.Op == pgcourier.OpInsert {
					fmt.Sscan(ch.New[txnCol].Text, &txn)
				}
			}
			if seen[txn] != 0 {
				t.Errorf("transaction %d captured twice", txn)
			}
			seen[txn] = len(tx.Changes)
		}
	}
	missing := 0
	for txn, n := range made {
		switch got := seen[txn]; {
		case got == 0:
			missing++
		case got != n:
			t.Errorf("transaction %d captured with %d changes, want %d", txn, got, n)
		}
	}
	if missing > 0 || len(seen) != len(made) {
		t.Errorf("outbox holds %d transactions, %d committed ones missing; want all %d exactly once", len(seen), missing, len(made))
	}
}

// waitTotal waits until the outbox holds as many changes as l made.
func waitTotal(t *testing.T, conn *pgx.Conn, l *load) {
	t.Helper()
	waitChanges(t, conn, l.total)
}

const eventsTable = `CREATE TABLE events (id bigint PRIMARY KEY, txn int NOT NULL, touched int, at timestamptz DEFAULT clock_timestamp())`

// TestCaptureKill9 kills the capturing process with SIGKILL at random moments
// while 100,000 changes are committed, restarting it each time.
func TestCaptureKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	c.Exec(t, eventsTable)
	prepare(t, c, allPublic)

	child := startChild(t, childEnv+"="+c.URL())
	ctx := context.Background()
	done := make(chan struct{})
	killed := make(chan error, 1)
	kills := 0
	go func() {
		for {
			select {
			case <-done:
				killed <- nil
				return
			case <-time.After(time.Duration(20+rand.IntN(230)) * time.Millisecond):
			}
			if err := child.restart(true); err != nil {
				killed <- err
				return
			}
			kills++
		}
	}()
	var l load
	err := l.run(ctx, c.URL(), 4, 100_000)
	close(done)
	if kerr := <-killed; kerr != nil {
		t.Fatal(kerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	conn := c.Connect(t)
	waitTotal(t, conn, &l)
	t.Logf("%d transactions, %d kills", len(l.made), kills)
	if kills < 3 {
		t.Errorf("only %d kills during the workload; the test proves little", kills)
	}
	checkExactlyOnce(t, conn, l.made)
}

// TestCapturePostgresRestarts restarts Postgres cleanly, then crashes it
// (every process killed at once, like a power cut), each time while capture
// is still working through a backlog. The outbox survives the crash.
func TestCapturePostgresRestarts(t *testing.T) {
	c := pgtest.Start(t)
	pgtest.RequireLocal(t, c)
	c.Exec(t, eventsTable)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.MaxBatchRows = 200
	runCapture(t, opts)
	ctx := context.Background()

	var l load
	if err := l.run(ctx, c.URL(), 2, 5000); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.run(ctx, c.URL(), 2, 5000); err != nil {
		t.Fatal(err)
	}
	outboxRows := func() int {
		conn, err := pgx.Connect(ctx, c.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT coalesce(sum(rows), 0) FROM pgcourier.outbox`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := outboxRows()
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if after := outboxRows(); after < before {
		t.Errorf("outbox held %d changes before the crash, %d after: want nothing lost", before, after)
	}
	if err := l.run(ctx, c.URL(), 2, 2000); err != nil {
		t.Fatal(err)
	}
	conn := c.Connect(t)
	waitTotal(t, conn, &l)
	checkExactlyOnce(t, conn, l.made)
}
