package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// Shorthands for building test batches.
var (
	null      = pgcourier.Value{Kind: pgcourier.Null}
	unchanged = pgcourier.Value{Kind: pgcourier.Unchanged}
	txt       = pgcourier.TextValue
)

func row(vals ...pgcourier.Value) []pgcourier.Value { return vals }

// at parses an RFC 3339 time, for commit times.
func at(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func subjectRel() *pgcourier.Relation {
	return &pgcourier.Relation{Schema: "public", Name: "edc_subject", Columns: []pgcourier.Column{
		{Name: "id", Type: "uuid", Key: true},
		{Name: "subject_identifier", Type: "character varying(50)"},
		{Name: "dob", Type: "date"},
		{Name: "notes", Type: "text"},
	}}
}

// goldenBatch covers every op, every kind of value, awkward bytes, a
// relation whose columns change between transactions, two equal relations
// behind different pointers, REPLICA IDENTITY FULL old images, an empty
// transaction, and commit times with microseconds.
func goldenBatch(t testing.TB) *pgcourier.Batch {
	subject := subjectRel()
	subjectAgain := subjectRel() // equal contents, another pointer
	subjectV2 := subjectRel()    // a column added mid-stream
	subjectV2.Columns = append(subjectV2.Columns, pgcourier.Column{Name: "consent_datetime", Type: "timestamp with time zone"})
	visit := &pgcourier.Relation{Schema: "public", Name: "edc_visit", Columns: []pgcourier.Column{
		{Name: "id", Type: "uuid", Key: true},
		{Name: "subject_id", Type: "uuid"},
		{Name: "visit_code", Type: "character varying(25)"},
		{Name: "data", Type: "jsonb"},
	}}
	audit := &pgcourier.Relation{Schema: "audit", Name: "event log", Columns: []pgcourier.Column{
		{Name: "ts", Type: "timestamp with time zone", Key: true},
		{Name: "who", Type: "text", Key: true},
		{Name: "what", Type: "text", Key: true},
	}}
	specimen := &pgcourier.Relation{Schema: "lab", Name: "specimen", Columns: []pgcourier.Column{
		{Name: "id", Type: "bigint", Key: true},
		{Name: "label", Type: "text"},
	}}
	const (
		s1 = "5b0c6f4e-3f6a-4c61-9a53-9f7f8b2d1c01"
		s2 = "c8e1d2a3-7b6f-4e5d-8c9b-0a1f2e3d4c5b"
		v1 = "0e9a7f3c-1b2d-4e5f-a6b7-c8d9e0f1a2b3"
	)
	return &pgcourier.Batch{
		Source: "laptop-07",
		Epoch:  3,
		Seq:    42,
		Transactions: []pgcourier.Transaction{
			{
				CommitLSN:  0x16B374D848,
				CommitTime: at(t, "2024-05-01T08:15:30.123456Z"),
				Changes: []pgcourier.Change{
					{Rel: subject, Op: pgcourier.OpInsert, New: row(txt(s1), txt("K-001-07"), null, txt(""))},
					{Rel: visit, Op: pgcourier.OpInsert, New: row(txt(v1), txt(s1), txt("1000\x00"),
						txt(`{"temp": 36.6, "note": "caf\xe9 \xff\xfe"}`))},
					{Rel: subjectAgain, Op: pgcourier.OpUpdate,
						New: row(txt(s2), txt("K-001-07"), txt("1990-02-28"), unchanged),
						Old: row(txt(s1), null, null, null)},
				},
			},
			{
				CommitLSN:  0x16B374E000,
				CommitTime: at(t, "2024-05-01T08:15:31.000001+03:00"),
				Changes: []pgcourier.Change{
					{Rel: audit, Op: pgcourier.OpUpdate,
						New: row(txt("2024-05-01 08:15:31+00"), txt("ra-3"), txt("edit")),
						Old: row(txt("2024-05-01 08:15:31+00"), txt("ra-3"), txt("ed\u00eft"))},
					{Rel: audit, Op: pgcourier.OpDelete,
						Old: row(txt("2024-05-01 08:15:31+00"), txt("ra-3"), txt("edit"))},
					{Rel: visit, Op: pgcourier.OpDelete, Old: row(txt(v1), null, null, null)},
					{Rel: specimen, Op: pgcourier.OpTruncate},
				},
			},
			{CommitLSN: 0x16B374E100, CommitTime: at(t, "2024-05-01T08:16:00Z")},
			{
				CommitLSN:  0x17000000A0,
				CommitTime: at(t, "2024-05-02T23:59:59.999999Z"),
				Changes: []pgcourier.Change{
					{Rel: subjectV2, Op: pgcourier.OpInsert,
						New: row(txt(s1), txt("K-002-07"), txt("2001-12-01"), null, txt("2024-05-02 23:59:59.9+00"))},
					{Rel: subject, Op: pgcourier.OpUpdate, New: row(txt(s2), txt("K-001-07"), null, txt("moved"))},
					{Rel: specimen, Op: pgcourier.OpInsert, New: row(txt("9223372036854775807"), txt("\x00\x01\x02"))},
				},
			},
		},
	}
}

// roundTripCases are batches that must come back from Decode as they went
// into Encode.
func roundTripCases(t testing.TB) map[string]*pgcourier.Batch {
	rnd := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(rnd.Uint32())
	}
	blob := &pgcourier.Relation{Schema: "public", Name: "blob", Columns: []pgcourier.Column{
		{Name: "id", Type: "integer", Key: true},
		{Name: "body", Type: "bytea"},
	}}

	many := &pgcourier.Batch{Source: "site.kisumu_2", Epoch: -1, Seq: math.MaxUint64}
	var changes []pgcourier.Change
	for i := range 300 {
		rel := &pgcourier.Relation{Schema: fmt.Sprintf("s%d", i%7), Name: fmt.Sprintf("t%d", i), Columns: []pgcourier.Column{
			{Name: "id", Type: "integer", Key: true},
		}}
		for k := range i % 5 {
			rel.Columns = append(rel.Columns, pgcourier.Column{Name: fmt.Sprintf("c%d", k), Type: "text", Key: k == 3})
		}
		vals := make([]pgcourier.Value, len(rel.Columns))
		for k := range vals {
			vals[k] = txt(fmt.Sprint(i * k))
		}
		changes = append(changes, pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: vals})
	}
	many.Transactions = []pgcourier.Transaction{{CommitLSN: 1, CommitTime: time.UnixMicro(1), Changes: changes}}

	empty := &pgcourier.Relation{Schema: "public", Name: "no_columns"}
	return map[string]*pgcourier.Batch{
		"golden":           goldenBatch(t),
		"golden continued": continuedGoldenBatch(t),
		"continued part": {Source: "laptop-07", Epoch: 1, Seq: 4, Continued: true, Transactions: []pgcourier.Transaction{{
			CommitLSN:  0x16B374D848,
			CommitTime: at(t, "2024-05-01T08:15:30.123456Z"),
			Changes: []pgcourier.Change{
				{Rel: blob, Op: pgcourier.OpInsert, New: row(txt("3"), txt("\\x00"))},
			},
		}}},
		"no transactions": {Source: "a", Epoch: 0, Seq: 1},
		"big values": {Source: "laptop-07", Epoch: 1, Seq: 2, Transactions: []pgcourier.Transaction{{
			CommitLSN:  math.MaxUint64,
			CommitTime: at(t, "1969-12-31T23:59:59.999999Z"),
			Changes: []pgcourier.Change{
				{Rel: blob, Op: pgcourier.OpInsert, New: row(txt("1"), txt(string(big)))},
				{Rel: blob, Op: pgcourier.OpInsert, New: row(txt("2"), txt(strings.Repeat("\\x00ff", 1<<18)))},
				{Rel: blob, Op: pgcourier.OpUpdate, New: row(txt("2"), unchanged)},
			},
		}}},
		"many relations": many,
		"no columns": {Source: "laptop-07", Epoch: math.MaxInt64, Seq: 9, Transactions: []pgcourier.Transaction{{
			CommitLSN:  7,
			CommitTime: time.Time{},
			Changes: []pgcourier.Change{
				{Rel: empty, Op: pgcourier.OpInsert, New: []pgcourier.Value{}},
				{Rel: empty, Op: pgcourier.OpDelete, Old: []pgcourier.Value{}},
				{Rel: empty, Op: pgcourier.OpTruncate},
			},
		}}},
		"commit times": {Source: "laptop-07", Epoch: 1, Seq: 3, Transactions: []pgcourier.Transaction{
			{CommitLSN: 10, CommitTime: at(t, "2000-01-01T00:00:00.000001Z")},
			{CommitLSN: 11, CommitTime: time.Date(2031, 7, 4, 12, 30, 45, 678901000, time.FixedZone("EAT", 3*3600))},
			{CommitLSN: 12, CommitTime: at(t, "1900-01-01T00:00:00.5Z")},
			{CommitLSN: 13, CommitTime: time.UnixMicro(math.MaxInt64)},
			{CommitLSN: 14, CommitTime: time.UnixMicro(math.MinInt64)},
		}},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, b := range roundTripCases(t) {
		t.Run(name, func(t *testing.T) {
			data, err := Encode(b)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(b, got); diff != "" {
				t.Errorf("Decode(Encode(b)) differs from b (-want +got):\n%s", diff)
			}
			for i, tx := range got.Transactions {
				if loc := tx.CommitTime.Location(); loc != time.UTC {
					t.Errorf("Decode(...).Transactions[%d].CommitTime.Location() = %v, want UTC", i, loc)
				}
			}

			h, err := ReadHeader(data)
			if err != nil {
				t.Fatalf("ReadHeader: %v", err)
			}
			wantVersion := version1
			if b.Continued {
				wantVersion = version2
			}
			if h.Version != wantVersion || h.Continued != b.Continued {
				t.Errorf("ReadHeader(...) = version %d, continued %v; want version %d, continued %v", h.Version, h.Continued, wantVersion, b.Continued)
			}
			if h.Source != b.Source || h.Epoch != b.Epoch || h.Seq != b.Seq ||
				h.Transactions != len(b.Transactions) || h.Rows != b.Rows() {
				t.Errorf("ReadHeader(...) = %+v, want the identity and counts of the batch", h)
			}
			if n := len(b.Transactions); n > 0 {
				first, last := b.Transactions[0], b.Transactions[n-1]
				if h.FirstLSN != first.CommitLSN || h.LastLSN != last.CommitLSN ||
					!h.FirstCommit.Equal(first.CommitTime) || !h.LastCommit.Equal(last.CommitTime) {
					t.Errorf("ReadHeader(...) = %+v, want the commit range of the batch", h)
				}
			}
			// The header alone is enough.
			if _, err := ReadHeader(data[:min(len(data), maxHeaderLen)]); err != nil {
				t.Errorf("ReadHeader(header only) = %v, want no error", err)
			}
		})
	}
}

func TestDecodeTruncatesToMicroseconds(t *testing.T) {
	rel := subjectRel()
	in := time.Date(2024, 5, 1, 8, 15, 30, 123456789, time.Local)
	b := &pgcourier.Batch{Source: "laptop-07", Seq: 1, Transactions: []pgcourier.Transaction{{
		CommitTime: in,
		Changes:    []pgcourier.Change{{Rel: rel, Op: pgcourier.OpTruncate}},
	}}}
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2024, 5, 1, 8, 15, 30, 123456000, time.Local).UTC()
	if ct := got.Transactions[0].CommitTime; ct != want {
		t.Errorf("Decode(...).Transactions[0].CommitTime = %v, want %v", ct, want)
	}
}

// TestRelationSharing checks that changes share a decoded *Relation exactly
// when their relations have equal contents.
func TestRelationSharing(t *testing.T) {
	b := goldenBatch(t)
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	var rels []*pgcourier.Relation
	for _, tx := range got.Transactions {
		for _, c := range tx.Changes {
			rels = append(rels, c.Rel)
		}
	}
	var wantRels []*pgcourier.Relation
	for _, tx := range b.Transactions {
		for _, c := range tx.Changes {
			wantRels = append(wantRels, c.Rel)
		}
	}
	distinct := map[*pgcourier.Relation]bool{}
	for i := range rels {
		distinct[rels[i]] = true
		for j := range rels {
			equal := cmp.Equal(wantRels[i], wantRels[j])
			if shared := rels[i] == rels[j]; shared != equal {
				t.Errorf("changes %d and %d: decoded relations shared = %v, want %v (equal contents)", i, j, shared, equal)
			}
		}
	}
	if len(distinct) != 5 {
		t.Errorf("Decode(...) returned %d distinct relations, want 5", len(distinct))
	}
	// The subject relation is written once, though two pointers refer to it.
	if n := bytes.Count(mustBody(t, b), []byte("edc_subject")); n != 2 {
		t.Errorf("body holds %d copies of \"edc_subject\", want 2 (two column lists)", n)
	}
}

func mustBody(t testing.TB, b *pgcourier.Batch) []byte {
	t.Helper()
	body, err := encodeBody(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestEncodeDeterministic(t *testing.T) {
	for name, b := range roundTripCases(t) {
		t.Run(name, func(t *testing.T) {
			first, err := Encode(b)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				again, err := Encode(b)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(first, again) {
					t.Fatalf("Encode(b) gave different bytes on a second call")
				}
			}
			// Decoding and encoding again gives the same bytes: relays and
			// receivers can compare batches by their bytes.
			decoded, err := Decode(first)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Encode(decoded)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first, again) {
				t.Errorf("Encode(Decode(data)) differs from data")
			}
		})
	}
}

func TestEncodeConcurrent(t *testing.T) {
	b := goldenBatch(t)
	want, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			for range 20 {
				got, err := Encode(b)
				if err == nil && !bytes.Equal(got, want) {
					err = errors.New("Encode gave different bytes concurrently")
				}
				if err == nil {
					_, err = Decode(got)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	valid := func() *pgcourier.Batch {
		return &pgcourier.Batch{Source: "laptop-07", Epoch: 1, Seq: 1, Transactions: []pgcourier.Transaction{{
			CommitLSN:  1,
			CommitTime: time.UnixMicro(1),
			Changes: []pgcourier.Change{
				{Rel: subjectRel(), Op: pgcourier.OpInsert, New: row(txt("a"), txt("b"), null, unchanged)},
			},
		}}}
	}
	if _, err := Encode(valid()); err != nil {
		t.Fatalf("Encode(valid batch) = %v, want no error", err)
	}
	change := func(edit func(c *pgcourier.Change)) func(b *pgcourier.Batch) {
		return func(b *pgcourier.Batch) { edit(&b.Transactions[0].Changes[0]) }
	}
	tests := []struct {
		name string
		edit func(b *pgcourier.Batch)
		want string // in the error
	}{
		{"empty source", func(b *pgcourier.Batch) { b.Source = "" }, "source"},
		{"invalid source", func(b *pgcourier.Batch) { b.Source = "Laptop 07" }, "source"},
		{"long source", func(b *pgcourier.Batch) { b.Source = strings.Repeat("a", pgcourier.MaxNodeIDLen+1) }, "source"},
		{"seq 0", func(b *pgcourier.Batch) { b.Seq = 0 }, "seq"},
		{"continued without a transaction", func(b *pgcourier.Batch) { b.Transactions, b.Continued = nil, true }, "continued batch without a transaction"},
		{"no relation", change(func(c *pgcourier.Change) { c.Rel = nil }), "no relation"},
		{"op 0", change(func(c *pgcourier.Change) { c.Op = 0 }), "unknown operation"},
		{"op X", change(func(c *pgcourier.Change) { c.Op = 'X' }), "unknown operation"},
		{"insert without new", change(func(c *pgcourier.Change) { c.New = nil }), "insert without a new row image"},
		{"insert with old", change(func(c *pgcourier.Change) { c.Old = c.New }), "insert with an old row image"},
		{"update without new", change(func(c *pgcourier.Change) { c.Op, c.Old, c.New = pgcourier.OpUpdate, c.New, nil }), "update without a new row image"},
		{"delete with new", change(func(c *pgcourier.Change) { c.Op, c.Old = pgcourier.OpDelete, c.New }), "delete with a new row image"},
		{"delete without old", change(func(c *pgcourier.Change) { c.Op, c.New = pgcourier.OpDelete, nil }), "delete without an old row image"},
		{"truncate with new", change(func(c *pgcourier.Change) { c.Op = pgcourier.OpTruncate }), "truncate with a row image"},
		{"truncate with old", change(func(c *pgcourier.Change) { c.Op, c.Old, c.New = pgcourier.OpTruncate, c.New, nil }), "truncate with a row image"},
		{"short new", change(func(c *pgcourier.Change) { c.New = c.New[:3] }), "new row image has 3 values for the 4 columns"},
		{"long new", change(func(c *pgcourier.Change) { c.New = append(c.New, null) }), "new row image has 5 values"},
		{"short old", change(func(c *pgcourier.Change) { c.Op, c.Old = pgcourier.OpUpdate, row(null) }), "old row image has 1 values"},
		{"empty old image", change(func(c *pgcourier.Change) { c.Op, c.Old, c.New = pgcourier.OpDelete, []pgcourier.Value{}, nil }), "old row image has 0 values"},
		{"unknown kind", change(func(c *pgcourier.Change) { c.New[2] = pgcourier.Value{Kind: 'x'} }), "unknown value kind"},
		{"zero kind", change(func(c *pgcourier.Change) { c.New[2] = pgcourier.Value{} }), "unknown value kind"},
		{"null with text", change(func(c *pgcourier.Change) { c.New[2] = pgcourier.Value{Kind: pgcourier.Null, Text: "x"} }), "with text"},
		{"unchanged with text", change(func(c *pgcourier.Change) { c.New[2] = pgcourier.Value{Kind: pgcourier.Unchanged, Text: "x"} }), "with text"},
		{"empty relation name", change(func(c *pgcourier.Change) { c.Rel.Name = "" }), "empty schema or name"},
		{"empty schema", change(func(c *pgcourier.Change) { c.Rel.Schema = "" }), "empty schema or name"},
		{"empty column name", change(func(c *pgcourier.Change) { c.Rel.Columns[1].Name = "" }), "column 1 has no name"},
		{"duplicate column", change(func(c *pgcourier.Change) { c.Rel.Columns[3].Name = "id" }), `column "id" appears twice`},
		{"too many columns", change(func(c *pgcourier.Change) {
			c.Rel.Columns = make([]pgcourier.Column, maxColumns+1)
			c.New = make([]pgcourier.Value, maxColumns+1)
		}), "over Postgres's 1600"},
		{"commit time out of range", func(b *pgcourier.Batch) {
			b.Transactions[0].CommitTime = time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC)
		}, "out of range"},
		{"second change", func(b *pgcourier.Batch) {
			tx := &b.Transactions[0]
			tx.Changes = append(tx.Changes, pgcourier.Change{Rel: tx.Changes[0].Rel, Op: pgcourier.OpDelete})
		}, "transaction 1 (commit LSN 0/1), change 2: delete without an old row image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := valid()
			tt.edit(b)
			data, err := Encode(b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Encode(batch with %s) = %d bytes, %v; want an error containing %q", tt.name, len(data), err, tt.want)
			}
			if errors.Is(err, ErrTooLarge) {
				t.Errorf("Encode(batch with %s) = %v, want no ErrTooLarge", tt.name, err)
			}
		})
	}
	if _, err := Encode(nil); err == nil {
		t.Errorf("Encode(nil) = nil error, want an error")
	}
}

// smallBatch returns a few hundred encoded bytes touching every part of
// format version 1.
func smallBatch(t testing.TB) []byte {
	t.Helper()
	return mustEncode(t, small(t))
}

// smallContinuedBatch is smallBatch in version 2: its last transaction goes
// on in the next batch.
func smallContinuedBatch(t testing.TB) []byte {
	t.Helper()
	b := small(t)
	b.Continued = true
	return mustEncode(t, b)
}

func mustEncode(t testing.TB, b *pgcourier.Batch) []byte {
	t.Helper()
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// small returns the batch of smallBatch.
func small(t testing.TB) *pgcourier.Batch {
	rel := subjectRel()
	b := &pgcourier.Batch{Source: "laptop-07", Epoch: 2, Seq: 5, Transactions: []pgcourier.Transaction{
		{CommitLSN: 0x1000, CommitTime: at(t, "2024-05-01T08:15:30.123456Z"), Changes: []pgcourier.Change{
			{Rel: rel, Op: pgcourier.OpInsert, New: row(txt("a1"), txt("K-1"), null, unchanged)},
			{Rel: rel, Op: pgcourier.OpUpdate, New: row(txt("a1"), txt("K-2"), null, txt("")), Old: row(txt("a1"), null, null, null)},
		}},
		{CommitLSN: 0x2000, CommitTime: at(t, "2024-05-01T08:15:31Z"), Changes: []pgcourier.Change{
			{Rel: rel, Op: pgcourier.OpDelete, Old: row(txt("a1"), null, null, null)},
			{Rel: rel, Op: pgcourier.OpTruncate},
		}},
	}}
	return b
}

// smallBatches are smallBatch in every format version.
func smallBatches(t testing.TB) map[string][]byte {
	return map[string][]byte{"v1": smallBatch(t), "v2 continued": smallContinuedBatch(t)}
}

// TestCorruptByte flips every byte of a small batch in a few ways: Decode
// must refuse each one, and never return a batch.
func TestCorruptByte(t *testing.T) {
	for name, data := range smallBatches(t) {
		t.Run(name, func(t *testing.T) { testCorruptByte(t, data) })
	}
}

func testCorruptByte(t *testing.T, data []byte) {
	_, hdrLen, err := readHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(data)
			bad[i] ^= mask
			want := ErrCorrupt
			if i == len(magic) {
				want = ErrVersion
			}
			b, err := Decode(bad)
			if !errors.Is(err, want) || b != nil {
				t.Errorf("Decode(data with byte %d ^ %#02x) = %v, %v; want nil, an error wrapping %v", i, mask, b, err, want)
			}
			if i < hdrLen {
				if _, err := ReadHeader(bad); !errors.Is(err, want) {
					t.Errorf("ReadHeader(data with byte %d ^ %#02x) = %v, want an error wrapping %v", i, mask, err, want)
				}
			}
		}
	}
}

func TestTruncated(t *testing.T) {
	for name, data := range smallBatches(t) {
		t.Run(name, func(t *testing.T) { testTruncated(t, data) })
	}
}

func testTruncated(t *testing.T, data []byte) {
	_, hdrLen, err := readHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(data) {
		b, err := Decode(data[:n])
		if !errors.Is(err, ErrCorrupt) || b != nil {
			t.Errorf("Decode(first %d of %d bytes) = %v, %v; want nil, an error wrapping ErrCorrupt", n, len(data), b, err)
		}
		if n < hdrLen {
			if _, err := ReadHeader(data[:n]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReadHeader(first %d of %d bytes) = %v, want an error wrapping ErrCorrupt", n, len(data), err)
			}
		}
	}
	// Nor may anything follow a batch.
	for _, tail := range [][]byte{{0}, []byte("x"), {0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0}} {
		if _, err := Decode(append(bytes.Clone(data), tail...)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Decode(data + %q) = %v, want an error wrapping ErrCorrupt", tail, err)
		}
	}
}

func TestVersion(t *testing.T) {
	for name, data := range smallBatches(t) {
		for _, v := range []byte{0, Version + 1, 255} {
			bad := bytes.Clone(data)
			bad[len(magic)] = v
			b, err := Decode(bad)
			if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), fmt.Sprintf("version %d;", v)) || b != nil {
				t.Errorf("Decode(%s batch as version %d) = %v, %v; want nil, an error wrapping ErrVersion that names version %d", name, v, b, err, v)
			}
			if errors.Is(err, ErrCorrupt) {
				t.Errorf("Decode(%s batch as version %d) = %v, want it not to wrap ErrCorrupt", name, v, err)
			}
			if _, err := ReadHeader(bad); !errors.Is(err, ErrVersion) {
				t.Errorf("ReadHeader(%s batch as version %d) = %v, want an error wrapping ErrVersion", name, v, err)
			}
		}
	}
	// A newer version than this build reads is an upgrade away.
	bad := smallBatch(t)
	bad[len(magic)] = Version + 1
	if _, err := Decode(bad); err == nil || !strings.Contains(err.Error(), "upgrade pgcourier") {
		t.Errorf("Decode(version %d batch) = %v, want an error that says to upgrade", Version+1, err)
	}
	if _, err := Decode([]byte("not a batch at all")); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not a pgcourier batch") {
		t.Errorf("Decode(text) = %v, want an error wrapping ErrCorrupt saying it is not a batch", err)
	}
}

// hostileHeader returns a header for a body of one transaction (commit LSN
// 5, commit time 0) with one row change.
func hostileHeader() Header {
	return Header{Version: version1, Source: "laptop-07", Epoch: 1, Seq: 1, Transactions: 1, Rows: 1,
		FirstLSN: 5, LastLSN: 5, FirstCommit: time.UnixMicro(0).UTC(), LastCommit: time.UnixMicro(0).UTC()}
}

// body builds a body from bytes, strings and ints (written as uvarints).
func body(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case int:
			b = appendUvarint(b, uint64(p))
		case string:
			b = appendString(b, p)
		case []byte:
			b = append(b, p...)
		default:
			panic(fmt.Sprintf("body: %T", p))
		}
	}
	return b
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// TestDecodeHostile feeds Decode batches whose checksums and hash are right
// but whose contents are not: what someone crafting input could send.
func TestDecodeHostile(t *testing.T) {
	relOne := body("public", "t", 1, "id", "int", byte(1))
	tx := body(5, 0, 1) // commit LSN 5, time 0, one change
	insert := body(byte('I'), 0, relOne, byte(imageNew))
	good := body(tx, insert, byte('t'), "1")
	if _, err := Decode(sealed(t, hostileHeader(), good)); err != nil {
		t.Fatalf("Decode(well-formed crafted batch) = %v, want no error", err)
	}

	h2 := hostileHeader()
	h2.Rows = 2
	h8 := hostileHeader()
	h8.Rows = 9
	tests := []struct {
		name string
		h    Header
		body []byte
		want string
	}{
		{"unknown op", hostileHeader(), body(tx, byte('X'), 0, relOne, byte(imageNew), byte('t'), "1"), "unknown operation 0x58"},
		{"relation index out of range", hostileHeader(), body(tx, byte('I'), 1, byte(imageNew), byte('t'), "1"), "relation entry 1 is not defined"},
		{"huge relation index", hostileHeader(), body(tx, byte('I'), 1<<62, byte(imageNew), byte('t'), "1"), "is not defined"},
		{"image flags", hostileHeader(), body(tx, byte('I'), 0, relOne, byte(4|imageNew), byte('t'), "1"), "image flags 0x05"},
		{"images for op", hostileHeader(), body(tx, byte('D'), 0, relOne, byte(imageNew), byte('t'), "1"), "delete with a new row image"},
		{"unknown kind", hostileHeader(), body(tx, insert, byte('x'), "1"), "unknown value kind 0x78"},
		{"text past the end", hostileHeader(), body(tx, insert, byte('t'), 50, "ab"), "bytes wanted"},
		{"trailing bytes", hostileHeader(), body(good, byte(0)), "1 bytes after the last transaction"},
		{"fewer rows than header", h2, body(good), "1 row changes, header says 2"},
		{"more rows than header", hostileHeader(), body(5, 0, 2, insert, byte('t'), "1", byte('T'), 0, byte(0)), "more row changes than the header's 1"},
		{"change count past the end", h8, body(5, 0, 9, insert, byte('t'), "1"), "9 row changes cannot fit"},
		{"key flag", hostileHeader(), body(tx, byte('I'), 0, "public", "t", 1, "id", "int", byte(2), byte(imageNew), byte('t'), "1"), "key flag 0x02"},
		{"huge column count", hostileHeader(), body(tx, byte('I'), 0, "public", "t", 1<<40, "id"), "over Postgres's 1600"},
		{"column count past the end", hostileHeader(), body(tx, byte('I'), 0, "public", "t", 1000, "id", "int", byte(1)), "1000 columns cannot fit"},
		{"duplicate column", hostileHeader(), body(tx, byte('I'), 0, "public", "t", 2, "id", "int", byte(1), "id", "int", byte(0), byte(imageNew), byte('t'), "1", byte('n')), "appears twice"},
		{"empty relation name", hostileHeader(), body(tx, byte('I'), 0, "public", "", 1, "id", "int", byte(1), byte(imageNew), byte('t'), "1"), "empty schema or name"},
		{"repeated relation entry", h2, body(5, 0, 2, insert, byte('t'), "1", byte('I'), 1, relOne, byte(imageNew), byte('t'), "2"), "relation entry 1 repeats entry 0"},
		{"long varint", hostileHeader(), body(tx[:1], byte(0x80), byte(0x00), tx[2:], insert, byte('t'), "1"), "shortest form"},
		{"varint overflow", hostileHeader(), body(bytes.Repeat([]byte{0xff}, 10), byte(1)), "overflows"},
		{"commit range", func() Header { h := hostileHeader(); h.LastLSN = 6; return h }(), good, "commit range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.h.BodyLen = len(tt.body)
			b, err := Decode(sealed(t, tt.h, tt.body))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || b != nil {
				t.Errorf("Decode(batch with %s) = %v, %v; want nil, an error wrapping ErrCorrupt containing %q", tt.name, b, err, tt.want)
			}
		})
	}
}

// sealed returns h and body as an encoded batch with correct checksums and
// hash, whatever they hold.
func sealed(t testing.TB, h Header, body []byte) []byte {
	t.Helper()
	h.BodyLen = len(body)
	return sealedAs(t, h, body)
}

// sealedAs is sealed without setting h.BodyLen.
func sealedAs(t testing.TB, h Header, body []byte) []byte {
	t.Helper()
	data, err := seal(&h, body)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeHostileHeader(t *testing.T) {
	good := body(5, 0, 1, byte('I'), 0, "public", "t", 1, "id", "int", byte(1), byte(imageNew), byte('t'), "1")
	tests := []struct {
		name    string
		edit    func(h *Header)
		bodyLen int // declared; -1 for the true length
		want    string
	}{
		{"body over MaxBodyBytes", nil, MaxBodyBytes + 1, "over MaxBodyBytes"},
		{"body shorter than declared", nil, len(good) + 1, "compressed frame holds at most"},
		{"body longer than declared", nil, len(good) - 1, "decompress body"},
		{"rows over MaxRows", func(h *Header) { h.Rows = MaxRows + 1 }, -1, "over MaxRows"},
		{"transactions over MaxRows", func(h *Header) { h.Transactions = MaxRows + 1 }, -1, "over MaxRows"},
		{"more transactions than fit", func(h *Header) { h.Transactions = 100 }, -1, "cannot fit in a body"},
		{"rows in no transaction", func(h *Header) { h.Transactions = 0 }, -1, "rows in no transaction"},
		{"seq 0", func(h *Header) { h.Seq = 0 }, -1, "seq is 0"},
		{"bad source", func(h *Header) { h.Source = "Laptop" }, -1, "source"},
		{"empty source", func(h *Header) { h.Source = "" }, -1, "source"},
		{"long source", func(h *Header) { h.Source = strings.Repeat("a", 41) }, -1, "longer than 40"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hostileHeader()
			if tt.edit != nil {
				tt.edit(&h)
			}
			h.BodyLen = tt.bodyLen
			if tt.bodyLen < 0 {
				h.BodyLen = len(good)
			}
			data := sealedAs(t, h, good)
			b, err := Decode(data)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || b != nil {
				t.Errorf("Decode(batch with %s) = %v, %v; want nil, an error wrapping ErrCorrupt containing %q", tt.name, b, err, tt.want)
			}
		})
	}
}

// TestContinued checks that a continued batch is written in version 2 and
// every other batch in version 1, and that the flag comes back from
// ReadHeader and Decode.
func TestContinued(t *testing.T) {
	for _, continued := range []bool{false, true} {
		b := small(t)
		b.Continued = continued
		data := mustEncode(t, b)
		wantVersion := version1
		if continued {
			wantVersion = version2
		}
		h, err := ReadHeader(data)
		if err != nil {
			t.Fatalf("ReadHeader(batch continued %v) = %v", continued, err)
		}
		if h.Version != wantVersion || h.Continued != continued {
			t.Errorf("ReadHeader(batch continued %v) = version %d, continued %v; want version %d, continued %v",
				continued, h.Version, h.Continued, wantVersion, continued)
		}
		if v := data[len(magic)]; int(v) != wantVersion {
			t.Errorf("Encode(batch continued %v) writes version byte %d, want %d", continued, v, wantVersion)
		}
		got, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(batch continued %v) = %v", continued, err)
		}
		if diff := cmp.Diff(b, got); diff != "" {
			t.Errorf("Decode(Encode(batch continued %v)) differs (-want +got):\n%s", continued, diff)
		}
	}

	// Version 2 is version 1 with the flags byte after the row count: the
	// header fields differ in the version byte and that one byte.
	v1, v2 := smallBatch(t), smallContinuedBatch(t)
	head1, head2 := headerFields(t, v1), headerFields(t, v2)
	off := flagsOffset(t, v2)
	without := append(bytes.Clone(head2[:off]), head2[off+1:]...)
	without[len(magic)] = version1
	if head2[off] != flagContinued || !bytes.Equal(without, head1) {
		t.Errorf("version 2 header fields are % x, want those of version 1 (% x) with version 2 and flags 0x01 at offset %d", head2, head1, off)
	}
}

// headerFields returns the header fields of data, before the hash.
func headerFields(t testing.TB, data []byte) []byte {
	t.Helper()
	_, n, err := readHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	return data[:n-8-sha256.Size]
}

// flagsOffset returns the offset of the flags byte in a version 2 batch:
// right after the row count.
func flagsOffset(t testing.TB, data []byte) int {
	t.Helper()
	r := reader{s: string(data), off: len(magic) + 1, what: "header"}
	r.str()     // source
	r.varint()  // epoch
	r.uvarint() // seq
	r.uvarint() // transactions
	r.uvarint() // rows
	if r.err != nil || data[len(magic)] != version2 {
		t.Fatalf("flagsOffset: not a version 2 header: %v", r.err)
	}
	return r.off
}

// withFlags returns h and body as a version 2 batch whose flags byte is
// flags, with its hash and checksums right.
func withFlags(t testing.TB, h Header, body []byte, flags byte) []byte {
	t.Helper()
	h.Version, h.Continued = version2, true
	data := sealed(t, h, body)
	_, n, err := readHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	data[flagsOffset(t, data)] = flags
	hashAt := n - 8 - sha256.Size
	sum := sha256.New()
	sum.Write(data[:hashAt])
	sum.Write(body)
	copy(data[hashAt:], sum.Sum(nil))
	fixFrameChecksum(data, n)
	return data
}

// TestDecodeFlags checks that a version 2 header with any flags but
// "continued", or a continued one without a transaction, is refused, though
// its checksums and hash are right.
func TestDecodeFlags(t *testing.T) {
	good := body(5, 0, 1, byte('I'), 0, "public", "t", 1, "id", "int", byte(1), byte(imageNew), byte('t'), "1")
	data := withFlags(t, hostileHeader(), good, flagContinued)
	b, err := Decode(data)
	if err != nil || !b.Continued {
		t.Fatalf("Decode(crafted continued batch) = %+v, %v; want a continued batch", b, err)
	}

	for _, tt := range []struct {
		flags byte
		want  string
	}{
		{0x00, "version 2 header without the continued flag"},
		{0x02, "header flags 0x02: bits 0x02 are not defined"},
		{0x03, "header flags 0x03: bits 0x02 are not defined"},
		{0x80, "header flags 0x80: bits 0x80 are not defined"},
		{0xff, "header flags 0xff: bits 0xfe are not defined"},
	} {
		data := withFlags(t, hostileHeader(), good, tt.flags)
		if _, err := ReadHeader(data); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ReadHeader(version 2 batch with flags 0x%02x) = %v, want an error wrapping ErrCorrupt containing %q", tt.flags, err, tt.want)
		}
		b, err := Decode(data)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || b != nil {
			t.Errorf("Decode(version 2 batch with flags 0x%02x) = %v, %v; want nil, an error wrapping ErrCorrupt containing %q", tt.flags, b, err, tt.want)
		}
	}

	h := hostileHeader()
	h.Version, h.Continued, h.Transactions, h.Rows = version2, true, 0, 0
	data = sealed(t, h, nil)
	const want = "continued batch without a transaction"
	if _, err := ReadHeader(data); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Errorf("ReadHeader(continued batch without a transaction) = %v, want an error wrapping ErrCorrupt containing %q", err, want)
	}
	if b, err := Decode(data); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) || b != nil {
		t.Errorf("Decode(continued batch without a transaction) = %v, %v; want nil, an error wrapping ErrCorrupt containing %q", b, err, want)
	}
}

// TestDecodeBomb checks that Decode neither decompresses nor allocates much
// more than the header declares, whatever the compressed frame holds.
func TestDecodeBomb(t *testing.T) {
	enc, err := zstdEncoder()
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 64<<20)
	frame := enc.EncodeAll(zeros, nil)
	t.Logf("%d zero bytes compress to %d", len(zeros), len(frame))

	h := hostileHeader()
	for _, declared := range []int{100, MaxBodyBytes} {
		h.BodyLen = declared
		data := sealedAs(t, h, nil)
		// Replace the (empty) frame with the bomb and fix the frame checksum.
		_, n, err := readHeader(data)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data[:n:n], frame...)
		fixFrameChecksum(data, n)

		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b, err := Decode(data)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorrupt) || b != nil {
			t.Errorf("Decode(bomb declaring %d bytes) = %v, %v; want nil, an error wrapping ErrCorrupt", declared, b, err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
			t.Errorf("Decode(bomb declaring %d bytes) allocated %d bytes, want under 8 MiB", declared, alloc)
		}
	}
}

// fixFrameChecksum rewrites the checksums of a batch whose header is n bytes
// after its frame was replaced.
func fixFrameChecksum(data []byte, n int) {
	binary.BigEndian.PutUint32(data[n-8:], crc32.Checksum(data[n:], castagnoli))
	binary.BigEndian.PutUint32(data[n-4:], crc32.Checksum(data[:n-4], castagnoli))
}

func TestEncodeTooLarge(t *testing.T) {
	rel := &pgcourier.Relation{Schema: "public", Name: "wide"}
	for k := range maxColumns {
		rel.Columns = append(rel.Columns, pgcourier.Column{Name: fmt.Sprintf("c%d", k), Type: "integer"})
	}
	nulls := make([]pgcourier.Value, maxColumns)
	for k := range nulls {
		nulls[k] = null
	}
	changes := make([]pgcourier.Change, MaxValues/maxColumns+1)
	for i := range changes {
		changes[i] = pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: nulls}
	}
	b := &pgcourier.Batch{Source: "laptop-07", Seq: 1, Transactions: []pgcourier.Transaction{{Changes: changes}}}
	if _, err := Encode(b); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "MaxValues") {
		t.Errorf("Encode(batch of %d values) = %v, want an error wrapping ErrTooLarge naming MaxValues", len(changes)*maxColumns, err)
	}
	b.Transactions[0].Changes = changes[:len(changes)-2]
	if _, err := Encode(b); err != nil {
		t.Errorf("Encode(batch just under MaxValues) = %v, want no error", err)
	}
}
