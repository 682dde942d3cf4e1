package capture

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pglogrepl"

	pgcourier "github.com/pgcourier/pgcourier"
)

// partsStream is one transaction of inserts into relation 1 and a
// TRUNCATE of relations 1 and 2, as pgoutput sends it.
func partsStream() []pglogrepl.Message {
	col := func(name string) *pglogrepl.RelationMessageColumn {
		return &pglogrepl.RelationMessageColumn{Flags: 1, Name: name, DataType: 23, TypeModifier: -1}
	}
	ins := func(id string) pglogrepl.Message {
		return &pglogrepl.InsertMessage{RelationID: 1, Tuple: &pglogrepl.TupleData{
			Columns: []*pglogrepl.TupleDataColumn{{DataType: pglogrepl.TupleDataTypeText, Data: []byte(id)}}}}
	}
	at := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	return []pglogrepl.Message{
		&pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "a", Columns: []*pglogrepl.RelationMessageColumn{col("id")}},
		&pglogrepl.RelationMessage{RelationID: 2, Namespace: "public", RelationName: "b", Columns: []*pglogrepl.RelationMessageColumn{col("id")}},
		&pglogrepl.BeginMessage{FinalLSN: 0x5000, CommitTime: at},
		ins("1"), ins("2"), ins("3"),
		&pglogrepl.TruncateMessage{RelationNum: 2, RelationIDs: []uint32{1, 2}},
		ins("4"),
		&pglogrepl.CommitMessage{CommitLSN: 0x5000, TransactionEndLSN: 0x5030, CommitTime: at},
	}
}

// describe renders what the assembler handed over: "part" or "commit",
// then each change as op and id (or table for a truncate).
func describe(c *committed) string {
	kind := "commit"
	if c.part {
		kind = "part"
	}
	var chs []string
	for _, ch := range c.tx.Changes {
		if ch.Op == pgcourier.OpTruncate {
			chs = append(chs, "T"+ch.Rel.Name)
		} else {
			chs = append(chs, "I"+ch.New[0].Text)
		}
	}
	return fmt.Sprintf("%s@%s %s", kind, c.tx.CommitLSN, strings.Join(chs, ","))
}

// TestAssemblerParts feeds one transaction to assemblers that cut parts of
// two changes, fresh and resuming after parts were written: a part never
// splits a message, the last part is never empty, and a resumed assembler
// drops exactly the changes written.
func TestAssemblerParts(t *testing.T) {
	typeName := func(context.Context, uint32, int32) (string, error) { return "integer", nil }
	for _, tc := range []struct {
		name    string
		written func(pgcourier.LSN) (bool, int)
		want    []string
	}{{
		name: "fresh",
		want: []string{"part@0/5000 I1,I2", "part@0/5000 I3,Ta,Tb", "commit@0/5000 I4"},
	}, {
		name:    "after the first part",
		written: func(pgcourier.LSN) (bool, int) { return false, 2 },
		want:    []string{"part@0/5000 I3,Ta,Tb", "commit@0/5000 I4"},
	}, {
		name:    "after both parts",
		written: func(pgcourier.LSN) (bool, int) { return false, 5 },
		want:    []string{"commit@0/5000 I4"},
	}, {
		name:    "all of it written",
		written: func(pgcourier.LSN) (bool, int) { return true, 0 },
		want:    []string{"commit@0/5000 "},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAssembler(typeName, tc.written, 2, 1<<20)
			var got []string
			var last *committed
			for _, m := range partsStream() {
				c, err := a.add(context.Background(), m)
				if err != nil {
					t.Fatalf("add %T: %v", m, err)
				}
				if c != nil {
					got = append(got, describe(c))
					last = c
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("handed over (-want +got):\n%s", diff)
			}
			if wantParted := tc.name != "all of it written"; last == nil || last.parted != wantParted {
				t.Errorf("last hand-over parted = %v, want %v", last != nil && last.parted, wantParted)
			}
		})
	}
}
