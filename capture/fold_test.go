package capture

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

// TestSnapshotFold checks what a chunk carries for its one row (id 1, v
// "a", form "big") after the changes the stream showed between its marks.
func TestSnapshotFold(t *testing.T) {
	rel := &pgcourier.Relation{Schema: "public", Name: "visit", Columns: []pgcourier.Column{
		{Name: "id", Type: "bigint", Key: true}, {Name: "v", Type: "text"}, {Name: "form", Type: "text"}}}
	// The same table after a column was added, as the stream may see it.
	wider := &pgcourier.Relation{Schema: "public", Name: "visit", Columns: []pgcourier.Column{
		{Name: "id", Type: "bigint", Key: true}, {Name: "v", Type: "text"}, {Name: "form", Type: "text"}, {Name: "n", Type: "integer"}}}
	val := func(ss ...string) []pgcourier.Value {
		var vs []pgcourier.Value
		for _, s := range ss {
			if s == "UNCHANGED" {
				vs = append(vs, pgcourier.Value{Kind: pgcourier.Unchanged})
			} else {
				vs = append(vs, pgcourier.TextValue(s))
			}
		}
		return vs
	}
	ins := func(vs ...string) pgcourier.Change {
		return pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: val(vs...)}
	}
	upd := func(vs ...string) pgcourier.Change {
		return pgcourier.Change{Rel: rel, Op: pgcourier.OpUpdate, New: val(vs...)}
	}
	del := pgcourier.Change{Rel: rel, Op: pgcourier.OpDelete, Old: val("1", "", "")}
	tests := []struct {
		name    string
		changes []pgcourier.Change
		want    []string // the rows the chunk carries, as id|v|form
		again   bool     // the chunk is read again
	}{
		{"untouched", nil, []string{"1|a|big"}, false},
		{"an update with every value: the stream has it", []pgcourier.Change{upd("1", "b", "big2")}, nil, false},
		{"an update leaving form out", []pgcourier.Change{upd("1", "b", "UNCHANGED")}, []string{"1|b|big"}, false},
		{"two of them", []pgcourier.Change{upd("1", "b", "UNCHANGED"), upd("1", "c", "UNCHANGED")}, []string{"1|c|big"}, false},
		{"form set, then left out", []pgcourier.Change{upd("1", "b", "big2"), upd("1", "c", "UNCHANGED")}, []string{"1|c|big2"}, false},
		{"left out, then deleted", []pgcourier.Change{upd("1", "b", "UNCHANGED"), del}, nil, false},
		{"deleted, made again, left out", []pgcourier.Change{del, ins("1", "x", "new"), upd("1", "y", "UNCHANGED")}, []string{"1|y|new"}, false},
		{"in a wider relation", []pgcourier.Change{{Rel: wider, Op: pgcourier.OpUpdate, New: val("1", "b", "UNCHANGED", "7")}}, []string{"1|b|big"}, false},
		{"moved to another key, form left out", []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "", ""), New: val("2", "b", "UNCHANGED")}}, nil, true},
		{"moved to another key with every value", []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "", ""), New: val("2", "b", "c")}}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &snapTable{name: "public.visit", rel: rel, keyCols: []int{0}}
			sn := &snapshotter{queue: []*snapTable{tb}, log: slog.New(slog.DiscardHandler)}
			row := val("1", "a", "big")
			sn.cur = &chunk{id: "c1", table: tb, lowSeen: true, rows: [][]pgcourier.Value{row},
				byKey: map[string]int{rowKey(row, tb.keyCols): 0}, dropped: map[int]bool{},
				folded: map[int][]pgcourier.Value{}, partial: map[int]bool{}}
			sn.observe(&pgcourier.Transaction{Changes: tt.changes})
			tx, _, _ := sn.marker("high:c1", pgcourier.Transaction{})
			if again := tx == nil; again != tt.again {
				t.Fatalf("read again = %t, want %t", again, tt.again)
			}
			if tx == nil {
				return
			}
			var got []string
			for _, ch := range tx.Changes {
				var parts []string
				for _, v := range ch.New {
					parts = append(parts, v.Text)
				}
				got = append(got, strings.Join(parts, "|"))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
		})
	}
}
