package apply

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

// step is one event of a last-writer scenario: a batch of one transaction
// from source A or B committed at a time, or a local edit made upstream.
type step struct {
	src    string // "A" or "B"; "" for the local edit in sql
	when   time.Time
	chs    func(r *pgcourier.Relation) []pgcourier.Change
	sql    string // a local edit: %s is the table
	status Status // of the batch; zero means Applied
}

func a(when time.Time, chs func(r *pgcourier.Relation) []pgcourier.Change) step {
	return step{src: "A", when: when, chs: chs}
}

func b(when time.Time, chs func(r *pgcourier.Relation) []pgcourier.Change) step {
	return step{src: "B", when: when, chs: chs}
}

func local(sql string) step { return step{sql: sql} }

func one(f func(r *pgcourier.Relation) pgcourier.Change) func(r *pgcourier.Relation) []pgcourier.Change {
	return func(r *pgcourier.Relation) []pgcourier.Change { return []pgcourier.Change{f(r)} }
}

// TestLastWriterBySource runs each scenario on its own table and checks the
// rows that remain and the conflicts recorded: source, op, rule, incoming
// row, stored row and who wrote it. Sources A and B sort in that order, so
// B wins ties.
func TestLastWriterBySource(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	row1 := func(name, note string) func(r *pgcourier.Relation) pgcourier.Change {
		return func(r *pgcourier.Relation) pgcourier.Change { return ins(r, "1", name, note) }
	}
	set1 := func(name, note string) func(r *pgcourier.Relation) pgcourier.Change {
		return func(r *pgcourier.Relation) pgcourier.Change { return upd(r, "1", name, note) }
	}
	del1 := func(r *pgcourier.Relation) pgcourier.Change { return del(r, "1", "NULL", "NULL") }

	tests := []struct {
		name      string
		policy    Policy
		steps     []step
		rows      []string
		conflicts []string
	}{{
		name:  "newer commit time from another source wins",
		steps: []step{a(at(1), one(row1("ann", "a"))), b(at(5), one(set1("anne", "b")))},
		rows:  []string{"1|anne|b"},
	}, {
		name:      "older commit time from another source loses",
		steps:     []step{a(at(10), one(row1("ann", "a"))), b(at(5), one(set1("anne", "b")))},
		rows:      []string{"1|ann|a"},
		conflicts: []string{`B|update|last_writer|{"id": "1", "name": "anne", "note": "b"}|{"id": "1", "name": "ann", "note": "a"}|A`},
	}, {
		name:  "tie: the greater source id wins",
		steps: []step{a(at(5), one(row1("ann", "a"))), b(at(5), one(set1("anne", "b")))},
		rows:  []string{"1|anne|b"},
	}, {
		name:      "tie: the lesser source id loses",
		steps:     []step{b(at(5), one(row1("ann", "b"))), a(at(5), one(set1("anne", "a")))},
		rows:      []string{"1|ann|b"},
		conflicts: []string{`A|update|last_writer|{"id": "1", "name": "anne", "note": "a"}|{"id": "1", "name": "ann", "note": "b"}|B`},
	}, {
		name:  "same source applies whatever its commit time",
		steps: []step{a(at(10), one(row1("ann", "a"))), a(at(5), one(set1("anne", "a2")))},
		rows:  []string{"1|anne|a2"},
	}, {
		name: "identical row is a no-op, even when older",
		steps: []step{
			a(at(10), one(row1("ann", "a"))),
			b(at(5), one(set1("ann", "a"))),
			b(at(6), one(row1("ann", "a"))),
		},
		rows: []string{"1|ann|a"},
	}, {
		name:      "insert of an existing key from another source is a key collision",
		steps:     []step{a(at(1), one(row1("ann", "a"))), b(at(9), one(row1("bob", "b")))},
		rows:      []string{"1|ann|a"},
		conflicts: []string{`B|insert|key_collision|{"id": "1", "name": "bob", "note": "b"}|{"id": "1", "name": "ann", "note": "a"}|A`},
	}, {
		name:  "insert of an existing key from the same source overwrites",
		steps: []step{a(at(1), one(row1("ann", "a"))), a(at(2), one(row1("anne", "a2")))},
		rows:  []string{"1|anne|a2"},
	}, {
		name:      "delete older than another source's update loses",
		steps:     []step{a(at(1), one(row1("ann", "a"))), b(at(10), one(set1("anne", "b"))), a(at(5), one(del1))},
		rows:      []string{"1|anne|b"},
		conflicts: []string{`A|delete|last_writer|{"id": "1"}|{"id": "1", "name": "anne", "note": "b"}|B`},
	}, {
		name:  "delete newer than another source's update wins",
		steps: []step{a(at(1), one(row1("ann", "a"))), b(at(10), one(set1("anne", "b"))), a(at(20), one(del1))},
	}, {
		name:  "update older than another source's delete recreates the row",
		steps: []step{a(at(1), one(row1("ann", "a"))), a(at(10), one(del1)), b(at(5), one(set1("anne", "b")))},
		rows:  []string{"1|anne|b"},
	}, {
		name:  "delete of a row already gone is nothing",
		steps: []step{a(at(1), one(del1))},
	}, {
		name:  "upstream local edit, then a later field edit from a source",
		steps: []step{a(at(1), one(row1("ann", "a"))), local(`UPDATE %s SET note = 'local' WHERE id = 1`), a(now.Add(time.Hour), one(set1("anne", "later")))},
		rows:  []string{"1|anne|later"},
	}, {
		name:      "upstream local edit, then an earlier field edit from a source",
		steps:     []step{a(at(1), one(row1("ann", "a"))), local(`UPDATE %s SET note = 'local' WHERE id = 1`), a(at(2), one(set1("anne", "earlier")))},
		rows:      []string{"1|ann|local"},
		conflicts: []string{`A|update|last_writer|{"id": "1", "name": "anne", "note": "earlier"}|{"id": "1", "name": "ann", "note": "local"}|` + testNode},
	}, {
		name:      "row inserted upstream locally collides with a source's insert",
		steps:     []step{local(`INSERT INTO %s VALUES (1, 'loc', NULL)`), a(at(1), one(row1("ann", "a")))},
		rows:      []string{"1|loc|NULL"},
		conflicts: []string{`A|insert|key_collision|{"id": "1", "name": "ann", "note": "a"}|{"id": "1", "name": "loc", "note": null}|` + testNode},
	}, {
		name: "TOAST-unchanged update of a missing row needs a resync",
		steps: []step{b(at(1), one(func(r *pgcourier.Relation) pgcourier.Change {
			return upd(r, "1", "anne", "UNCHANGED")
		}))},
		conflicts: []string{`B|update|needs_resync|{"id": "1", "name": "anne"}|NULL|NULL`},
	}, {
		name: "TOAST-unchanged update keeps the stored value",
		steps: []step{a(at(1), one(row1("ann", "long note"))), a(at(2), one(func(r *pgcourier.Relation) pgcourier.Change {
			return upd(r, "1", "anne", "UNCHANGED")
		}))},
		rows: []string{"1|anne|long note"},
	}, {
		name:  "update of a missing row carrying every value inserts it",
		steps: []step{b(at(1), one(set1("anne", "b")))},
		rows:  []string{"1|anne|b"},
	}, {
		name:      "TRUNCATE from a client is refused",
		steps:     []step{a(at(1), one(row1("ann", "a"))), b(at(2), one(func(r *pgcourier.Relation) pgcourier.Change { return truncate(r) }))},
		rows:      []string{"1|ann|a"},
		conflicts: []string{`B|truncate|truncate|NULL|NULL|NULL`},
	}, {
		name:   "reject policy: a newer change from another source is a conflict",
		policy: Reject,
		steps:  []step{a(at(1), one(row1("ann", "a"))), b(at(5), one(set1("anne", "b"))), b(at(6), one(del1))},
		rows:   []string{"1|ann|a"},
		conflicts: []string{
			`B|update|reject|{"id": "1", "name": "anne", "note": "b"}|{"id": "1", "name": "ann", "note": "a"}|A`,
			`B|delete|reject|{"id": "1"}|{"id": "1", "name": "ann", "note": "a"}|A`,
		},
	}, {
		name:   "reject policy: the same source applies",
		policy: Reject,
		steps:  []step{a(at(1), one(row1("ann", "a"))), a(at(5), one(set1("anne", "a2")))},
		rows:   []string{"1|anne|a2"},
	}}

	policies := map[string]Policy{}
	for i, tt := range tests {
		if tt.policy != "" {
			policies[fmt.Sprintf("public.t%d", i)] = tt.policy
		}
	}
	c, w := upstream(t, "", Options{Policies: policies})
	// Two sources for every scenario: each source takes one of the
	// server's replication origin slots (max_replication_slots).
	names := map[string]string{"A": "laptop-a", "B": "laptop-b"}
	seq := map[string]uint64{}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := fmt.Sprintf("t%d", i)
			c.Exec(t, fmt.Sprintf(`CREATE TABLE %s (id int PRIMARY KEY, name text, note text)`, table))
			r := relation(table, "id integer key", "name text", "note text")
			for _, s := range tt.steps {
				if s.src == "" {
					c.Exec(t, fmt.Sprintf(s.sql, table))
					continue
				}
				seq[s.src]++
				bt := batch(names[s.src], seq[s.src], pgcourier.Transaction{CommitLSN: pgcourier.LSN(seq[s.src] * 100), CommitTime: s.when, Changes: s.chs(r)})
				want := s.status
				if want == 0 {
					want = Applied
				}
				wantStatus(t, w, bt, want)
			}
			got := query(t, c, fmt.Sprintf(`SELECT id, name, note FROM %s ORDER BY id`, table))
			if diff := cmp.Diff(tt.rows, got); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			got = query(t, c, `SELECT CASE source WHEN $2 THEN 'A' WHEN $3 THEN 'B' END, op, rule, incoming, stored,
			                          CASE stored_source WHEN $2 THEN 'A' WHEN $3 THEN 'B' ELSE stored_source END
			                     FROM pgcourier.conflicts WHERE table_name = $1 ORDER BY id`, table, names["A"], names["B"])
			if diff := cmp.Diff(tt.conflicts, got); diff != "" {
				t.Errorf("conflicts (-want +got):\n%s", diff)
			}
		})
	}
}
