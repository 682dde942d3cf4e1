package apply

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

// TestSchemasAsTheyAre applies batches to upstream tables that differ from
// the source's in the ways real schemas do, each scenario on its own table.
func TestSchemasAsTheyAre(t *testing.T) {
	tests := []struct {
		name    string
		setup   string
		batches func(seq func() uint64) []*pgcourier.Batch
		between []string // SQL run after each batch but the last
		query   string
		want    []string
	}{{
		name: "columns are matched by name; an upstream-only column keeps its default",
		setup: `CREATE TABLE s1 (extra text DEFAULT 'dflt', name text, id int PRIMARY KEY,
		                     made timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00')`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s1", "id integer key", "name text")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1), ins(r, "1", "ann"), upd(r, "1", "anne")))}
		},
		query: `SELECT id, name, extra, made FROM s1`,
		want:  []string{"1|anne|dflt|2020-01-01 00:00:00+00"},
	}, {
		name:  "generated columns are never written",
		setup: `CREATE TABLE s2 (id int PRIMARY KEY, kg numeric, g numeric GENERATED ALWAYS AS (kg * 1000) STORED)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s2", "id integer key", "kg numeric", "g numeric")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1), ins(r, "1", "2.5", "7"), upd(r, "1", "3", "7")))}
		},
		query: `SELECT id, kg, g FROM s2`,
		want:  []string{"1|3|3000"},
	}, {
		name:  "GENERATED ALWAYS identity values from the source are kept",
		setup: `CREATE TABLE s3 (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s3", "id integer key", "name text")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1), ins(r, "500", "ann"), ins(r, "7", "bob"), upd(r, "500", "anne")))}
		},
		query: `SELECT id, name FROM s3 ORDER BY id`,
		want:  []string{"7|bob", "500|anne"},
	}, {
		name:  "REPLICA IDENTITY FULL without a key: one row per change, NULL matches NULL",
		setup: `CREATE TABLE s4 (at int, what text); ALTER TABLE s4 REPLICA IDENTITY FULL`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s4", "at integer key", "what text key")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1),
				ins(r, "1", "x"), ins(r, "1", "x"), ins(r, "1", "x"), ins(r, "2", "NULL"), ins(r, "3", "NULL"),
				del(r, "1", "x"),
				updOld(r, []string{"2", "two"}, []string{"2", "NULL"}),
				del(r, "3", "NULL"),
				del(r, "9", "nothing"),
				updOld(r, []string{"1", "y"}, []string{"1", "x"}),
			))}
		},
		query: `SELECT at, what FROM s4 ORDER BY at, what`,
		want:  []string{"1|x", "1|y", "2|two"},
	}, {
		name:  "a key-changing update moves the row; keys swap in source order",
		setup: `CREATE TABLE s5 (id int PRIMARY KEY, name text)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s5", "id integer key", "name text")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1),
				ins(r, "1", "one"), ins(r, "2", "two"),
				updOld(r, []string{"3", "one"}, []string{"1", "NULL"}),
				updOld(r, []string{"1", "two"}, []string{"2", "NULL"}),
				updOld(r, []string{"2", "one"}, []string{"3", "NULL"}),
			))}
		},
		query: `SELECT id, name FROM s5 ORDER BY id`,
		want:  []string{"1|two", "2|one"},
	}, {
		name:  "a unique value moves between rows in source order",
		setup: `CREATE TABLE s6 (id int PRIMARY KEY, code text UNIQUE)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s6", "id integer key", "code text")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1),
				ins(r, "1", "X"), ins(r, "2", "Y"),
				upd(r, "1", "Z"), upd(r, "2", "X"), upd(r, "1", "Y"),
				del(r, "2", "NULL"), ins(r, "3", "X"),
				ins(r, "4", "W"), ins(r, "5", "V"),
			))}
		},
		query: `SELECT id, code FROM s6 ORDER BY id`,
		want:  []string{"1|Y", "3|X", "4|W", "5|V"},
	}, {
		name: "deferrable foreign keys are checked at the batch's commit",
		setup: `CREATE TABLE s7p (id int PRIMARY KEY);
		        CREATE TABLE s7c (id int PRIMARY KEY, p int REFERENCES s7p DEFERRABLE INITIALLY IMMEDIATE)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			p := relation("s7p", "id integer key")
			c := relation("s7c", "id integer key", "p integer")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1), ins(c, "1", "10")), txn(at(2), ins(p, "10")))}
		},
		query: `SELECT c.id, p.id FROM s7c c JOIN s7p p ON p.id = c.p`,
		want:  []string{"1|10"},
	}, {
		name: "a delete of a row an upstream cascade already removed is not an error",
		setup: `CREATE TABLE s8p (id int PRIMARY KEY);
		        CREATE TABLE s8c (id int PRIMARY KEY, p int REFERENCES s8p ON DELETE CASCADE)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			p := relation("s8p", "id integer key")
			c := relation("s8c", "id integer key", "p integer")
			return []*pgcourier.Batch{batch("laptop-07", seq(),
				txn(at(1), ins(p, "1"), ins(c, "1", "1"), ins(c, "2", "1")),
				txn(at(2), del(p, "1"), del(c, "1", "NULL"), del(c, "2", "NULL")),
			)}
		},
		query: `SELECT (SELECT count(*) FROM s8p), (SELECT count(*) FROM s8c), (SELECT count(*) FROM pgcourier.conflicts WHERE table_name LIKE 's8%')`,
		want:  []string{"0|0|0"},
	}, {
		name:  "columns added and dropped mid-stream are followed",
		setup: `CREATE TABLE s9 (id int PRIMARY KEY, agreed bool)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			v1 := relation("s9", "id integer key", "agreed boolean")
			v2 := relation("s9", "id integer key", "agreed boolean", "witness text")
			v3 := relation("s9", "id integer key", "witness text")
			return []*pgcourier.Batch{
				batch("laptop-07", seq(), txn(at(1), ins(v1, "1", "t"), upd(v1, "1", "f"))),
				batch("laptop-07", seq(), txn(at(2), ins(v1, "2", "t")), txn(at(3), ins(v2, "3", "f", "nurse"), upd(v2, "1", "t", "clerk"))),
				batch("laptop-07", seq(), txn(at(4), upd(v3, "2", "doctor"), ins(v3, "4", "nurse"))),
				batch("laptop-07", seq(), txn(at(5), ins(v3, "5", "again"))),
			}
		},
		between: []string{
			`ALTER TABLE s9 ADD COLUMN witness text`,
			`ALTER TABLE s9 DROP COLUMN agreed`,
			// Same shape, new table: statements prepared for the old one
			// must not linger.
			`DROP TABLE s9; CREATE TABLE s9 (note text, witness text, id int PRIMARY KEY)`,
		},
		query: `SELECT id, witness FROM s9 ORDER BY id`,
		want:  []string{"5|again"},
	}, {
		name:  "a column whose type changes upstream between batches",
		setup: `CREATE TABLE s10 (id int PRIMARY KEY, score int)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s10", "id integer key", "score integer")
			// The type change rewrites the table: its rows then count as
			// written locally, now. The update comes later than that.
			later := time.Now().Add(time.Hour)
			return []*pgcourier.Batch{
				batch("laptop-07", seq(), txn(at(1), ins(r, "1", "5"))),
				batch("laptop-07", seq(), txn(later, ins(r, "2", "6"), upd(r, "1", "7"))),
			}
		},
		between: []string{`ALTER TABLE s10 ALTER COLUMN score TYPE numeric(6,2)`},
		query:   `SELECT id, score FROM s10 ORDER BY id`,
		want:    []string{"1|7.00", "2|6.00"},
	}, {
		name:  "REPLICA IDENTITY FULL source, primary key upstream",
		setup: `CREATE TABLE s11 (id int PRIMARY KEY, name text)`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s11", "id integer key", "name text key")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1),
				ins(r, "1", "a"), ins(r, "2", "b"),
				updOld(r, []string{"1", "aa"}, []string{"1", "a"}),
				updOld(r, []string{"2", "bb"}, []string{"2", "b"}),
				del(r, "2", "bb"),
			))}
		},
		query: `SELECT id, name FROM s11 ORDER BY id`,
		want:  []string{"1|aa"},
	}, {
		name: "partitioned table upstream",
		setup: `CREATE TABLE s12 (id int, taken date, v text, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken);
		        CREATE TABLE s12_a PARTITION OF s12 FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
		        CREATE TABLE s12_b PARTITION OF s12 FOR VALUES FROM ('2026-07-01') TO ('2027-01-01')`,
		batches: func(seq func() uint64) []*pgcourier.Batch {
			r := relation("s12", "id integer key", "taken date key", "v text")
			return []*pgcourier.Batch{batch("laptop-07", seq(), txn(at(1),
				ins(r, "1", "2026-02-01", "a"), ins(r, "2", "2026-08-01", "b"),
				upd(r, "1", "2026-02-01", "aa"),
				updOld(r, []string{"2", "2026-03-01", "moved"}, []string{"2", "2026-08-01", "NULL"}),
				del(r, "1", "2026-02-01", "NULL"),
			))}
		},
		query: `SELECT tableoid::regclass, id, taken, v FROM s12`,
		want:  []string{"s12_a|2|2026-03-01|moved"},
	}}

	c, w := upstream(t, "")
	var n uint64
	seq := func() uint64 { n++; return n }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Exec(t, tt.setup)
			bs := tt.batches(seq)
			for i, b := range bs {
				if res := mustApply(t, w, b); res.Status != Applied || res.Conflicts != 0 {
					t.Fatalf("Apply(batch %d) = %v, %d conflicts (err %v); want applied without conflicts", i, res.Status, res.Conflicts, res.Err)
				}
				if i < len(tt.between) {
					c.Exec(t, tt.between[i])
				}
			}
			if diff := cmp.Diff(tt.want, query(t, c, tt.query)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tt.query, diff)
			}
		})
	}
}

// TestTruncateAllowed applies a TRUNCATE from a source the options allow.
func TestTruncateAllowed(t *testing.T) {
	c, w := upstream(t, subjectTable, Options{AllowTruncate: []string{"server-1"}})
	wantStatus(t, w, batch("server-1", 1, txn(at(1), ins(subject, "1", "a", "NULL"))), Applied)
	wantStatus(t, w, batch("laptop-07", 1, txn(at(2), ins(subject, "2", "b", "NULL"))), Applied)
	wantStatus(t, w, batch("laptop-07", 2, txn(at(3), truncate(subject))), Applied)
	if got := query(t, c, `SELECT count(*), (SELECT count(*) FROM pgcourier.conflicts WHERE rule = 'truncate') FROM subject`); got[0] != "2|1" {
		t.Errorf("after a client's TRUNCATE: rows|conflicts = %s, want 2|1", got[0])
	}
	wantStatus(t, w, batch("server-1", 2, txn(at(4), truncate(subject), ins(subject, "3", "c", "NULL"))), Applied)
	if diff := cmp.Diff([]string{"3|c|NULL"}, query(t, c, `SELECT * FROM subject`)); diff != "" {
		t.Errorf("after an allowed TRUNCATE (-want +got):\n%s", diff)
	}
}
