package apply

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// textRows reads sql in text form under the value settings and UTC, NULL
// as nil.
func textRows(t *testing.T, conn *pgx.Conn, sql string) [][]*string {
	t.Helper()
	ctx := context.Background()
	settings := pgcourier.ValueSettings()
	settings["timezone"] = "UTC"
	for k, v := range settings {
		if _, err := conn.Exec(ctx, fmt.Sprintf("SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := conn.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out [][]*string
	for rows.Next() {
		var row []*string
		for _, v := range rows.RawValues() {
			if v == nil {
				row = append(row, nil)
				continue
			}
			s := string(v)
			row = append(row, &s)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func toValues(row []*string) []pgcourier.Value {
	vs := make([]pgcourier.Value, len(row))
	for i, v := range row {
		if v == nil {
			vs[i] = null
		} else {
			vs[i] = tv(*v)
		}
	}
	return vs
}

// TestTypesRoundTrip applies rows of every captured type, as the source
// prints them under its own time zone, to an upstream in another time zone,
// and reads them back identical: inserted, updated onto other rows' values,
// and found again by every column of a table without a key.
func TestTypesRoundTrip(t *testing.T) {
	ctx := context.Background()
	cs := pgtest.StartN(t, 2)
	src, dst := cs[0], cs[1]
	migrate(t, dst)
	var cols []string
	for i, tc := range pgtest.TypeCases {
		cols = append(cols, fmt.Sprintf("c%d %s", i, tc.Type))
	}
	ddl := pgtest.TypeSetup + `
		CREATE TABLE typed (id int PRIMARY KEY, ` + strings.Join(cols, ", ") + `);
		CREATE TABLE typed_full (id int, ` + strings.Join(cols, ", ") + `);
		ALTER TABLE typed_full REPLICA IDENTITY FULL;`
	src.Exec(t, ddl)
	dst.Exec(t, ddl)
	src.Exec(t, `ALTER DATABASE postgres SET timezone = 'America/New_York'`)
	dst.Exec(t, `ALTER DATABASE postgres SET timezone = 'Asia/Kolkata'`)

	rows := 0
	for _, tc := range pgtest.TypeCases {
		rows = max(rows, len(tc.Values))
	}
	for r := range rows {
		names, vs := []string{"id"}, []string{fmt.Sprint(r)}
		for i, tc := range pgtest.TypeCases {
			if r < len(tc.Values) {
				names = append(names, fmt.Sprintf("c%d", i))
				vs = append(vs, tc.Values[r])
			}
		}
		src.Exec(t, fmt.Sprintf(`INSERT INTO typed (%s) VALUES (%s)`, strings.Join(names, ", "), strings.Join(vs, ", ")))
	}

	// The relation as capture describes it, and the rows as the source
	// prints them in its own time zone.
	srcConn := src.Connect(t)
	rel := &pgcourier.Relation{Schema: "public", Name: "typed"}
	full := &pgcourier.Relation{Schema: "public", Name: "typed_full"}
	typeRows, err := srcConn.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
	                                      WHERE attrelid = 'typed'::regclass AND attnum > 0 ORDER BY attnum`)
	if err != nil {
		t.Fatal(err)
	}
	for typeRows.Next() {
		var c pgcourier.Column
		if err := typeRows.Scan(&c.Name, &c.Type); err != nil {
			t.Fatal(err)
		}
		rel.Columns = append(rel.Columns, pgcourier.Column{Name: c.Name, Type: c.Type, Key: c.Name == "id"})
		full.Columns = append(full.Columns, pgcourier.Column{Name: c.Name, Type: c.Type, Key: true})
	}
	if err := typeRows.Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := srcConn.Exec(ctx, `SET timezone = 'America/New_York'`); err != nil {
		t.Fatal(err)
	}
	printed := func() [][]*string {
		rs, err := srcConn.Query(ctx, `SELECT * FROM typed ORDER BY id`, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out [][]*string
		for rs.Next() {
			var row []*string
			for _, v := range rs.RawValues() {
				if v == nil {
					row = append(row, nil)
				} else {
					s := string(v)
					row = append(row, &s)
				}
			}
			out = append(out, row)
		}
		return out
	}
	for k, v := range pgcourier.ValueSettings() {
		if _, err := srcConn.Exec(ctx, fmt.Sprintf("SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	source := printed()
	if len(source) != rows || len(source[0]) != len(pgtest.TypeCases)+1 {
		t.Fatalf("source holds %d rows of %d values, want %d rows of %d", len(source), len(source[0]), rows, len(pgtest.TypeCases)+1)
	}

	w := newWriter(t, dst)
	var inserts, fullInserts []pgcourier.Change
	for _, row := range source {
		inserts = append(inserts, pgcourier.Change{Rel: rel, Op: pgcourier.OpInsert, New: toValues(row)})
		fullInserts = append(fullInserts, pgcourier.Change{Rel: full, Op: pgcourier.OpInsert, New: toValues(row)})
	}
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), inserts...), txn(at(1), fullInserts...)), Applied)

	want := textRows(t, src.Connect(t), `SELECT * FROM typed ORDER BY id`)
	dstConn := dst.Connect(t)
	if diff := cmp.Diff(want, textRows(t, dstConn, `SELECT * FROM typed ORDER BY id`)); diff != "" {
		t.Errorf("typed upstream after inserts (-source +upstream):\n%s", diff)
	}
	if diff := cmp.Diff(want, textRows(t, dstConn, `SELECT * FROM typed_full ORDER BY id`)); diff != "" {
		t.Errorf("typed_full upstream after inserts (-source +upstream):\n%s", diff)
	}

	// Every row takes the next row's values (keeping its id), and every row
	// of the table without a key is found by all its columns and deleted.
	var updates, deletes []pgcourier.Change
	for i, row := range source {
		next := toValues(source[(i+1)%len(source)])
		next[0] = toValues(row)[0]
		updates = append(updates, pgcourier.Change{Rel: rel, Op: pgcourier.OpUpdate, New: next})
		deletes = append(deletes, pgcourier.Change{Rel: full, Op: pgcourier.OpDelete, Old: toValues(row)})
	}
	res := wantStatus(t, w, batch("laptop-07", 2, txn(at(2), updates...), txn(at(2), deletes...)), Applied)
	if res.Changes != 2*len(source) {
		t.Errorf("second batch applied %d changes, want %d", res.Changes, 2*len(source))
	}
	for i := range want {
		want[i] = append([]*string{want[i][0]}, textRows(t, src.Connect(t), fmt.Sprintf(`SELECT * FROM typed WHERE id = %d`, (i+1)%len(want)))[0][1:]...)
	}
	if diff := cmp.Diff(want, textRows(t, dstConn, `SELECT * FROM typed ORDER BY id`)); diff != "" {
		t.Errorf("typed upstream after updates (-want +upstream):\n%s", diff)
	}
	if got := textRows(t, dstConn, `SELECT count(*) FROM typed_full`); *got[0][0] != "0" {
		t.Errorf("typed_full keeps %s rows after deleting each by its values, want 0", *got[0][0])
	}
}
