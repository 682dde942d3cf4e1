package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// TestBlocked checks that a batch the upstream database cannot take is
// refused whole, with an error naming the table and the column, recorded in
// pgcourier.blocked, retried with a growing wait, and applied once the
// cause is fixed, while another source keeps going.
func TestBlocked(t *testing.T) {
	tests := []struct {
		name     string
		setup    string
		rel      *pgcourier.Relation
		changes  []string // rows inserted, in order
		table    string
		column   string
		sqlstate string
		fix      string
	}{{
		name:     "missing table",
		rel:      relation("visit", "id integer key", "weight integer"),
		changes:  []string{"1,60"},
		table:    "public.visit",
		sqlstate: "42P01",
		fix:      `CREATE TABLE visit (id int PRIMARY KEY, weight int)`,
	}, {
		name:     "missing column",
		setup:    `CREATE TABLE consent (id int PRIMARY KEY)`,
		rel:      relation("consent", "id integer key", "witness text"),
		changes:  []string{"1,nurse"},
		table:    "public.consent",
		column:   "witness",
		sqlstate: "42703",
		fix:      `ALTER TABLE consent ADD COLUMN witness text`,
	}, {
		name:     "value the upstream type refuses",
		setup:    `CREATE TABLE weighing (id int PRIMARY KEY, note text, weight int)`,
		rel:      relation("weighing", "id integer key", "note text", "weight text"),
		changes:  []string{"1,ok,60", "2,ok,heavy"},
		table:    "public.weighing",
		column:   "weight",
		sqlstate: "22P02",
		fix:      `ALTER TABLE weighing ALTER COLUMN weight TYPE text`,
	}, {
		name:     "value too long for the upstream column",
		setup:    `CREATE TABLE code (id int PRIMARY KEY, short varchar(3), long varchar(4))`,
		rel:      relation("code", "id integer key", "short text", "long text"),
		changes:  []string{"1,abc,abcd", "2,abc,abcde"},
		table:    "public.code",
		column:   "long",
		sqlstate: "22001",
		fix:      `ALTER TABLE code ALTER COLUMN long TYPE text`,
	}, {
		name:     "domain check",
		setup:    `CREATE DOMAIN positive AS int CHECK (VALUE > 0); CREATE TABLE dose (id int PRIMARY KEY, amount positive)`,
		rel:      relation("dose", "id integer key", "amount integer"),
		changes:  []string{"1,5", "2,-5"},
		table:    "public.dose",
		column:   "amount",
		sqlstate: "23514",
		fix:      `ALTER DOMAIN positive DROP CONSTRAINT positive_check`,
	}, {
		name:     "unique violation",
		setup:    `CREATE TABLE tag (id int PRIMARY KEY, code text UNIQUE); INSERT INTO tag VALUES (100, 'X')`,
		rel:      relation("tag", "id integer key", "code text"),
		changes:  []string{"1,A", "2,X"},
		table:    "public.tag",
		column:   "code",
		sqlstate: "23505",
		fix:      `DELETE FROM tag WHERE id = 100`,
	}, {
		name:     "not null",
		setup:    `CREATE TABLE person (id int PRIMARY KEY, name text NOT NULL)`,
		rel:      relation("person", "id integer key", "name text"),
		changes:  []string{"1,NULL"},
		table:    "public.person",
		column:   "name",
		sqlstate: "23502",
		fix:      `ALTER TABLE person ALTER COLUMN name DROP NOT NULL`,
	}, {
		name: "deferred foreign key, checked at commit",
		setup: `CREATE TABLE household (id int PRIMARY KEY);
		        CREATE TABLE member (id int PRIMARY KEY, household int REFERENCES household DEFERRABLE)`,
		rel:      relation("member", "id integer key", "household integer"),
		changes:  []string{"1,7"},
		table:    "public.member",
		column:   "household",
		sqlstate: "23503",
		fix:      `INSERT INTO household VALUES (7)`,
	}}

	c, w := upstream(t, subjectTable)
	ctx := context.Background()
	otherSeq := uint64(0)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != "" {
				c.Exec(t, tt.setup)
			}
			source := fmt.Sprintf("laptop-%d", i)
			var chs []pgcourier.Change
			// A change that would apply comes first: nothing of the batch
			// may stay behind.
			chs = append(chs, ins(subject, fmt.Sprint(1000+i), source, "NULL"))
			for _, row := range tt.changes {
				chs = append(chs, ins(tt.rel, strings.Split(row, ",")...))
			}
			bt := batch(source, 1, txn(at(1), chs...))

			res := wantStatus(t, w, bt, Blocked)
			var be *BlockedError
			if !errors.As(res.Err, &be) {
				t.Fatalf("Blocked err = %T %v, want a *BlockedError", res.Err, res.Err)
			}
			if be.Table != tt.table || be.Column != tt.column || be.SQLState != tt.sqlstate || be.Hint == "" {
				t.Errorf("BlockedError = table %q column %q SQLSTATE %s hint %q; want table %q column %q SQLSTATE %s and a hint",
					be.Table, be.Column, be.SQLState, be.Hint, tt.table, tt.column, tt.sqlstate)
			}
			t.Logf("%v; hint: %s", be, be.Hint)
			msg := be.Error()
			if !strings.Contains(msg, tt.table) || !strings.Contains(msg, tt.column) {
				t.Errorf("BlockedError.Error() = %q, want it to name %s and %s", msg, tt.table, tt.column)
			}
			if res.RetryAfter != time.Second || res.NextSeq != 1 {
				t.Errorf("first Blocked result: retry after %v, next seq %d; want 1s, 1", res.RetryAfter, res.NextSeq)
			}
			if got := query(t, c, `SELECT count(*) FROM subject WHERE id = $1`, 1000+i); got[0] != "0" {
				t.Errorf("the batch's first change was left behind")
			}

			// Another source goes on meanwhile.
			otherSeq++
			wantStatus(t, w, batch("laptop-other", otherSeq, txn(at(1), ins(subject, fmt.Sprint(2000+i), "other", "NULL"))), Applied)

			res = wantStatus(t, w, bt, Blocked)
			if res.RetryAfter != 2*time.Second {
				t.Errorf("second attempt: retry after %v, want 2s", res.RetryAfter)
			}
			got := query(t, c, `SELECT seq, sqlstate, table_name, coalesce(column_name, ''), attempts, error = $2, hint <> '', retry_at > last_at
			                      FROM pgcourier.blocked WHERE source = $1`, source, res.Err.Error())
			want := []string{fmt.Sprintf("1|%s|%s|%s|2|t|t|t", tt.sqlstate, tt.table, tt.column)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("pgcourier.blocked (-want +got):\n%s", diff)
			}
			if p, err := w.Progress(ctx, source); err != nil || p.Blocked != res.Err.Error() {
				t.Errorf("Progress = %+v, %v; want the blocked error", p, err)
			}

			c.Exec(t, tt.fix)
			wantStatus(t, w, bt, Applied)
			if got := query(t, c, `SELECT count(*) FROM pgcourier.blocked WHERE source = $1`, source); got[0] != "0" {
				t.Errorf("pgcourier.blocked still holds the source after its batch applied")
			}
		})
	}
}

// TestBlockedOnOriginSlots checks the error when the server has no
// replication state slot left for another source's origin.
func TestBlockedOnOriginSlots(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Settings: map[string]string{"max_replication_slots": "1", "max_wal_senders": "1"}})
	migrate(t, c)
	c.Exec(t, subjectTable)
	w := newWriter(t, c)
	wantStatus(t, w, batch("laptop-1", 1, txn(at(1), ins(subject, "1", "a", "NULL"))), Applied)
	res := wantStatus(t, w, batch("laptop-2", 1, txn(at(1), ins(subject, "2", "b", "NULL"))), Blocked)
	var be *BlockedError
	if !errors.As(res.Err, &be) || be.SQLState != "53400" || !strings.Contains(be.Hint, "max_replication_slots") {
		t.Errorf("Apply from a source without an origin slot = %v, want SQLSTATE 53400 with a hint about max_replication_slots", res.Err)
	}
}

// TestPark parks a blocked batch: its changes go whole into
// pgcourier.conflicts, the source's progress moves past it, and the next
// batch applies.
func TestPark(t *testing.T) {
	c, w := upstream(t, subjectTable+`; CREATE TABLE visit (id int PRIMARY KEY, weight int)`)
	ctx := context.Background()
	visit := relation("visit", "id integer key", "weight text")
	b1 := batch("laptop-07", 1,
		txn(at(1), ins(subject, "1", "ann", "NULL")),
		txn(at(2), ins(visit, "1", "heavy"), upd(subject, "1", "anne", "UNCHANGED")),
	)
	wantStatus(t, w, b1, Blocked)

	if err := w.Park(ctx, "laptop-07", 1, 2, nil, "skip"); !errors.Is(err, ErrNotNext) {
		t.Errorf("Park(seq 2 before 1) = %v, want ErrNotNext", err)
	}
	if err := w.Park(ctx, "laptop-07", 1, 1, b1, "weight is not a number"); err != nil {
		t.Fatalf("Park: %v", err)
	}
	want := []string{
		`laptop-07|1|0|subject|insert|parked|{"id": "1", "name": "ann", "note": null}|NULL|NULL|weight is not a number`,
		`laptop-07|1|1|visit|insert|parked|{"id": "1", "weight": "heavy"}|NULL|NULL|weight is not a number`,
		`laptop-07|1|2|subject|update|parked|{"id": "1", "name": "anne"}|NULL|{note}|weight is not a number`,
	}
	got := query(t, c, `SELECT source, seq, position, table_name, op, rule, incoming, incoming_old, unchanged, detail FROM pgcourier.conflicts ORDER BY position`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("conflicts after Park (-want +got):\n%s", diff)
	}
	if got := query(t, c, `SELECT applied_seq, rows, conflicts FROM pgcourier.source_progress`); !cmp.Equal(got, []string{"1|3|3"}) {
		t.Errorf("progress after Park = %v, want seq 1, 3 rows, 3 conflicts", got)
	}
	if got := query(t, c, `SELECT count(*) FROM pgcourier.blocked`); got[0] != "0" {
		t.Errorf("pgcourier.blocked keeps %s rows after Park, want 0", got[0])
	}
	if got := query(t, c, `SELECT count(*) FROM subject`); got[0] != "0" {
		t.Errorf("Park applied %s rows, want none", got[0])
	}
	wantStatus(t, w, b1, Duplicate)
	if err := w.Park(ctx, "laptop-07", 1, 1, b1, "again"); !errors.Is(err, ErrNotNext) {
		t.Errorf("Park(again) = %v, want ErrNotNext", err)
	}
	wantStatus(t, w, batch("laptop-07", 2, txn(at(3), ins(subject, "2", "bob", "NULL"))), Applied)

	// Without the batch at hand, one row records the park.
	if err := w.Park(ctx, "laptop-07", 1, 3, nil, "lost on the way"); err != nil {
		t.Fatalf("Park(nil batch): %v", err)
	}
	got = query(t, c, `SELECT seq, position, op, rule, detail FROM pgcourier.conflicts WHERE seq = 3`)
	if diff := cmp.Diff([]string{"3|NULL|batch|parked|lost on the way (the batch's contents were not at hand)"}, got); diff != "" {
		t.Errorf("conflicts of a park without the batch (-want +got):\n%s", diff)
	}
	if got := query(t, c, `SELECT applied_seq FROM pgcourier.source_progress`); got[0] != "3" {
		t.Errorf("applied seq = %s after parking 3, want 3", got[0])
	}
}
