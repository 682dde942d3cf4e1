package apply

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// TestTextArray sends textArrays through a connection that uses them and
// reads them back as Postgres sees them.
func TestTextArray(t *testing.T) {
	c := pgtest.Start(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	useTextArrays(conn)
	s := func(v string) *string { return &v }
	for _, tc := range []struct {
		in   textArray
		want string
	}{
		{textArray{}, "{}|0|NULL"},
		{textArray{s("a")}, "{a}|1|1"},
		{textArray{s(""), nil, s("naïve, \"quoted\" {x}"), s("日本")}, `{"",NULL,"naïve, \"quoted\" {x}",日本}|4|1`},
		{textArray{nil}, "{NULL}|1|1"},
	} {
		var got string
		err := conn.QueryRow(ctx, `SELECT $1::text[]::text || '|' || cardinality($1::text[]) || '|' || coalesce(array_lower($1::text[], 1)::text, 'NULL')`, tc.in).Scan(&got)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("textArray %v read back (-want +got):\n%s", tc.in, diff)
		}
	}
	// Other text[] values are encoded as before.
	var got []string
	if err := conn.QueryRow(ctx, `SELECT $1::text[]`, []string{"x", "y"}).Scan(&got); err != nil || !cmp.Equal(got, []string{"x", "y"}) {
		t.Errorf("[]string through the same connection = %v, %v", got, err)
	}
}
