package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

func TestParseTimestamptz(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2026-11-26 00:05:01.123456+00", time.Date(2026, 11, 26, 0, 5, 1, 123456000, time.UTC)},
		{"2026-11-26 00:05:01.5+00", time.Date(2026, 11, 26, 0, 5, 1, 500000000, time.UTC)},
		{"2026-11-26 00:05:01+00", time.Date(2026, 11, 26, 0, 5, 1, 0, time.UTC)},
		{"2026-11-26 02:05:01.000001+02", time.Date(2026, 11, 26, 0, 5, 1, 1000, time.UTC)},
		{"2026-11-26 05:35:01.25+05:30", time.Date(2026, 11, 26, 0, 5, 1, 250000000, time.UTC)},
	} {
		got, err := parseTimestamptz(tc.in)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseTimestamptz(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "11/26/2026 00:05:01+00", "2026-11-26T00:05:01Z"} {
		if got, err := parseTimestamptz(in); err == nil {
			t.Errorf("parseTimestamptz(%q) = %v, want an error", in, got)
		}
	}
}

// TestOutboxReader feeds the reader two batches: a lag stretch of three
// subject inserts, its marker, and a second stretch whose marker is in the
// next batch.
func TestOutboxReader(t *testing.T) {
	subject := &pgcourier.Relation{Schema: "public", Name: "subject", Columns: []pgcourier.Column{
		{Name: "id", Type: "bigint", Key: true}, {Name: "created_at", Type: "timestamp with time zone"},
	}}
	marker := &pgcourier.Relation{Schema: "public", Name: markerTable, Columns: []pgcourier.Column{
		{Name: "id", Type: "bigint", Key: true}, {Name: "created_at", Type: "timestamp with time zone"},
	}}
	base := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) pgcourier.Value {
		return pgcourier.TextValue(base.Add(d).Format("2006-01-02 15:04:05.999999-07"))
	}
	insert := func(rel *pgcourier.Relation, id int64, created time.Duration) pgcourier.Change {
		return pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: []pgcourier.Value{pgcourier.TextValue(strconv.FormatInt(id, 10)), ts(created)}}
	}
	tx := func(lsn pgcourier.LSN, chs ...pgcourier.Change) pgcourier.Transaction {
		return pgcourier.Transaction{CommitLSN: lsn, CommitTime: base, Changes: chs}
	}
	encode := func(seq uint64, txs ...pgcourier.Transaction) []byte {
		t.Helper()
		b, err := wire.Encode(&pgcourier.Batch{Source: captureNode, Epoch: 1, Seq: seq, Transactions: txs})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b1 := encode(1,
		tx(1, insert(subject, 1, 0)),
		tx(2, insert(subject, 2, 10*time.Millisecond), insert(subject, 3, 20*time.Millisecond)),
		tx(3, insert(marker, 1, 30*time.Millisecond)),
		tx(4, pgcourier.Change{Rel: subject, Op: pgcourier.OpDelete, Old: []pgcourier.Value{pgcourier.TextValue("1"), {Kind: pgcourier.Null}}}),
	)
	b2 := encode(2, tx(5, insert(subject, 4, 40*time.Millisecond), insert(marker, 2, 50*time.Millisecond)))

	r := outboxReader{seen: map[int64]outboxMark{}, lagLo: 2, lagHi: 3}
	at1 := base.Add(100 * time.Millisecond)
	if err := r.add(1, at1, b1); err != nil {
		t.Fatal(err)
	}
	if err := r.add(3, at1, b2); err == nil {
		t.Error("add(3) after batch 1 succeeded, want an error for the gap")
	}
	at2 := base.Add(200 * time.Millisecond)
	if err := r.add(2, at2, b2); err != nil {
		t.Fatal(err)
	}
	want := map[int64]outboxMark{
		1: {at: at1, changes: 3, lags: []time.Duration{90 * time.Millisecond, 80 * time.Millisecond}},
		2: {at: at2, changes: 2},
	}
	if diff := cmp.Diff(want, r.seen, cmp.AllowUnexported(outboxMark{})); diff != "" {
		t.Errorf("markers read (-want +got):\n%s", diff)
	}
	if r.batches != 2 || r.rows != 7 || r.total != 5 || r.bytes != int64(len(b1)+len(b2)) {
		t.Errorf("reader read %d batches, %d changes, %d row changes, %d bytes; want 2, 7, 5, %d",
			r.batches, r.rows, r.total, r.bytes, len(b1)+len(b2))
	}
	if err := r.add(3, at2, []byte("not a batch")); err == nil {
		t.Error("add of a corrupt batch succeeded, want an error")
	}
}
