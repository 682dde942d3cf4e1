package apply

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// parts returns the batches seq, seq+1 … of one source transaction
// committed at when, split after the changes counted in sizes; the last
// batch holds the rest of the changes and then the transactions in after.
func parts(seq uint64, when pgcourier.Transaction, sizes []int, after ...pgcourier.Transaction) []*pgcourier.Batch {
	var bs []*pgcourier.Batch
	rest := when.Changes
	for _, n := range sizes {
		part := when
		part.Changes = rest[:n]
		rest = rest[n:]
		b := batch("laptop-07", seq, part)
		b.Continued = true
		bs = append(bs, b)
		seq++
	}
	last := when
	last.Changes = rest
	return append(bs, batch("laptop-07", seq, append([]pgcourier.Transaction{last}, after...)...))
}

func TestApplyParts(t *testing.T) {
	c, w := upstream(t, subjectTable)
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(subject, "0", "zero", "NULL"))), Applied)

	big := txn(at(2),
		ins(subject, "1", "ann", "NULL"), ins(subject, "2", "bob", "NULL"),
		upd(subject, "0", "zero", "seen"), ins(subject, "3", "cy", "NULL"),
		del(subject, "2", "NULL", "NULL"), upd(subject, "1", "anne", "NULL"))
	bs := parts(2, big, []int{2, 2}, txn(at(3), ins(subject, "4", "dee", "NULL")))

	for _, b := range bs[:2] {
		wantStatus(t, w, b, Applied)
		if got := query(t, c, `SELECT id, name, note FROM subject ORDER BY id`); !cmp.Equal(got, []string{"0|zero|NULL"}) {
			t.Fatalf("after part seq %d the table holds %v, want only what seq 1 wrote", b.Seq, got)
		}
	}
	if got := query(t, c, `SELECT seq, rows FROM pgcourier.staged ORDER BY seq`); !cmp.Equal(got, []string{"2|2", "3|2"}) {
		t.Errorf("staged parts = %v, want seq 2 and 3 of two rows each", got)
	}
	if st := sourceState(t, c, "laptop-07"); st.Staged == nil || st.Staged.Parts != 2 || st.Staged.Rows != 4 || st.Abandoned != 0 {
		t.Errorf("ListSources: staged %+v, %d abandoned; want 2 parts of 4 rows, none abandoned", st.Staged, st.Abandoned)
	}
	wantStatus(t, w, bs[0], Duplicate)
	if res := wantStatus(t, w, bs[2], Applied); res.Changes != 7 {
		t.Errorf("the last part applied %d changes, want all 7 of the transaction and the one after it", res.Changes)
	}
	want := []string{"0|zero|seen", "1|anne|NULL", "3|cy|NULL", "4|dee|NULL"}
	if got := query(t, c, `SELECT id, name, note FROM subject ORDER BY id`); !cmp.Equal(got, want) {
		t.Errorf("subject = %v, want %v", got, want)
	}
	// One upstream transaction, with the source's origin and the commit
	// time of the batch's last transaction.
	got := query(t, c, `SELECT count(DISTINCT xmin::text), min(o.roname), min(x.timestamp) = $1
		FROM subject, pg_xact_commit_timestamp_origin(subject.xmin) x JOIN pg_replication_origin o ON o.roident = x.roident
		WHERE id > 0`, at(3))
	if !cmp.Equal(got, []string{"1|pgcourier:laptop-07|t"}) {
		t.Errorf("rows of the parted transaction: %v, want one transaction by pgcourier:laptop-07 at the last commit time", got)
	}
	if got := query(t, c, `SELECT count(*) FROM pgcourier.staged`); got[0] != "0" {
		t.Errorf("%s parts left staged, want none", got[0])
	}
	if got := query(t, c, `SELECT applied_seq, batches, rows FROM pgcourier.source_progress`); !cmp.Equal(got, []string{"4|4|8"}) {
		t.Errorf("progress = %v, want seq 4, 4 batches, 8 rows", got)
	}
	wantStatus(t, w, bs[2], Duplicate)
	if st := sourceState(t, c, "laptop-07"); st.Staged != nil {
		t.Errorf("ListSources after the last part: staged %+v, want none", st.Staged)
	}

	// A part whose epoch a resync replaces before its transaction ends is
	// kept, never applied, and counted.
	part := batch("laptop-07", 5, txn(at(4), ins(subject, "5", "eve", "NULL")))
	part.Continued = true
	wantStatus(t, w, part, Applied)
	next := batch("laptop-07", 1, txn(at(5), ins(subject, "6", "fay", "NULL")))
	next.Epoch = 2
	wantStatus(t, w, next, Applied)
	if got := query(t, c, `SELECT id FROM subject WHERE id >= 5`); !cmp.Equal(got, []string{"6"}) {
		t.Errorf("rows of ids 5 and up = %v, want only 6: a part of a replaced epoch is never applied", got)
	}
	if st := sourceState(t, c, "laptop-07"); st.Staged != nil || st.Abandoned != 1 {
		t.Errorf("ListSources after a new epoch: staged %+v, %d abandoned; want none staged, 1 abandoned", st.Staged, st.Abandoned)
	}
}

// sourceState returns what ListSources says of source.
func sourceState(t *testing.T, c *pgtest.Cluster, source string) SourceState {
	t.Helper()
	ss, err := ListSources(context.Background(), c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Source == source {
			return s
		}
	}
	t.Fatalf("ListSources has no %s: %+v", source, ss)
	return SourceState{}
}

// TestApplyPartsAtomic checks that a transaction in parts takes effect
// whole or not at all: a change the upstream refuses in any part blocks
// the batch that ends it, with nothing applied, and parking that batch
// parks every part.
func TestApplyPartsAtomic(t *testing.T) {
	for name, bad := range map[string]int{"in a staged part": 1, "in the last part": 5} {
		t.Run(name, func(t *testing.T) {
			c, w := upstream(t, `CREATE TABLE subject (id int PRIMARY KEY CHECK (id < 100), name text, note text)`)
			ids := []string{"1", "2", "3", "4", "5", "6"}
			ids[bad] = "500"
			var chs []pgcourier.Change
			for _, id := range ids {
				chs = append(chs, ins(subject, id, "n"+id, "NULL"))
			}
			bs := parts(1, txn(at(1), chs...), []int{2, 2})
			wantStatus(t, w, bs[0], Applied)
			wantStatus(t, w, bs[1], Applied)
			res := wantStatus(t, w, bs[2], Blocked)
			var be *BlockedError
			if !errors.As(res.Err, &be) || be.Table != "public.subject" || be.SQLState != "23514" {
				t.Errorf("blocked with %v, want a check violation on public.subject", res.Err)
			}
			if got := query(t, c, `SELECT count(*) FROM subject`); got[0] != "0" {
				t.Errorf("%s rows applied from a blocked transaction, want none", got[0])
			}
			if got := query(t, c, `SELECT seq FROM pgcourier.blocked`); !cmp.Equal(got, []string{"3"}) {
				t.Errorf("blocked = %v, want the batch that ends the transaction, seq 3", got)
			}

			ctx := context.Background()
			if err := w.Park(ctx, "laptop-07", 1, 2, bs[1], "part"); !errors.Is(err, ErrNotNext) {
				t.Errorf("Park(a part) = %v, want ErrNotNext", err)
			}
			if err := w.Park(ctx, "laptop-07", 1, 3, bs[2], "check fails"); err != nil {
				t.Fatalf("Park: %v", err)
			}
			got := query(t, c, `SELECT seq, position, incoming->>'id' FROM pgcourier.conflicts WHERE rule = 'parked' ORDER BY seq, position`)
			want := []string{"1|0|" + ids[0], "1|1|" + ids[1], "2|0|" + ids[2], "2|1|" + ids[3], "3|0|" + ids[4], "3|1|" + ids[5]}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parked changes (-want +got):\n%s", diff)
			}
			if got := query(t, c, `SELECT applied_seq, conflicts FROM pgcourier.source_progress`); !cmp.Equal(got, []string{"3|6"}) {
				t.Errorf("progress = %v, want seq 3 with 6 conflicts", got)
			}
			if got := query(t, c, `SELECT count(*) FROM pgcourier.staged`); got[0] != "0" {
				t.Errorf("%s parts left staged after Park, want none", got[0])
			}
			wantStatus(t, w, batch("laptop-07", 4, txn(at(2), ins(subject, "7", "n7", "NULL"))), Applied)
		})
	}
}

// TestApplyPartsRegroup makes the optimistic plan fail in a staged part,
// on a unique swap that only source order satisfies: the whole
// transaction is applied again cautiously.
func TestApplyPartsRegroup(t *testing.T) {
	c, w := upstream(t, `CREATE TABLE tag (id int PRIMARY KEY, code text UNIQUE)`)
	tag := relation("tag", "id integer key", "code text")
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(tag, "1", "a"), ins(tag, "2", "b"))), Applied)
	bs := parts(2, txn(at(2),
		upd(tag, "1", "tmp"), upd(tag, "2", "a"), upd(tag, "1", "b"), // swap a and b
		ins(tag, "3", "c")), []int{3})
	wantStatus(t, w, bs[0], Applied)
	wantStatus(t, w, bs[1], Applied)
	if got := query(t, c, `SELECT id, code FROM tag ORDER BY id`); !cmp.Equal(got, []string{"1|b", "2|a", "3|c"}) {
		t.Errorf("tag = %v, want the codes swapped and 3 added", got)
	}
	if got := query(t, c, `SELECT count(*) FROM pgcourier.conflicts`); got[0] != "0" {
		t.Errorf("%s conflicts, want none", got[0])
	}
}

// TestApplyPartsBroken checks that a batch that does not go on with the
// staged transaction blocks, naming the part, and changes nothing.
func TestApplyPartsBroken(t *testing.T) {
	part := func(seq uint64, when int) *pgcourier.Batch {
		b := batch("laptop-07", seq, txn(at(when), ins(subject, fmt.Sprint(seq), "ann", "NULL")))
		b.Continued = true
		return b
	}
	for name, tc := range map[string]struct {
		parts []*pgcourier.Batch
		last  *pgcourier.Batch
		named string
	}{
		"empty":                {[]*pgcourier.Batch{part(1, 1)}, batch("laptop-07", 2), "staged part seq 1"},
		"other transaction":    {[]*pgcourier.Batch{part(1, 1)}, batch("laptop-07", 2, txn(at(9), ins(subject, "9", "bob", "NULL"))), "staged part seq 1"},
		"parts of two of them": {[]*pgcourier.Batch{part(1, 1), part(2, 2)}, batch("laptop-07", 3, txn(at(2), ins(subject, "9", "bob", "NULL"))), "staged part seq 2"},
	} {
		t.Run(name, func(t *testing.T) {
			c, w := upstream(t, subjectTable)
			for _, p := range tc.parts {
				wantStatus(t, w, p, Applied)
			}
			res := wantStatus(t, w, tc.last, Blocked)
			if !strings.Contains(fmt.Sprint(res.Err), tc.named) {
				t.Errorf("blocked with %v, want %q named", res.Err, tc.named)
			}
			if got := query(t, c, `SELECT count(*) FROM subject`); got[0] != "0" {
				t.Errorf("%s rows applied, want none", got[0])
			}
		})
	}
}

// TestParkMissingPart parks a transaction one of whose staged parts is
// gone: a row records the missing part, the others are parked whole.
func TestParkMissingPart(t *testing.T) {
	c, w := upstream(t, subjectTable)
	bs := parts(1, txn(at(1), ins(subject, "1", "ann", "NULL"), ins(subject, "2", "bob", "NULL"), ins(subject, "3", "cy", "NULL")), []int{1, 1})
	wantStatus(t, w, bs[0], Applied)
	wantStatus(t, w, bs[1], Applied)
	c.Exec(t, `DELETE FROM pgcourier.staged WHERE seq = 1`)
	wantStatus(t, w, bs[2], Blocked)
	if err := w.Park(context.Background(), "laptop-07", 1, 3, bs[2], "gone"); err != nil {
		t.Fatalf("Park: %v", err)
	}
	got := query(t, c, `SELECT seq, op, incoming->>'id', detail FROM pgcourier.conflicts ORDER BY seq, position`)
	want := []string{"1|batch|NULL|gone (staged part 1 is missing) (the batch's contents were not at hand)", "2|insert|2|gone", "3|insert|3|gone"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("conflicts after Park (-want +got):\n%s", diff)
	}
	if got := query(t, c, `SELECT applied_seq FROM pgcourier.source_progress`); got[0] != "3" {
		t.Errorf("applied seq after Park = %s, want 3", got[0])
	}
}

// TestPartsPostgresCrash crashes Postgres while the batch that ends a
// transaction in parts has applied every staged part and waits on a lock
// for its own change: after recovery none of the transaction shows, its
// parts are still staged, and applying the batch again applies all of it.
func TestPartsPostgresCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c, w := upstream(t, `CREATE TABLE tag (id int PRIMARY KEY, code text)`+"; "+subjectTable)
	pgtest.RequireLocal(t, c)
	ctx := context.Background()
	tag := relation("tag", "id integer key", "code text")
	var chs []pgcourier.Change
	for i := range 3000 {
		chs = append(chs, ins(subject, fmt.Sprint(i), "n", "NULL"))
	}
	chs = append(chs, ins(tag, "1", "last"))
	bs := parts(1, txn(at(1), chs...), []int{1000, 1000, 1000})
	for _, b := range bs[:3] {
		wantStatus(t, w, b, Applied)
	}

	locker := c.Connect(t)
	if _, err := locker.Exec(ctx, `BEGIN; LOCK TABLE tag IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Apply(ctx, bs[3])
		done <- err
	}()
	waitForLockWait(t, c, locker)
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Error("Apply returned no error while its server crashed")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(t, c, `SELECT (SELECT count(*) FROM subject), (SELECT count(*) FROM tag), (SELECT count(*) FROM pgcourier.staged)`); !cmp.Equal(got, []string{"0|0|3"}) {
		t.Fatalf("after the crash: subject, tag rows and staged parts = %v, want 0|0|3", got)
	}
	wantStatus(t, w, bs[3], Applied)
	if got := query(t, c, `SELECT (SELECT count(*) FROM subject), (SELECT count(*) FROM tag), (SELECT count(*) FROM pgcourier.staged)`); !cmp.Equal(got, []string{"3000|1|0"}) {
		t.Errorf("after applying again: subject, tag rows and staged parts = %v, want 3000|1|0", got)
	}
}

// The parts stream: one transaction of partsStreamRows inserts into events
// in partsStreamBatches batches (all but the last continued), then one
// ordinary batch of 100 rows.
const (
	partsStreamRows    = 200_000
	partsStreamBatches = 10
)

// partsStream returns batch seq of the parts stream.
func partsStream(seq uint64) *pgcourier.Batch {
	per := partsStreamRows / partsStreamBatches
	if seq > partsStreamBatches {
		var chs []pgcourier.Change
		for i := range 100 {
			chs = append(chs, ins(events, fmt.Sprint(partsStreamRows+i), "2", "after"))
		}
		b := batch(crashSource, seq, txn(at(2), chs...))
		return b
	}
	var chs []pgcourier.Change
	for i := range per {
		id := (int(seq)-1)*per + i
		chs = append(chs, ins(events, fmt.Sprint(id), "1", "part "+fmt.Sprint(seq)))
	}
	b := batch(crashSource, seq, txn(at(1), chs...))
	b.Continued = seq < partsStreamBatches
	return b
}

// runPartsChild applies the parts stream to db from where it stands, then
// exits 0.
func runPartsChild(db string) int { return applyStream(db, partsStream, partsStreamBatches+1) }

// checkPartsStream fails the test unless the transaction in parts is wholly
// applied (once its last batch is) or not at all, and returns the seq
// applied.
func checkPartsStream(t *testing.T, c *pgtest.Cluster) uint64 {
	t.Helper()
	got := query(t, c, `
		SELECT coalesce((SELECT applied_seq FROM pgcourier.source_progress WHERE source = $1), 0),
		       (SELECT count(*) FROM events WHERE v = 1), (SELECT count(*) FROM events WHERE v = 2)`, crashSource)
	var n, big, after uint64
	fmt.Sscanf(got[0], "%d|%d|%d", &n, &big, &after)
	wantBig, wantAfter := uint64(0), uint64(0)
	if n >= partsStreamBatches {
		wantBig = partsStreamRows
	}
	if n > partsStreamBatches {
		wantAfter = 100
	}
	if big != wantBig || after != wantAfter {
		t.Fatalf("at applied seq %d: %d rows of the transaction in parts and %d after it; want %d and %d", n, big, after, wantBig, wantAfter)
	}
	return n
}

// TestApplierKill9Parts kills the applying process with SIGKILL at random
// moments while it stages a transaction's parts and applies them, then
// three times while the last batch applies every part: after every kill
// the transaction shows wholly or not at all.
func TestApplierKill9Parts(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	migrate(t, c)
	c.Exec(t, eventsTable)
	kills, final := 0, 0
	for kills < 10 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+c.URL(), partsChildEnv+"=1")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if kills < 7 {
			time.Sleep(time.Duration(5+rand.IntN(300)) * time.Millisecond)
		} else {
			// Once every part is staged, the last batch applies them all.
			for checkPartsStream(t, c) < partsStreamBatches-1 {
				select {
				case err := <-done:
					t.Fatalf("applying process ended before it staged every part: %v", err)
				case <-time.After(2 * time.Millisecond):
				}
			}
			time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		if err := <-done; err == nil {
			t.Fatalf("kill %d came after the applying process had finished; make the stream larger", kills+1)
		}
		kills++
		if checkPartsStream(t, c) == partsStreamBatches-1 {
			final++
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+c.URL(), partsChildEnv+"=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("applying process failed: %v", err)
	}
	if n := checkPartsStream(t, c); n != partsStreamBatches+1 {
		t.Errorf("stream ended at seq %d, want %d", n, partsStreamBatches+1)
	}
	t.Logf("%d kills, %d of them with every part staged and the transaction not applied", kills, final)
	if final < 3 {
		t.Errorf("only %d kills while the last batch applied the parts; the test proves little", final)
	}
}
