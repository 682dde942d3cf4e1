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

// typeCases are the built-in types a captured value must carry exactly as
// Postgres prints them, each with values at its edges.
var typeCases = []struct {
	typ    string
	values []string // SQL literals
}{
	{"smallint", []string{"-32768", "32767", "0"}},
	{"integer", []string{"-2147483648", "2147483647"}},
	{"bigint", []string{"-9223372036854775808", "9223372036854775807"}},
	{"numeric", []string{"'NaN'", "'123456789012345678901234567890.123456789012345678901234567890'", "'-0.000000000000000000001'", "'1e100'"}},
	{"numeric(10,2)", []string{"'3.14159'", "'-99999999.99'"}},
	{"real", []string{"'Infinity'", "'-Infinity'", "'NaN'", "'-0'", "'3.4028235e38'", "'1.17549435e-38'"}},
	{"double precision", []string{"'Infinity'", "'-0'", "'0.1'", "'2.2250738585072014e-308'", "'1.7976931348623157e308'"}},
	{"text", []string{"''", "'plain'", "E'tab\\tnewline\\nquote''back\\\\slash'", "'Ünïcødé ✓ 漢字 🧪 ﷽'", "'NULL'"}},
	{"varchar(8)", []string{"'short'"}},
	{"char(4)", []string{"'ab'"}},
	{"bytea", []string{"'\\x00ff10'", "''", "decode(repeat('00', 300), 'hex')"}},
	{"boolean", []string{"true", "false"}},
	{"date", []string{"'2026-11-25'", "'infinity'", "'-infinity'", "'4713-01-01 BC'"}},
	{"time", []string{"'23:59:59.999999'", "'00:00'"}},
	{"timetz", []string{"'12:34:56+05:30'", "'00:00:00-11'"}},
	{"timestamp", []string{"'2026-11-25 23:17:38.123456'", "'infinity'", "'1999-01-08 04:05:06'"}},
	{"timestamptz", []string{"'2026-11-25 23:17:38.123456+03'", "'infinity'", "'-infinity'"}},
	{"interval", []string{"'1 year 2 mons 3 days 04:05:06.789'", "'-1 day'", "'0'"}},
	{"uuid", []string{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"}},
	{"json", []string{`'{"b": 1,  "a": [1, 2]}'`, "'null'"}},
	{"jsonb", []string{`'{"b": 1, "a": [1, 2.50], "ü": "漢"}'`, `'"string"'`}},
	{"integer[]", []string{"'{1,NULL,3}'", "'{{1,2},{3,4}}'", "'{}'"}},
	{"text[]", []string{`'{"a b","c,d",NULL,"NULL","\"q\""}'`}},
	{"inet", []string{"'192.168.0.1/24'", "'::1'"}},
	{"cidr", []string{"'10.0.0.0/8'", "'2001:db8::/32'"}},
	{"macaddr", []string{"'08:00:2b:01:02:03'"}},
	{"mood", []string{"'happy'", "'sad'"}},
	{"positive_int", []string{"42"}},
	{"address", []string{"ROW('1 Main St', 'Kisumu')", "ROW(NULL, 'a,b')"}},
	{"int4range", []string{"'[1,10)'", "'empty'"}},
	{"tstzrange", []string{"'[2026-01-01,infinity)'"}},
	{"bit(4)", []string{"B'1010'"}},
	{"varbit", []string{"B'101'", "B''"}},
	{"tsvector", []string{"'the quick brown fox'::tsvector"}},
	{"money", []string{"'12.34'", "'-0.01'"}},
	{"point", []string{"'(1.5,-2)'"}},
	{"xml", []string{"'<a href=\"x\">text &amp; more</a>'"}},
	{"oid", []string{"4294967295"}},
}

// TestCaptureTypes checks that every built-in type is captured with its
// type name and exactly the text Postgres prints for it.
func TestCaptureTypes(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TYPE mood AS ENUM ('sad', 'happy')`)
	c.Exec(t, `CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0)`)
	c.Exec(t, `CREATE TYPE address AS (street text, town text)`)

	var cols []string
	for i, tc := range typeCases {
		cols = append(cols, fmt.Sprintf("c%d %s", i, tc.typ))
	}
	c.Exec(t, `CREATE TABLE typed (id int PRIMARY KEY, `+strings.Join(cols, ", ")+`)`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	rows := 0
	for _, tc := range typeCases {
		rows = max(rows, len(tc.values))
	}
	for r := range rows {
		names, vals := []string{"id"}, []string{fmt.Sprint(r)}
		for i, tc := range typeCases {
			if r < len(tc.values) {
				names = append(names, fmt.Sprintf("c%d", i))
				vals = append(vals, tc.values[r])
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
	for i, tc := range typeCases {
		var typ string
		if err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = $1`,
			fmt.Sprintf("c%d", i)).Scan(&typ); err != nil {
			t.Fatal(err)
		}
		if rel.Columns[i+1].Type != typ {
			t.Errorf("column c%d (%s) type = %q, want %q", i, tc.typ, rel.Columns[i+1].Type, typ)
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
				name = typeCases[i-1].typ
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
