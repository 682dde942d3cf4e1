package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
)

const subjectTable = `CREATE TABLE subject (id int PRIMARY KEY, name text, note text)`

var subject = relation("subject", "id integer key", "name text", "note text")

func TestApplyInOrder(t *testing.T) {
	c, w := upstream(t, subjectTable)
	b1 := batch("laptop-07", 1,
		txn(at(1), ins(subject, "1", "ann", "NULL"), ins(subject, "2", "bob", "")),
		txn(at(2), upd(subject, "1", "anne", "NULL")),
	)
	res := wantStatus(t, w, b1, Applied)
	if res.AppliedSeq != 1 || res.NextSeq != 2 || res.Changes != 3 || res.Conflicts != 0 {
		t.Errorf("Apply(seq 1) = %+v, want applied seq 1, next 2, 3 changes, no conflicts", res)
	}
	b2 := batch("laptop-07", 2,
		txn(at(3), updOld(subject, []string{"3", "bob", ""}, []string{"2", "NULL", "NULL"})),
		txn(at(4), del(subject, "1", "NULL", "NULL")),
	)
	wantStatus(t, w, b2, Applied)

	got := query(t, c, `SELECT id, name, note FROM subject ORDER BY id`)
	if diff := cmp.Diff([]string{"3|bob|"}, got); diff != "" {
		t.Errorf("subject after two batches (-want +got):\n%s", diff)
	}
	// Postgres recorded the source and its commit time for the row version.
	got = query(t, c, `SELECT o.roname, x.timestamp
	                     FROM subject s, pg_xact_commit_timestamp_origin(s.xmin) x
	                     JOIN pg_replication_origin o ON o.roident = x.roident`)
	if diff := cmp.Diff([]string{"pgcourier:laptop-07|2026-05-01 08:00:04+00"}, got); diff != "" {
		t.Errorf("origin and commit time of the row (-want +got):\n%s", diff)
	}
	got = query(t, c, `SELECT source, epoch, applied_seq, last_commit_time, batches, rows, conflicts FROM pgcourier.source_progress`)
	if diff := cmp.Diff([]string{"laptop-07|1|2|2026-05-01 08:00:04+00|2|5|0"}, got); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}
	if got := query(t, c, `SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = 'pgcourier:laptop-07'`); len(got) != 1 || got[0] != b2.Transactions[1].CommitLSN.String() {
		t.Errorf("origin remote_lsn = %v, want the batch's last commit LSN %s", got, b2.Transactions[1].CommitLSN)
	}
}

func TestDuplicateAndGap(t *testing.T) {
	c, w := upstream(t, subjectTable)
	b1 := batch("laptop-07", 1, txn(at(1), ins(subject, "1", "ann", "NULL")))
	wantStatus(t, w, b1, Applied)
	before := query(t, c, `SELECT s.*, s.xmin FROM subject s`)

	tests := []struct {
		name    string
		b       *pgcourier.Batch
		status  Status
		applied uint64
		next    uint64
	}{
		{"same batch again", b1, Duplicate, 1, 2},
		{"same identity, other contents", batch("laptop-07", 1, txn(at(1), ins(subject, "9", "x", "NULL"))), Duplicate, 1, 2},
		{"gap", batch("laptop-07", 3, txn(at(3), ins(subject, "3", "c", "NULL"))), Gap, 1, 2},
		{"new source starts after 1", batch("laptop-08", 2, txn(at(3), ins(subject, "4", "d", "NULL"))), Gap, 0, 1},
		{"new epoch starts after 1", &pgcourier.Batch{Source: "laptop-07", Epoch: 2, Seq: 5}, Gap, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := wantStatus(t, w, tt.b, tt.status)
			if res.AppliedSeq != tt.applied || res.NextSeq != tt.next {
				t.Errorf("Apply = applied %d, next %d; want %d, %d", res.AppliedSeq, res.NextSeq, tt.applied, tt.next)
			}
		})
	}
	if diff := cmp.Diff(before, query(t, c, `SELECT s.*, s.xmin FROM subject s`)); diff != "" {
		t.Errorf("table changed by duplicates and gaps (-before +after):\n%s", diff)
	}
	if got := query(t, c, `SELECT applied_seq, batches FROM pgcourier.source_progress`); !cmp.Equal(got, []string{"1|1"}) {
		t.Errorf("progress = %v, want applied seq 1 after 1 batch", got)
	}
}

func TestEpochs(t *testing.T) {
	c, w := upstream(t, subjectTable)
	e1 := func(seq uint64, id string) *pgcourier.Batch {
		return &pgcourier.Batch{Source: "laptop-07", Epoch: 100, Seq: seq, Transactions: []pgcourier.Transaction{txn(at(int(seq)), ins(subject, id, "e1", "NULL"))}}
	}
	e2 := func(seq uint64, id string) *pgcourier.Batch {
		return &pgcourier.Batch{Source: "laptop-07", Epoch: 200, Seq: seq, Transactions: []pgcourier.Transaction{txn(at(10+int(seq)), ins(subject, id, "e2", "NULL"))}}
	}
	wantStatus(t, w, e1(1, "1"), Applied)
	wantStatus(t, w, e1(2, "2"), Applied)
	wantStatus(t, w, e2(2, "20"), Gap)
	wantStatus(t, w, e2(1, "1"), Applied) // the same source re-sends its row in the new epoch
	wantStatus(t, w, e2(2, "21"), Applied)
	wantStatus(t, w, e1(2, "2"), Duplicate)
	res := wantStatus(t, w, e1(3, "3"), Refused)
	if !errors.Is(res.Err, ErrStaleEpoch) {
		t.Errorf("Apply(old epoch, seq after the switch) err = %v, want ErrStaleEpoch", res.Err)
	}
	want := []string{"1|e2", "2|e1", "21|e2"}
	if diff := cmp.Diff(want, query(t, c, `SELECT id, name FROM subject ORDER BY id`)); diff != "" {
		t.Errorf("subject (-want +got):\n%s", diff)
	}
	want = []string{"laptop-07|100|2|t", "laptop-07|200|NULL|f"}
	if diff := cmp.Diff(want, query(t, c, `SELECT source, epoch, final_seq, ended_at IS NOT NULL FROM pgcourier.source_epochs ORDER BY epoch`)); diff != "" {
		t.Errorf("epochs (-want +got):\n%s", diff)
	}
	if got := query(t, c, `SELECT epoch, applied_seq FROM pgcourier.source_progress`); !cmp.Equal(got, []string{"200|2"}) {
		t.Errorf("progress = %v, want epoch 200 seq 2", got)
	}
}

func TestOwnSourceRefused(t *testing.T) {
	c, w := upstream(t, subjectTable)
	res := wantStatus(t, w, batch(testNode, 1, txn(at(1), ins(subject, "1", "ann", "NULL"))), Refused)
	if !errors.Is(res.Err, ErrOwnSource) {
		t.Errorf("Apply(own batch) err = %v, want ErrOwnSource", res.Err)
	}
	if got := query(t, c, `SELECT count(*) FROM subject`); got[0] != "0" {
		t.Errorf("subject has %s rows after a refused batch, want 0", got[0])
	}
}

func TestInvalidBatchRefused(t *testing.T) {
	_, w := upstream(t, subjectTable)
	tests := []struct {
		name string
		b    *pgcourier.Batch
	}{
		{"nil", nil},
		{"seq 0", batch("laptop-07", 0)},
		{"bad source", batch("Laptop 7", 1)},
		{"no relation", batch("laptop-07", 1, txn(at(1), pgcourier.Change{Op: pgcourier.OpInsert}))},
		{"short row", batch("laptop-07", 1, txn(at(1), ins(subject, "1")))},
		{"insert with unchanged", batch("laptop-07", 1, txn(at(1), ins(subject, "1", "UNCHANGED", "x")))},
		{"delete without old", batch("laptop-07", 1, txn(at(1), pgcourier.Change{Rel: subject, Op: pgcourier.OpDelete}))},
		{"unknown op", batch("laptop-07", 1, txn(at(1), pgcourier.Change{Rel: subject, Op: 'X', New: vals("1", "a", "b")}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := w.Apply(context.Background(), tt.b)
			if err != nil || res.Status != Refused || !errors.Is(res.Err, ErrInvalid) {
				t.Errorf("Apply = %v, %v (%v); want Refused with ErrInvalid", res.Status, err, res.Err)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		p       progress
		epoch   int64
		seq     uint64
		want    verdict
		applied uint64
	}{
		{progress{final: -1}, 5, 1, vApply, 0},
		{progress{final: -1}, 5, 2, vGap, 0},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 5, 3, vDuplicate, 3},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 5, 4, vApply, 3},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 5, 6, vGap, 3},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 6, 1, vApply, 0},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 6, 2, vGap, 0},
		{progress{known: true, epoch: 5, applied: 3, final: 9}, 4, 9, vDuplicate, 9},
		{progress{known: true, epoch: 5, applied: 3, final: 9}, 4, 10, vStale, 9},
		{progress{known: true, epoch: 5, applied: 3, final: -1}, 4, 1, vStale, 0},
	}
	for _, tt := range tests {
		v, applied := decide(tt.p, tt.epoch, tt.seq)
		if v != tt.want || applied != tt.applied {
			t.Errorf("decide(%+v, %d, %d) = %v, %d; want %v, %d", tt.p, tt.epoch, tt.seq, v, applied, tt.want, tt.applied)
		}
	}
}

func TestProgress(t *testing.T) {
	_, w := upstream(t, subjectTable)
	ctx := context.Background()
	p, err := w.Progress(ctx, "laptop-07")
	if err != nil || p.AppliedSeq != 0 {
		t.Fatalf("Progress before any batch = %+v, %v; want seq 0", p, err)
	}
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(subject, "1", "a", "NULL"))), Applied)
	p, err = w.Progress(ctx, "laptop-07")
	if err != nil || p.AppliedSeq != 1 || p.Epoch != 1 || p.Blocked != "" {
		t.Errorf("Progress = %+v, %v; want epoch 1 seq 1, not blocked", p, err)
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no node", Options{}, "node id"},
		{"bad policy", Options{Node: "central", Policy: "newest"}, "policy"},
		{"bad table", Options{Node: "central", Policies: map[string]Policy{"subject": Reject}}, "schema.table"},
		{"bad truncate source", Options{Node: "central", AllowTruncate: []string{"Bad Id"}}, "truncate"},
	}
	cfg, err := pgx.ParseConfig("postgres://pgcourier@127.0.0.1:5432/edc")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(cfg, tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%+v) = %v, want an error about %s", tt.opts, err, tt.want)
			}
		})
	}
	if _, err := New(nil, Options{Node: "central"}); err == nil {
		t.Errorf("New(nil config) = nil error, want one")
	}
}
