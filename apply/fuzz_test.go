package apply

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

const fuzzTables = `
CREATE TABLE fz_keyed (id int PRIMARY KEY, n int, s text, j jsonb, at timestamptz);
CREATE TABLE fz_full (a int, b text);
ALTER TABLE fz_full REPLICA IDENTITY FULL;
CREATE TABLE fz_uniq (id int PRIMARY KEY, code text UNIQUE NOT NULL);
CREATE TABLE fz_parent (id int PRIMARY KEY);
CREATE TABLE fz_child (id int PRIMARY KEY, p int REFERENCES fz_parent DEFERRABLE);`

// fuzzRelations are the relations a fuzzed batch may use: the tables as
// they are, a table that does not exist, and relations with a column
// upstream lacks.
var fuzzRelations = []*pgcourier.Relation{
	relation("fz_keyed", "id integer key", "n integer", "s text", "j jsonb", "at timestamptz"),
	relation("fz_keyed", "s text", "id integer key"),
	relation("fz_full", "a integer key", "b text key"),
	relation("fz_uniq", "id integer key", "code text"),
	relation("fz_parent", "id integer key"),
	relation("fz_child", "id integer key", "p integer"),
}

// fuzzBadRelations are chosen rarely: each blocks its batch.
var fuzzBadRelations = []*pgcourier.Relation{
	relation("fz_missing", "id integer key"),
	relation("fz_keyed", "id integer key", "nope text"),
}

var fuzzTexts = []string{"1", "2", "3", "-7", "0", "abc", "", "{}", `{"a": [1, 2]}`, "2026-01-01 00:00:00+00", "NaN", "9999999999", "x y", "1.5"}

// fuzzTyped are values of the right type, by the type's name.
var fuzzTyped = map[string][]string{
	"integer":     {"1", "2", "3", "4", "-7", "0"},
	"text":        {"a", "b", "c", "", "NULL", "x y"},
	"jsonb":       {"{}", `{"a": [1, 2]}`, "[]", "1"},
	"timestamptz": {"2026-01-01 00:00:00+00", "2026-01-01 01:00:00+01", "infinity"},
}

// fuzzReader hands out the fuzz input one decision at a time, zeros when
// it runs out.
type fuzzReader struct{ data []byte }

func (r *fuzzReader) byte() byte {
	if len(r.data) == 0 {
		return 0
	}
	b := r.data[0]
	r.data = r.data[1:]
	return b
}

func (r *fuzzReader) n(max int) int { return int(r.byte()) % max }

func (r *fuzzReader) value(typ string, allowUnchanged bool) pgcourier.Value {
	switch k := r.n(40); {
	case k == 0:
		return null
	case k == 1 && allowUnchanged:
		return unchanged
	case k == 2:
		// Raw bytes: anything at all, invalid text included.
		n := r.n(8)
		var b []byte
		for range n {
			b = append(b, r.byte())
		}
		return tv(string(b))
	case k == 3:
		return tv(fuzzTexts[r.n(len(fuzzTexts))])
	}
	vs := fuzzTyped[typ]
	return tv(vs[r.n(len(vs))])
}

func (r *fuzzReader) image(rel *pgcourier.Relation, allowUnchanged bool) []pgcourier.Value {
	vs := make([]pgcourier.Value, len(rel.Columns))
	for i := range vs {
		vs[i] = r.value(rel.Columns[i].Type, allowUnchanged)
	}
	return vs
}

// fuzzBatch builds a valid batch of source from data: up to 40 changes of
// any kind to the fuzz relations, in up to 40 transactions.
func fuzzBatch(data []byte, source string, seq uint64) *pgcourier.Batch {
	r := &fuzzReader{data: data}
	b := &pgcourier.Batch{Source: source, Epoch: 1, Seq: seq}
	tx := pgcourier.Transaction{CommitLSN: 1, CommitTime: at(r.n(100))}
	for range r.n(41) {
		if len(r.data) == 0 {
			break
		}
		rel := fuzzRelations[r.n(len(fuzzRelations))]
		if r.n(64) == 0 {
			rel = fuzzBadRelations[r.n(len(fuzzBadRelations))]
		}
		var ch pgcourier.Change
		switch r.n(5) {
		case 0, 1:
			ch = pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: r.image(rel, false)}
		case 2:
			ch = pgcourier.Change{Rel: rel, Op: pgcourier.OpUpdate, New: r.image(rel, true)}
			if r.n(3) == 0 {
				ch.Old = r.image(rel, false)
			}
		case 3:
			ch = pgcourier.Change{Rel: rel, Op: pgcourier.OpDelete, Old: r.image(rel, false)}
		case 4:
			ch = pgcourier.Change{Rel: rel, Op: pgcourier.OpTruncate}
		}
		tx.Changes = append(tx.Changes, ch)
		if r.n(4) == 0 {
			b.Transactions = append(b.Transactions, tx)
			tx = pgcourier.Transaction{CommitLSN: tx.CommitLSN + 1, CommitTime: at(r.n(100))}
		}
	}
	if len(tx.Changes) > 0 {
		b.Transactions = append(b.Transactions, tx)
	}
	return b
}

// FuzzApply applies arbitrary batches: Apply never panics, never returns an
// infrastructure error for a batch, and a batch that is not applied changes
// nothing but pgcourier.blocked. Some batches are parts of a larger
// transaction: they change no table until a batch ends it.
func FuzzApply(f *testing.F) {
	c, w := upstream(f, fuzzTables)
	for _, seed := range [][]byte{
		{},
		{0, 0, 5, 0, 0, 0, 1, 1, 1, 1, 1},
		{0, 1, 20, 0, 0, 3, 5, 5, 5, 5, 2, 0, 2, 0, 1, 0, 1, 1, 1, 3, 2, 2, 2},
		{0, 0, 10, 2, 0, 0, 1, 4, 2, 2, 3, 2, 1, 2, 1, 2, 0, 2, 2, 4, 0, 4},
		{1, 0, 30, 6, 0, 0, 1, 7, 1, 3, 1},
		{0, 0, 6, 3, 0, 0, 0, 1, 3, 0, 0, 2, 3, 0xff, 0xfe, 0x00, 1, 1},
		{0, 0, 12, 5, 0, 0, 0, 5, 3, 0, 4, 1, 1, 0, 4, 0, 0, 0, 1, 0, 2, 1},
		{2, 0, 3, 0, 3, 0, 5, 1},
		{3, 0, 3, 0, 3, 0, 5, 1},
		{0, 0, 9, 2, 0, 0, 1, 1, 2, 1, 1, 2, 2, 0, 2, 1, 0, 1, 2, 1, 1, 0, 4, 0},
	} {
		f.Add(seed)
	}
	// And some longer ones, the same on every run.
	rnd := rand.New(rand.NewPCG(7, 42))
	for range 30 {
		seed := make([]byte, 50+rnd.IntN(400))
		for i := range seed {
			seed[i] = byte(rnd.IntN(256))
		}
		seed[1] = 0                     // the next batch
		seed[3] = byte(1 + rnd.IntN(8)) // of a few changes: most seeds apply
		f.Add(seed)
	}
	ctx := context.Background()
	sources := []string{"laptop-a", "laptop-b"}
	state := func(t *testing.T) []string {
		t.Helper()
		return query(t, c, `
			SELECT 'keyed', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM fz_keyed x
			UNION ALL SELECT 'full', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM fz_full x
			UNION ALL SELECT 'uniq', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM fz_uniq x
			UNION ALL SELECT 'parent', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM fz_parent x
			UNION ALL SELECT 'child', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM fz_child x
			UNION ALL SELECT 'progress', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM pgcourier.source_progress x
			UNION ALL SELECT 'conflicts', count(*)::text FROM pgcourier.conflicts`)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &fuzzReader{data: data}
		source := sources[r.n(len(sources))]
		p, err := w.Progress(ctx, source)
		if err != nil {
			t.Fatal(err)
		}
		seq := p.AppliedSeq + 1
		switch r.n(8) {
		case 1:
			seq = max(p.AppliedSeq, 1) // a duplicate once there is one
		case 2:
			seq += 1 // a gap
		}
		continued := r.n(6) == 0 // a part of a larger transaction
		b := fuzzBatch(r.data, source, seq)
		b.Continued = continued && len(b.Transactions) > 0
		before := state(t)
		var staged int
		fmt.Sscan(query(t, c, `SELECT coalesce(sum(rows), 0) FROM pgcourier.staged WHERE source = $1 AND epoch = 1`, source)[0], &staged)
		res, err := w.Apply(ctx, b)
		if err != nil {
			t.Fatalf("Apply(%d changes) error: %v", b.Rows(), err)
		}
		after := state(t)
		t.Logf("%v: %d changes applied, %d conflicts of %d (%v)", res.Status, res.Changes, res.Conflicts, b.Rows(), res.Err)
		switch res.Status {
		case Applied:
			// The batch that ends a transaction in parts applies the parts
			// staged before it too.
			if res.AppliedSeq != seq || res.Changes+res.Conflicts > b.Rows()+staged {
				t.Errorf("Apply = %+v for seq %d of %d changes, %d staged before it", res, seq, b.Rows(), staged)
			}
			if p, err := w.Progress(ctx, source); err != nil || p.AppliedSeq != seq {
				t.Errorf("progress after Applied = %+v, %v; want seq %d", p, err, seq)
			}
			if b.Continued {
				// Staged: nothing of it shows before its transaction ends.
				if diff := cmp.Diff(before[:5], after[:5]); diff != "" {
					t.Errorf("a continued batch changed the tables (-before +after):\n%s", diff)
				}
			}
		case Blocked, Duplicate, Gap, Refused:
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("Apply = %v (%v), yet the database changed (-before +after):\n%s", res.Status, res.Err, diff)
			}
		default:
			t.Errorf("Apply = %v", res.Status)
		}
		if res.Status == Blocked && fmt.Sprint(res.Err) == "" {
			t.Errorf("Blocked without an error")
		}
	})
}
