package apply

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
)

// TestUniqueValuesMoveBetweenRows applies a batch whose updates, in source
// order, hand unique values from row to row. Grouped into one statement
// that processes the rows in another order, they would break the unique
// index; the writer must then apply them one by one, and the result must
// be the source's either way.
func TestUniqueValuesMoveBetweenRows(t *testing.T) {
	var logs bytes.Buffer
	c, w := upstream(t, `CREATE TABLE tag (id int PRIMARY KEY, code text NOT NULL UNIQUE)`,
		Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	r := relation("tag", "id integer key", "code text")
	const pairs = 20
	// Rows are stored in reverse order of their ids, so that a statement
	// reading the table in storage order meets each pair backwards.
	var seed []pgcourier.Change
	for i := 2 * pairs; i >= 1; i-- {
		seed = append(seed, ins(r, fmt.Sprint(i), fmt.Sprintf("v%d", i)))
	}
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), seed...)), Applied)

	// Each pair (a, b) swaps values through a spare one: a → spare, b → a's,
	// then a → b's. The first two of every pair share a run.
	var first, second []pgcourier.Change
	want := map[string]string{}
	for p := range pairs {
		a, b := 2*p+1, 2*p+2
		first = append(first, upd(r, fmt.Sprint(a), fmt.Sprintf("spare%d", p)), upd(r, fmt.Sprint(b), fmt.Sprintf("v%d", a)))
		second = append(second, upd(r, fmt.Sprint(a), fmt.Sprintf("v%d", b)))
		want[fmt.Sprint(a)], want[fmt.Sprint(b)] = fmt.Sprintf("v%d", b), fmt.Sprintf("v%d", a)
	}
	res := wantStatus(t, w, batch("laptop-07", 2, txn(at(2), append(first, second...)...)), Applied)
	if res.Changes != 3*pairs || res.Conflicts != 0 {
		t.Errorf("Apply = %d changes, %d conflicts; want %d, 0", res.Changes, res.Conflicts, 3*pairs)
	}
	got := map[string]string{}
	conn := c.Connect(t)
	rows, err := conn.Query(t.Context(), `SELECT id::text, code FROM tag`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, code string
		if err := rows.Scan(&id, &code); err != nil {
			t.Fatal(err)
		}
		got[id] = code
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tag upstream (-want +got):\n%s", diff)
	}
	t.Logf("applied one by one after a unique violation: %t", strings.Contains(logs.String(), "one by one"))
}

// TestUniqueViolationOfGroupedRun applies a batch that breaks a unique
// index only upstream has: grouped, it fails; applied again one by one, it
// fails the same way, and the batch is blocked with the error, naming the
// constraint, with nothing applied.
func TestUniqueViolationOfGroupedRun(t *testing.T) {
	var logs bytes.Buffer
	c, w := upstream(t, `CREATE TABLE tag (id int PRIMARY KEY, code text NOT NULL UNIQUE)`,
		Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	r := relation("tag", "id integer key", "code text")
	res := wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(r, "1", "A"), ins(r, "2", "B"), ins(r, "3", "A"))), Blocked)
	if !strings.Contains(logs.String(), "one by one") {
		t.Errorf("the writer did not retry the grouped run one by one; log:\n%s", logs.String())
	}
	if be, ok := res.Err.(*BlockedError); !ok || be.SQLState != "23505" || be.Table != "public.tag" {
		t.Errorf("Apply = %v, want a BlockedError for a unique violation on public.tag", res.Err)
	}
	var n int
	if err := c.Connect(t).QueryRow(t.Context(), `SELECT count(*) FROM tag`).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows in tag = %d, %v; want 0 (nothing applied)", n, err)
	}
}
