package apply

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

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
	t.Logf("applied one by one after a unique violation: %t", strings.Contains(logs.String(), "source order"))
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
	if !strings.Contains(logs.String(), "source order") {
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

// TestBatchGroupedByTable applies interleaved transactions of tables tied
// by foreign keys checked row by row: grouped by table, parents first, they
// apply as the source wrote them.
func TestBatchGroupedByTable(t *testing.T) {
	c, w := upstream(t, `
		CREATE TABLE subject (id int PRIMARY KEY, name text);
		CREATE TABLE visit (id int PRIMARY KEY, subject int NOT NULL REFERENCES subject, code text);
		CREATE TABLE requisition (id int PRIMARY KEY, visit int NOT NULL REFERENCES visit, panel text)`)
	subject := relation("subject", "id integer key", "name text")
	visit := relation("visit", "id integer key", "subject integer", "code text")
	req := relation("requisition", "id integer key", "visit integer", "panel text")
	var txs []pgcourier.Transaction
	for i := 1; i <= 50; i++ {
		id := fmt.Sprint(i)
		txs = append(txs,
			txn(at(i), ins(subject, id, "s"+id)),
			txn(at(i), ins(visit, id, id, "1000"), ins(req, id, id, "fbc")),
			txn(at(i), upd(visit, id, id, "1000.1")))
		if i%10 == 0 {
			txs = append(txs, txn(at(i), del(req, id, "NULL", "NULL")))
		}
	}
	res := wantStatus(t, w, batch("laptop-07", 1, txs...), Applied)
	if res.Changes != 50*4+5 || res.Conflicts != 0 {
		t.Errorf("Apply = %d changes, %d conflicts; want %d, 0", res.Changes, res.Conflicts, 50*4+5)
	}
	var subjects, visits, reqs int
	err := c.Connect(t).QueryRow(t.Context(), `SELECT (SELECT count(*) FROM subject), (SELECT count(*) FROM visit WHERE code = '1000.1'), (SELECT count(*) FROM requisition)`).
		Scan(&subjects, &visits, &reqs)
	if err != nil || subjects != 50 || visits != 50 || reqs != 45 {
		t.Errorf("upstream holds %d subjects, %d updated visits, %d requisitions (%v); want 50, 50, 45", subjects, visits, reqs, err)
	}
}

// TestGroupedBatchFallsBackToSourceOrder applies a batch that a check
// upstream accepts only in source order (a function reading another table,
// which the catalog cannot see): grouped by table it fails, and the writer
// applies it again in source order. A table with a trigger of its own is
// never grouped out of order in the first place.
func TestGroupedBatchFallsBackToSourceOrder(t *testing.T) {
	var logs bytes.Buffer
	c, w := upstream(t, `
		CREATE TABLE b (id int PRIMARY KEY);
		CREATE FUNCTION after_b(id int) RETURNS boolean LANGUAGE sql AS $$ SELECT id <> 2 OR EXISTS (SELECT FROM b) $$;
		CREATE TABLE a (id int PRIMARY KEY CHECK (after_b(id)));
		CREATE TABLE tb (id int PRIMARY KEY);
		CREATE TABLE ta (id int PRIMARY KEY);
		CREATE FUNCTION ta_after_tb() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.id = 2 AND NOT EXISTS (SELECT FROM tb) THEN
				RAISE EXCEPTION 'ta 2 before any tb';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER ta_after_tb BEFORE INSERT ON ta FOR EACH ROW EXECUTE FUNCTION ta_after_tb()`,
		Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	a, b := relation("a", "id integer key"), relation("b", "id integer key")
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(a, "1")), txn(at(2), ins(b, "1")), txn(at(3), ins(a, "2"))), Applied)
	if !strings.Contains(logs.String(), "source order") {
		t.Errorf("the writer did not fall back to the source order; log:\n%s", logs.String())
	}
	logs.Reset()
	ta, tb := relation("ta", "id integer key"), relation("tb", "id integer key")
	wantStatus(t, w, batch("laptop-07", 2, txn(at(4), ins(ta, "1")), txn(at(5), ins(tb, "1")), txn(at(6), ins(ta, "2"))), Applied)
	if strings.Contains(logs.String(), "source order") {
		t.Errorf("a table with a trigger was grouped out of order; log:\n%s", logs.String())
	}
	var n int
	if err := c.Connect(t).QueryRow(t.Context(), `SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b) + (SELECT count(*) FROM ta) + (SELECT count(*) FROM tb)`).Scan(&n); err != nil || n != 6 {
		t.Errorf("rows upstream = %d, %v; want 6", n, err)
	}
}

// TestCascadeKeepsSourceOrder applies a batch that updates a child row and
// then its parent's referenced code, with ON UPDATE CASCADE upstream: the
// batch keeps its source order, so the child row written by another source
// later is judged by the last-writer rules, not overwritten.
func TestCascadeKeepsSourceOrder(t *testing.T) {
	_, w := upstream(t, `
		CREATE TABLE parent (id int PRIMARY KEY, code text NOT NULL UNIQUE);
		CREATE TABLE child (id int PRIMARY KEY, pcode text REFERENCES parent (code) ON UPDATE CASCADE, note text)`)
	parent := relation("parent", "id integer key", "code text")
	child := relation("child", "id integer key", "pcode text", "note text")
	wantStatus(t, w, batch("laptop-07", 1, txn(at(1), ins(parent, "1", "A"), ins(parent, "2", "X"))), Applied)
	wantStatus(t, w, batch("laptop-08", 1, txn(at(10), ins(child, "100", "A", "by08"))), Applied)
	res := wantStatus(t, w, batch("laptop-07", 2,
		txn(at(5), upd(child, "100", "X", "by07")),
		txn(at(6), upd(parent, "1", "B"))), Applied)
	if res.Conflicts != 1 {
		t.Errorf("Apply = %d conflicts, want 1 (laptop-08's newer child row wins)", res.Conflicts)
	}
}

// TestFastMissJudgesTheNextBatches edits rows written upstream by a local
// edit: the first batch's fast statement misses and the batch is judged;
// the next batches of that source and table go straight to judging.
func TestFastMissJudgesTheNextBatches(t *testing.T) {
	var logs bytes.Buffer
	_, w := upstream(t, `CREATE TABLE visit (id int PRIMARY KEY, note text);
		INSERT INTO visit SELECT g, 'local' FROM generate_series(1, 10) g`,
		Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	r := relation("visit", "id integer key", "note text")
	for seq := uint64(1); seq <= 3; seq++ {
		// Commit times after the local edits: the field edits win.
		b := batch("laptop-07", seq, txn(time.Now().Add(time.Hour), upd(r, fmt.Sprint(seq), "field"), upd(r, fmt.Sprint(seq+3), "field")))
		if res := wantStatus(t, w, b, Applied); res.Changes != 2 || res.Conflicts != 0 {
			t.Errorf("batch %d: %d changes, %d conflicts; want 2, 0", seq, res.Changes, res.Conflicts)
		}
	}
	if n := strings.Count(logs.String(), "source order"); n != 1 {
		t.Errorf("the writer fell back from the fast plan %d times, want once (the first batch); log:\n%s", n, logs.String())
	}
}

// TestLayeredBatchMatchesSourceOrder applies random edc-like traffic of one
// source twice: as one batch, which the writer groups by table and orders
// by layer (rows inserted, edited and deleted again within it), and one
// change per batch, which nothing can reorder. Both upstreams must end with
// the same rows and the same conflicts. With local rows, written upstream
// later than the source's changes, some changes lose: a first batch that
// loses one of each table's changes makes the writer judge the next runs
// of those tables, which then record the conflicts, still grouped.
func TestLayeredBatchMatchesSourceOrder(t *testing.T) {
	for _, tc := range []struct{ local, prices bool }{{false, false}, {true, false}, {false, true}} {
		t.Run(fmt.Sprintf("local rows %t, prices %t", tc.local, tc.prices), func(t *testing.T) { testLayered(t, tc.local, tc.prices) })
	}
}

// testLayered runs TestLayeredBatchMatchesSourceOrder, with local rows or
// not, and with changes of prices or not: a table whose key's text does not
// name its row (1.0 and 1.00 are one price). Changes of prices often make
// the grouped batch fail and go again in source order (one statement may
// delete and insert one price under two spellings); then only the results
// must match. That such a table is never ordered by layer is
// TestPlanRunsByTable's to check.
func testLayered(t *testing.T, local, prices bool) {
	setup := `
		CREATE TABLE subject (id int PRIMARY KEY, name text);
		CREATE TABLE visit (id int PRIMARY KEY, subject int NOT NULL REFERENCES subject, code text, data jsonb);
		CREATE TABLE requisition (id int PRIMARY KEY, visit int NOT NULL REFERENCES visit, panel text);
		CREATE TABLE price (id numeric PRIMARY KEY, v text, note text)`
	if local {
		setup += `;
		INSERT INTO subject VALUES (1000, 'local');
		INSERT INTO visit SELECT 1000 + i, 1000, 'local', '{}' FROM generate_series(0, 9) i;
		INSERT INTO requisition SELECT 1000 + i, 1000 + i, 'local' FROM generate_series(0, 9) i`
	}
	var logs bytes.Buffer
	grouped, gw := upstream(t, setup, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	single, sw := upstream(t, setup)
	subject := relation("subject", "id integer key", "name text")
	visit := relation("visit", "id integer key", "subject integer", "code text", "data jsonb")
	req := relation("requisition", "id integer key", "visit integer", "panel text")
	// A key whose text does not name its row: 1.0 and 1.00 are one price.
	price := relation("price", "id numeric key", "v text", "note text")

	seq := uint64(1)
	if local {
		// One batch per table: a fast statement that misses marks its
		// own table only.
		for _, ch := range []pgcourier.Change{upd(visit, "1000", "1000", "w", "{}"), upd(req, "1000", "1000", "w")} {
			for _, w := range []*Writer{gw, sw} {
				if res := wantStatus(t, w, batch("laptop-07", seq, txn(at(0), ch)), Applied); res.Conflicts != 1 {
					t.Fatalf("warm-up batch %d: %d conflicts, want 1", seq, res.Conflicts)
				}
			}
			seq++
		}
	}

	rnd := rand.New(rand.NewPCG(3, 11))
	var txs []pgcourier.Transaction
	var visits, reqs []int // rows this source may touch
	reqVisit := map[int]int{}
	if local {
		for i := range 10 {
			visits, reqs = append(visits, 1000+i), append(reqs, 1000+i)
			reqVisit[1000+i] = 1000 + i
		}
	}
	subjectOf := func(v int) string {
		if v >= 1000 {
			return "1000"
		}
		return fmt.Sprint(v)
	}
	next := 1
	var deleted []int // requisitions deleted, to make again under the same id
	priceKeys := []string{"1.0", "1.00", "2", "2.0"}
	for i := 1; len(txs) < 400; i++ {
		id := fmt.Sprint(next)
		switch p := rnd.IntN(12); {
		case p == 10 && prices: // a price set, edited or removed, under any spelling of its key
			k := priceKeys[rnd.IntN(len(priceKeys))]
			ch := []pgcourier.Change{
				ins(price, k, fmt.Sprint(i), "n"),
				upd(price, k, fmt.Sprint(i), "UNCHANGED"),
				del(price, k, "NULL", "NULL"),
			}[rnd.IntN(3)]
			txs = append(txs, txn(at(i), ch))
		case p == 11 && len(deleted) > 0: // a deleted requisition made again
			r := deleted[rnd.IntN(len(deleted))]
			v := visits[rnd.IntN(len(visits))]
			txs = append(txs, txn(at(i), ins(req, fmt.Sprint(r), fmt.Sprint(v), fmt.Sprintf("again%d", i))))
			reqs = append(reqs, r)
			reqVisit[r] = v
			deleted = slices.DeleteFunc(deleted, func(d int) bool { return d == r })
		case p < 2 || len(visits) == 0: // enrolment: a subject and its first visit
			txs = append(txs, txn(at(i), ins(subject, id, "s"+id), ins(visit, id, id, "1000", `{"v": 0}`)))
			visits = append(visits, next)
			next++
		case p < 4: // a requisition of some visit
			v := visits[rnd.IntN(len(visits))]
			txs = append(txs, txn(at(i), ins(req, id, fmt.Sprint(v), fmt.Sprintf("p%d", i))))
			reqs = append(reqs, next)
			reqVisit[next] = v
			next++
		case p < 7: // a visit edited, maybe twice in its transaction
			v := visits[rnd.IntN(len(visits))]
			chs := []pgcourier.Change{upd(visit, fmt.Sprint(v), subjectOf(v), fmt.Sprint(i), fmt.Sprintf(`{"v": %d}`, i))}
			if rnd.IntN(3) == 0 {
				chs = append(chs, upd(visit, fmt.Sprint(v), subjectOf(v), fmt.Sprintf("%db", i), `{"v": -1}`))
			}
			txs = append(txs, txn(at(i), chs...))
		case p < 9 && len(reqs) > 0: // a requisition edited
			r := reqs[rnd.IntN(len(reqs))]
			txs = append(txs, txn(at(i), upd(req, fmt.Sprint(r), fmt.Sprint(reqVisit[r]), fmt.Sprintf("e%d", i))))
		case len(reqs) > 0: // a requisition deleted
			j := rnd.IntN(len(reqs))
			txs = append(txs, txn(at(i), del(req, fmt.Sprint(reqs[j]), "NULL", "NULL")))
			deleted = append(deleted, reqs[j])
			reqs = append(reqs[:j], reqs[j+1:]...)
		}
	}

	logs.Reset()
	res := wantStatus(t, gw, batch("laptop-07", seq, txs...), Applied)
	if !prices && strings.Contains(logs.String(), "source order") {
		t.Errorf("the grouped batch fell back to the source order; log:\n%s", logs.String())
	}
	var conflicts int
	for i, tx := range txs {
		conflicts += wantStatus(t, sw, batch("laptop-07", seq+uint64(i), tx), Applied).Conflicts
	}
	if res.Conflicts != conflicts || !prices && local != (conflicts > 0) {
		t.Errorf("conflicts: %d grouped, %d one by one; want the same, and some only with local rows", res.Conflicts, conflicts)
	}
	for _, sql := range []string{
		`SELECT * FROM subject ORDER BY id`,
		`SELECT * FROM visit ORDER BY id`,
		`SELECT * FROM requisition ORDER BY id`,
		`SELECT * FROM price ORDER BY id`,
		`SELECT commit_time, table_name, op, rule, incoming, stored, stored_source FROM pgcourier.conflicts ORDER BY commit_time, table_name, incoming::text`,
	} {
		if diff := cmp.Diff(query(t, single, sql), query(t, grouped, sql)); diff != "" {
			t.Errorf("%s (-one by one +grouped):\n%s", sql, diff)
		}
	}
}
