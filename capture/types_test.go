package capture

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// TestCaptureTypes checks that every built-in type is captured with its
// type name and exactly the text Postgres prints for it.
func TestCaptureTypes(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	c.Exec(t, pgtest.TypeSetup)

	var cols []string
	for i, tc := range pgtest.TypeCases {
		cols = append(cols, fmt.Sprintf("c%d %s", i, tc.Type))
	}
	c.Exec(t, `CREATE TABLE typed (id int PRIMARY KEY, `+strings.Join(cols, ", ")+`)`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	rows := 0
	for _, tc := range pgtest.TypeCases {
		rows = max(rows, len(tc.Values))
	}
	for r := range rows {
		names, vals := []string{"id"}, []string{fmt.Sprint(r)}
		for i, tc := range pgtest.TypeCases {
			if r < len(tc.Values) {
				names = append(names, fmt.Sprintf("c%d", i))
				vals = append(vals, tc.Values[r])
			}
		}
		c.Exec(t, fmt.Sprintf(`INSERT INTO typed (%s) VALUES (%s)`, strings.Join(names, ", "), strings.Join(vals, ", ")))
	}

	// What Postgres prints for every value, under the capture's settings.
	conn := c.Connect(t)
	for k, v := range pgcourier.ValueSettings() {
		if _, err := conn.Exec(ctx, fmt.Sprintf("SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	// The simple protocol returns every value in its text output form.
	want := map[string][]*string{}
	res, err := conn.Query(ctx, `SELECT * FROM typed`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		raw := res.RawValues()
		row := make([]*string, len(raw))
		for i, v := range raw {
			if v != nil {
				s := string(v)
				row[i] = &s
			}
		}
		want[*row[0]] = row
	}
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}

	got := waitChanges(t, conn, rows)
	rel := got[0].Rel
	for i, tc := range pgtest.TypeCases {
		var typ string
		if err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = $1`,
			fmt.Sprintf("c%d", i)).Scan(&typ); err != nil {
			t.Fatal(err)
		}
		if rel.Columns[i+1].Type != typ {
			t.Errorf("column c%d (%s) type = %q, want %q", i, tc.Type, rel.Columns[i+1].Type, typ)
		}
	}
	for _, ch := range got {
		id := ch.New[0].Text
		w, ok := want[id]
		if !ok {
			t.Fatalf("captured row id %q that the table does not hold", id)
		}
		for i, v := range ch.New {
			name := "id"
			if i > 0 {
				name = pgtest.TypeCases[i-1].Type
			}
			switch {
			case w[i] == nil && v.Kind != pgcourier.Null:
				t.Errorf("row %s %s = %+v, want NULL", id, name, v)
			case w[i] != nil && (v.Kind != pgcourier.Text || v.Text != *w[i]):
				t.Errorf("row %s %s = %+v, want text %q", id, name, v, *w[i])
			}
		}
	}
}
