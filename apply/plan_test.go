package apply

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

// testTable describes an upstream table (id, code, note) for planning
// without a database. indexes is the JSON of its unique indexes.
func testTable(t testing.TB, name, indexes string) *table {
	t.Helper()
	tb, err := newTable("public", name, 1, `[
		{"name": "id", "type": "pg_catalog.int4", "format": "integer", "notnull": true},
		{"name": "code", "type": "pg_catalog.text", "format": "text"},
		{"name": "note", "type": "pg_catalog.text", "format": "text"}]`, indexes)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// TestPlanRuns checks which consecutive changes are applied together.
// Each run is shown as its operations, such as "IUD".
func TestPlanRuns(t *testing.T) {
	const pk = `{"columns": ["id"], "primary": true, "unique": true}`
	keyed := relation("t", "id integer key", "code text", "note text")
	same := relation("t", "id integer key", "code text", "note text") // equal contents, another pointer
	full := relation("t", "id integer key", "code text key", "note text key")
	tests := []struct {
		name    string
		indexes string
		rel     *pgcourier.Relation
		changes []pgcourier.Change
		// optimistic plans group past another unique index; hazardous
		// lists, per run, whether the writer must retry it cautiously
		// on a unique violation (nil: none is).
		optimistic bool
		want       []string
		hazardous  []bool
	}{{
		name:    "inserts, updates and deletes of different rows go together",
		indexes: "[" + pk + "]",
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), upd(keyed, "2", "b", "y"), del(keyed, "3", "NULL", "NULL"), ins(same, "4", "d", "z")},
		want:    []string{"IUDI"},
	}, {
		name:    "a row touched again starts a new run",
		indexes: "[" + pk + "]",
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), ins(keyed, "2", "b", "y"), upd(keyed, "1", "c", "z"), del(keyed, "2", "NULL", "NULL")},
		want:    []string{"II", "UD"},
	}, {
		name:    "updates writing other columns go apart",
		indexes: "[" + pk + "]",
		rel:     keyed,
		changes: []pgcourier.Change{upd(keyed, "1", "a", "x"), upd(keyed, "2", "b", "UNCHANGED"), upd(keyed, "3", "c", "UNCHANGED"), del(keyed, "4", "NULL", "NULL")},
		want:    []string{"U", "UUD"},
	}, {
		name:    "a key change goes alone",
		indexes: "[" + pk + "]",
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), updOld(keyed, []string{"5", "a", "x"}, []string{"2", "NULL", "NULL"}), ins(keyed, "3", "c", "z")},
		want:    []string{"I", "U", "I"},
	}, {
		name:    "another unique constraint: inserts and updates one by one, deletes together",
		indexes: "[" + pk + `, {"columns": ["code"], "unique": true}]`,
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), ins(keyed, "2", "b", "y"), del(keyed, "3", "NULL", "NULL"), del(keyed, "4", "NULL", "NULL"), upd(keyed, "5", "c", "z")},
		want:    []string{"I", "I", "DD", "U"},
	}, {
		name:       "another unique constraint, optimistic: together, and marked for a cautious retry",
		indexes:    "[" + pk + `, {"columns": ["code"], "unique": true}]`,
		rel:        keyed,
		changes:    []pgcourier.Change{ins(keyed, "1", "a", "x"), ins(keyed, "2", "b", "y"), del(keyed, "3", "NULL", "NULL"), upd(keyed, "5", "c", "z"), upd(keyed, "1", "d", "x")},
		optimistic: true,
		want:       []string{"IIDU", "U"},
		hazardous:  []bool{true, false},
	}, {
		name:       "optimistic plans of tables without another unique index are as before",
		indexes:    "[" + pk + "]",
		rel:        keyed,
		changes:    []pgcourier.Change{ins(keyed, "1", "a", "x"), ins(keyed, "2", "b", "y")},
		optimistic: true,
		want:       []string{"II"},
		hazardous:  []bool{false},
	}, {
		name:    "a deferrable unique constraint is checked at commit: no reason to split",
		indexes: "[" + pk + `, {"columns": ["code"], "unique": true, "deferrable": true}]`,
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), ins(keyed, "2", "b", "y")},
		want:    []string{"II"},
	}, {
		name:    "no key upstream: inserts together, updates and deletes one by one",
		indexes: "[]",
		rel:     full,
		changes: []pgcourier.Change{ins(full, "1", "a", "x"), ins(full, "1", "a", "x"), del(full, "1", "a", "x"), del(full, "1", "a", "x"), updOld(full, []string{"1", "b", "x"}, []string{"1", "a", "x"})},
		want:    []string{"II", "D", "D", "U"},
	}, {
		name:    "REPLICA IDENTITY FULL source, primary key upstream: found by the key",
		indexes: "[" + pk + "]",
		rel:     full,
		changes: []pgcourier.Change{updOld(full, []string{"1", "b", "x"}, []string{"1", "a", "x"}), updOld(full, []string{"2", "b", "x"}, []string{"2", "a", "x"}), del(full, "3", "a", "x")},
		want:    []string{"UUD"},
	}, {
		name:    "a truncate goes alone",
		indexes: "[" + pk + "]",
		rel:     keyed,
		changes: []pgcourier.Change{ins(keyed, "1", "a", "x"), truncate(keyed), ins(keyed, "1", "a", "x")},
		want:    []string{"I", "T", "I"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := testTable(t, "t", tt.indexes)
			plans := map[*pgcourier.Relation]*relPlan{}
			for _, ch := range tt.changes {
				if plans[ch.Rel] == nil {
					p, err := planRelation(ch.Rel, tb, LastWriterWins)
					if err != nil {
						t.Fatal(err)
					}
					plans[ch.Rel] = p
				}
			}
			var txs []pgcourier.Transaction
			for i, ch := range tt.changes {
				txs = append(txs, txn(at(i), ch))
			}
			var got []string
			var hazardous []bool
			runs, _ := planRuns(batch("laptop-07", 1, txs...), plans, !tt.optimistic)
			for _, r := range runs {
				var ops strings.Builder
				for _, it := range r.items {
					ops.WriteByte(byte(it.ch.Op))
				}
				got = append(got, ops.String())
				hazardous = append(hazardous, r.hazardous())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("runs (-want +got):\n%s", diff)
			}
			if tt.hazardous != nil {
				if diff := cmp.Diff(tt.hazardous, hazardous); diff != "" {
					t.Errorf("hazardous runs (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestPlanRelationMissingColumn checks that a column the upstream table
// lacks is named, with the statement that adds it.
func TestPlanRelationMissingColumn(t *testing.T) {
	tb := testTable(t, "t", "[]")
	_, err := planRelation(relation("t", "id integer key", "witness character varying(20)"), tb, LastWriterWins)
	be, ok := err.(*BlockedError)
	if !ok || be.Table != "public.t" || be.Column != "witness" || !strings.Contains(be.Hint, `ADD COLUMN "witness" character varying(20)`) {
		t.Errorf("planRelation = %v, want a BlockedError naming public.t, column witness, with the ALTER TABLE", err)
	}
}

// TestPlanRunsByTable checks how an optimistic plan groups a batch of
// interleaved transactions by table, parents first, and when it keeps the
// source order.
func TestPlanRunsByTable(t *testing.T) {
	const pk = `[{"columns": ["id"], "primary": true, "unique": true}]`
	linked := func(name string, oid uint32, links string) *table {
		tb := testTable(t, name, pk)
		tb.OID = oid
		if err := tb.link(links); err != nil {
			t.Fatal(err)
		}
		return tb
	}
	// visit references subject; requisition references visit; note is
	// on its own, and so is unique, with a second unique index.
	subject := linked("subject", 1, `{"parents": [], "referenced": true}`)
	visit := linked("visit", 2, `{"parents": [1], "referenced": true}`)
	requisition := linked("requisition", 3, `{"parents": [2], "referenced": false}`)
	note := linked("note", 4, `{"parents": [], "referenced": false}`)
	unique := testTable(t, "unique", `[{"columns": ["id"], "primary": true, "unique": true}, {"columns": ["code"], "unique": true}]`)
	unique.OID = 5
	price, err := newTable("public", "price", 6, `[
		{"name": "id", "type": "pg_catalog.numeric", "format": "numeric", "notnull": true},
		{"name": "code", "type": "pg_catalog.text", "format": "text"},
		{"name": "note", "type": "pg_catalog.text", "format": "text"}]`, pk)
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]*table{"subject": subject, "visit": visit, "requisition": requisition, "note": note, "unique": unique, "price": price}
	rels := map[string]*pgcourier.Relation{}
	for name := range tables {
		rels[name] = relation(name, "id integer key", "code text", "note text")
	}
	rels["price"] = relation("price", "id numeric key", "code text", "note text")
	tests := []struct {
		name      string
		changes   []pgcourier.Change
		want      []string // runs, as table:ops
		reordered bool
	}{{
		name: "interleaved enrolments become one run per table, parents first",
		changes: []pgcourier.Change{
			ins(rels["requisition"], "9", "a", "x"), // a requisition of an existing visit comes first
			ins(rels["subject"], "1", "a", "x"), ins(rels["visit"], "1", "a", "x"), ins(rels["requisition"], "1", "a", "x"),
			ins(rels["subject"], "2", "b", "y"), ins(rels["visit"], "2", "b", "y"), del(rels["requisition"], "1", "NULL", "NULL"),
			upd(rels["visit"], "3", "c", "z"),
		},
		want:      []string{"subject:II", "visit:IIU", "requisition:II", "requisition:D"},
		reordered: true,
	}, {
		name: "a delete of a referenced row keeps the source order",
		changes: []pgcourier.Change{
			ins(rels["subject"], "1", "a", "x"), ins(rels["visit"], "1", "a", "x"),
			del(rels["subject"], "2", "NULL", "NULL"), ins(rels["visit"], "2", "b", "y"),
		},
		want: []string{"subject:I", "visit:I", "subject:D", "visit:I"},
	}, {
		name:    "one table: nothing to reorder",
		changes: []pgcourier.Change{ins(rels["visit"], "1", "a", "x"), ins(rels["visit"], "2", "b", "y")},
		want:    []string{"visit:II"},
	}, {
		name: "rows touched again: one run per layer, each row's changes in order",
		changes: []pgcourier.Change{
			ins(rels["visit"], "1", "a", "x"), upd(rels["visit"], "1", "b", "x"), ins(rels["visit"], "2", "a", "y"),
			upd(rels["visit"], "2", "b", "y"), upd(rels["visit"], "1", "c", "x"), ins(rels["visit"], "3", "a", "z"),
			ins(rels["note"], "1", "a", "x"), del(rels["note"], "1", "NULL", "NULL"), ins(rels["note"], "1", "b", "x"),
		},
		want:      []string{"visit:III", "visit:UU", "visit:U", "note:I", "note:D", "note:I"},
		reordered: true,
	}, {
		name: "a key whose text does not name its row keeps its table's order",
		changes: []pgcourier.Change{
			ins(rels["price"], "1.0", "a", "x"), del(rels["price"], "1.0", "NULL", "NULL"),
			upd(rels["price"], "5", "b", "UNCHANGED"), ins(rels["price"], "1.00", "c", "y"),
		},
		want: []string{"price:I", "price:DU", "price:I"},
	}, {
		name: "a table with another unique index keeps its order",
		changes: []pgcourier.Change{
			ins(rels["unique"], "1", "a", "x"), upd(rels["unique"], "1", "b", "x"), ins(rels["unique"], "2", "a", "y"),
		},
		want: []string{"unique:I", "unique:UI"},
	}, {
		name: "a row moved to another key keeps its table's order",
		changes: []pgcourier.Change{
			ins(rels["note"], "1", "a", "x"), upd(rels["note"], "1", "b", "x"), ins(rels["note"], "2", "a", "y"),
			updOld(rels["note"], []string{"3", "c", "y"}, []string{"2", "NULL", "NULL"}),
		},
		want: []string{"note:I", "note:UI", "note:U"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plans := map[*pgcourier.Relation]*relPlan{}
			for name, r := range rels {
				p, err := planRelation(r, tables[name], LastWriterWins)
				if err != nil {
					t.Fatal(err)
				}
				plans[r] = p
			}
			var txs []pgcourier.Transaction
			for i, ch := range tt.changes {
				txs = append(txs, txn(at(i), ch))
			}
			runs, reordered := planRuns(batch("laptop-07", 1, txs...), plans, false)
			var got []string
			for _, r := range runs {
				var ops strings.Builder
				for _, it := range r.items {
					ops.WriteByte(byte(it.ch.Op))
				}
				got = append(got, r.p.t.Name+":"+ops.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("runs (-want +got):\n%s", diff)
			}
			if reordered != tt.reordered {
				t.Errorf("reordered = %t, want %t", reordered, tt.reordered)
			}
			// The cautious plan keeps the source order.
			cautious, moved := planRuns(batch("laptop-07", 1, txs...), plans, true)
			pos := int32(0)
			for _, r := range cautious {
				for _, it := range r.items {
					if it.pos != pos {
						t.Fatalf("cautious plan: change %d at position %d", it.pos, pos)
					}
					pos++
				}
			}
			if moved {
				t.Errorf("cautious plan reports a reordering")
			}
		})
	}
}

// BenchmarkPlanRuns plans a batch of 10,000 inserts of one table, and one
// of an edc mix over three linked tables.
func BenchmarkPlanRuns(b *testing.B) {
	const pk = `[{"columns": ["id"], "primary": true, "unique": true}]`
	mk := func(name string, oid uint32, links string) *table {
		tb := testTable(b, name, pk)
		tb.OID = oid
		if err := tb.link(links); err != nil {
			b.Fatal(err)
		}
		return tb
	}
	subject := mk("subject", 1, `{"parents": [], "referenced": true}`)
	visit := mk("visit", 2, `{"parents": [1], "referenced": true}`)
	req := mk("requisition", 3, `{"parents": [2], "referenced": false}`)
	rels := map[*table]*pgcourier.Relation{}
	plans := map[*pgcourier.Relation]*relPlan{}
	for _, t := range []*table{subject, visit, req} {
		r := relation(t.Name, "id integer key", "code text", "note text")
		p, err := planRelation(r, t, LastWriterWins)
		if err != nil {
			b.Fatal(err)
		}
		rels[t], plans[r] = r, p
	}
	var inserts, mix []pgcourier.Transaction
	for i := range 10_000 {
		id := fmt.Sprint(i)
		inserts = append(inserts, txn(at(i), ins(rels[subject], id, "a", "x")))
		switch i % 4 {
		case 0:
			mix = append(mix, txn(at(i), ins(rels[subject], id, "a", "x"), ins(rels[visit], id, "a", "x")))
		case 1:
			mix = append(mix, txn(at(i), ins(rels[req], id, "a", "x")))
		case 2:
			mix = append(mix, txn(at(i), upd(rels[visit], fmt.Sprint(i-2), "b", "y")))
		default:
			mix = append(mix, txn(at(i), del(rels[req], fmt.Sprint(i-2), "NULL", "NULL")))
		}
	}
	for _, bc := range []struct {
		name string
		txs  []pgcourier.Transaction
	}{{"inserts", inserts}, {"mix", mix}} {
		name, txs := bc.name, bc.txs
		bt := batch("laptop-07", 1, txs...)
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				planRuns(bt, plans, false)
			}
		})
	}
}
