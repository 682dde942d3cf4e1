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
		relayed []bool   // per change: relayed from another source
		want    []string // the rows the chunk carries, as id|v|form
		again   bool     // the chunk is read again
	}{
		{name: "untouched", want: []string{"1|a|big", "3|c|big3"}},
		{name: "an update with every value: the stream has it", changes: []pgcourier.Change{upd("1", "b", "big2")}, want: []string{"3|c|big3"}},
		{name: "an update leaving form out", changes: []pgcourier.Change{upd("1", "b", "UNCHANGED")}, want: []string{"1|b|big", "3|c|big3"}},
		{name: "two of them", changes: []pgcourier.Change{upd("1", "b", "UNCHANGED"), upd("1", "c", "UNCHANGED")}, want: []string{"1|c|big", "3|c|big3"}},
		{name: "form set, then left out", changes: []pgcourier.Change{upd("1", "b", "big2"), upd("1", "c", "UNCHANGED")}, want: []string{"1|c|big2", "3|c|big3"}},
		{name: "left out, then deleted", changes: []pgcourier.Change{upd("1", "b", "UNCHANGED"), del}, want: []string{"3|c|big3"}},
		{name: "deleted, made again, left out", changes: []pgcourier.Change{del, ins("1", "x", "new"), upd("1", "y", "UNCHANGED")}, want: []string{"1|y|new", "3|c|big3"}},
		{name: "left out, then relayed: another source's row", changes: []pgcourier.Change{upd("1", "b", "UNCHANGED"), upd("1", "r", "relayed")},
			relayed: []bool{false, true}, want: []string{"3|c|big3"}},
		{name: "relayed, then left out here", changes: []pgcourier.Change{upd("1", "r", "relayed"), upd("1", "b", "UNCHANGED")},
			relayed: []bool{true, false}, want: []string{"1|b|relayed", "3|c|big3"}},
		{name: "in a wider relation", changes: []pgcourier.Change{{Rel: wider, Op: pgcourier.OpUpdate, New: val("1", "b", "UNCHANGED", "7")}}, again: true},
		{name: "moved to another key, form left out", changes: []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "", ""), New: val("2", "b", "UNCHANGED")}}, again: true},
		{name: "moved to another key with every value", changes: []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "", ""), New: val("2", "b", "c")}}, want: []string{"3|c|big3"}},
		{name: "moved between two keys of the chunk", changes: []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "", ""), New: val("3", "b", "c")}}, again: true},
		{name: "an old image of the same key", changes: []pgcourier.Change{{Rel: rel, Op: pgcourier.OpUpdate, Old: val("1", "a", "big"), New: val("1", "b", "UNCHANGED")}},
			want: []string{"1|b|big", "3|c|big3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &snapTable{name: "public.visit", rel: rel, keyCols: []int{0}, keyColls: []string{""}}
			sn := &snapshotter{queue: []*snapTable{tb}, log: slog.New(slog.DiscardHandler)}
			rows := [][]pgcourier.Value{val("1", "a", "big"), val("3", "c", "big3")}
			sn.cur = &chunk{id: "c1", table: tb, lowSeen: true, rows: rows,
				byKey: map[string]int{rowKey(rows[0], tb.keyCols): 0, rowKey(rows[1], tb.keyCols): 1}, hits: map[int]*hit{}}
			for i, ch := range tt.changes {
				sn.observe(&pgcourier.Transaction{Changes: []pgcourier.Change{ch}}, i < len(tt.relayed) && tt.relayed[i])
			}
			tx, _, _ := sn.marker("high:c1", pgcourier.Transaction{})
			if again := tx == nil; again != tt.again {
				t.Fatalf("after the high mark, read again = %t, want %t", again, tt.again)
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
