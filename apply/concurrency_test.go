package apply

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	pgcourier "github.com/pgcourier/pgcourier"
)

const counterTable = `CREATE TABLE counter (id int PRIMARY KEY, n int); CREATE TABLE seen (seq int PRIMARY KEY)`

var (
	counter = relation("counter", "id integer key", "n integer")
	seen    = relation("seen", "seq integer key")
)

// counting is batch seq of source: it records the seq and sets the
// source's counter to it.
func counting(source string, seq uint64) *pgcourier.Batch {
	s := fmt.Sprint(seq)
	id := fmt.Sprint(source[len(source)-1])
	return batch(source, seq, txn(at(int(seq)), upd(counter, id, s), ins(seen, fmt.Sprint(seq*1000+uint64(source[len(source)-1])))))
}

// TestSameSourceConcurrently runs two writers, each with its own
// connections, applying the same batches of one source at once: every
// batch takes effect exactly once, in order.
func TestSameSourceConcurrently(t *testing.T) {
	c, w1 := upstream(t, counterTable)
	w2 := newWriter(t, c)
	const n = 40
	var mu sync.Mutex
	applied := map[uint64]int{}
	var g errgroup.Group
	for _, w := range []*Writer{w1, w2} {
		g.Go(func() error {
			for seq := uint64(1); seq <= n; {
				res, err := w.Apply(context.Background(), counting("laptop-07", seq))
				if err != nil {
					return err
				}
				switch res.Status {
				case Applied:
					mu.Lock()
					applied[seq]++
					mu.Unlock()
					seq++
				case Duplicate:
					seq = max(seq+1, res.NextSeq)
				case Gap:
					seq = res.NextSeq
				default:
					return fmt.Errorf("seq %d: %v %v", seq, res.Status, res.Err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= n; seq++ {
		if applied[seq] != 1 {
			t.Errorf("batch %d applied %d times, want once", seq, applied[seq])
		}
	}
	got := query(t, c, `SELECT (SELECT n FROM counter WHERE id = ascii('7')), (SELECT count(*) FROM seen), applied_seq, batches FROM pgcourier.source_progress`)
	if want := fmt.Sprintf("%d|%d|%d|%d", n, n, n, n); len(got) != 1 || got[0] != want {
		t.Errorf("counter|seen|applied seq|batches = %v, want %s", got, want)
	}
}

// TestSourcesLock checks that a batch waits while another session holds
// its source's lock, and that another source's batch does not.
func TestSourcesLock(t *testing.T) {
	c, w := upstream(t, counterTable)
	ctx := context.Background()
	holder := c.Connect(t)
	if _, err := holder.Exec(ctx, lockSQL, "laptop-07"); err != nil {
		t.Fatal(err)
	}
	done := make(chan Result, 1)
	go func() {
		res, err := w.Apply(ctx, counting("laptop-07", 1))
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	select {
	case res := <-done:
		t.Fatalf("Apply while the source's lock is held = %v, want it to wait", res.Status)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	wantStatus(t, w, counting("laptop-08", 1), Applied)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("another source's batch took %v while laptop-07 waited", took)
	}
	if _, err := holder.Exec(ctx, unlockSQL, "laptop-07"); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.Status != Applied {
			t.Errorf("Apply after the lock was released = %v (%v), want applied", res.Status, res.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Apply still waits after the lock was released")
	}
}

// TestSourcesInParallel applies two sources' streams at once, one writer,
// several connections.
func TestSourcesInParallel(t *testing.T) {
	c, w := upstream(t, counterTable)
	const n = 30
	var g errgroup.Group
	for _, source := range []string{"laptop-07", "laptop-08", "laptop-09"} {
		g.Go(func() error {
			for seq := uint64(1); seq <= n; seq++ {
				res, err := w.Apply(context.Background(), counting(source, seq))
				if err != nil {
					return err
				}
				if res.Status != Applied {
					return fmt.Errorf("%s seq %d: %v %v", source, seq, res.Status, res.Err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	got := query(t, c, `SELECT count(*), sum(applied_seq) FROM pgcourier.source_progress`)
	if want := fmt.Sprintf("3|%d", 3*n); got[0] != want {
		t.Errorf("progress rows|sum of seqs = %s, want %s", got[0], want)
	}
}
