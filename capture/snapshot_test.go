package capture

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// replay applies the outbox's changes to an empty image of the table, the
// way an upstream would (an insert of an existing key overwrites it), and
// returns the rows as "id=…,v=…" lines.
func replay(t *testing.T, conn *pgx.Conn, table string) []string {
	t.Helper()
	rows := map[string]string{}
	for _, ch := range changes(outboxBatches(t, conn)) {
		if ch.Rel.Name != table {
			continue
		}
		id := column(t, ch.Rel, "id")
		show := func(vs []pgcourier.Value) string {
			var parts []string
			for i, c := range ch.Rel.Columns {
				parts = append(parts, c.Name+"="+vs[i].Text)
			}
			return strings.Join(parts, ",")
		}
		switch ch.Op {
		case pgcourier.OpInsert, pgcourier.OpUpdate:
			if ch.Old != nil {
				delete(rows, ch.Old[id].Text)
			}
			rows[ch.New[id].Text] = show(ch.New)
		case pgcourier.OpDelete:
			delete(rows, ch.Old[id].Text)
		case pgcourier.OpTruncate:
			rows = map[string]string{}
		}
	}
	var out []string
	for _, r := range rows {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// tableRows returns the table's rows in the form replay uses.
func tableRows(t *testing.T, conn *pgx.Conn, table string) []string {
	t.Helper()
	return sortedLines(t, conn, `SELECT 'id=' || id || ',v=' || v FROM `+table)
}

// sortedLines returns the text rows query returns, sorted.
func sortedLines(t *testing.T, conn *pgx.Conn, query string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), query, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// snapshotDone waits until no snapshot is pending.
func snapshotDone(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var pending int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pgcourier.snapshot_progress WHERE NOT done`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots still pending after 90s", pending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitCaughtUp waits until the outbox holds every transaction committed so
// far, by committing a row to zz_marker (which markerTable creates before
// Setup) and waiting for it.
func waitCaughtUp(t *testing.T, c *pgtest.Cluster, conn *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	var want int
	if err := conn.QueryRow(ctx, `INSERT INTO zz_marker VALUES ((SELECT coalesce(max(id), 0) + 1 FROM zz_marker)) RETURNING id`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		for _, ch := range changes(outboxBatches(t, conn)) {
			if ch.Rel.Name == "zz_marker" && ch.New != nil && ch.New[0].Text == fmt.Sprint(want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not catch up within 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// markerTable creates the table waitCaughtUp writes to.
const markerTable = `CREATE TABLE zz_marker (id int PRIMARY KEY)`

// churn updates, deletes and inserts rows of visit until stop is closed,
// pausing for pause between transactions.
func churn(ctx context.Context, url string, stop <-chan struct{}, next *atomic.Int64, pause time.Duration) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		id := rand.Int64N(next.Load())
		var q string
		switch rand.IntN(3) {
		case 0:
			q = fmt.Sprintf(`UPDATE visit SET v = v || '+' WHERE id = %d`, id)
		case 1:
			q = fmt.Sprintf(`DELETE FROM visit WHERE id = %d`, id)
		default:
			q = fmt.Sprintf(`INSERT INTO visit VALUES (%d, 'new')`, next.Add(1))
		}
		if _, err := conn.Exec(ctx, q); err != nil {
			return err
		}
		time.Sleep(pause)
	}
}

// TestSnapshot captures rows that existed before the slot, while writers
// keep changing them, and checks that replaying the outbox rebuilds the
// table exactly, with every row's snapshot copy captured at most once.
func TestSnapshot(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id bigint PRIMARY KEY, v text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'v' || g FROM generate_series(0, 19999) g`)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = 700
	runCapture(t, opts)

	var next atomic.Int64
	next.Store(20000)
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- churn(context.Background(), c.URL(), stop, &next, 0) }()
	conn := c.Connect(t)
	snapshotDone(t, conn)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, conn)

	got, want := replay(t, conn, "visit"), tableRows(t, conn, "visit")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d; first differences:\n%s", len(got), len(want), firstDiff(got, want))
	}
	checkSnapshotOnce(t, conn, 20000)
}

// checkSnapshotOnce fails if the outbox inserts a row that existed before
// capture (id < initial; only the snapshot inserts those) twice without a
// delete in between: a resumed snapshot must not repeat a chunk. Rows that
// writers insert while the snapshot runs may be copied again by a later
// chunk, as a whole row at a later position, which upstream applies as the
// same source rewriting the row to the state it already has.
func checkSnapshotOnce(t *testing.T, conn *pgx.Conn, initial int) {
	t.Helper()
	present := map[string]bool{}
	for _, ch := range changes(outboxBatches(t, conn)) {
		if ch.Rel.Name != "visit" {
			continue
		}
		switch ch.Op {
		case pgcourier.OpInsert:
			id := ch.New[0].Text
			var n int
			fmt.Sscan(id, &n)
			if n >= initial {
				continue
			}
			if present[id] {
				t.Errorf("row %s inserted twice", id)
			}
			present[id] = true
		case pgcourier.OpDelete:
			present[ch.Old[0].Text] = false
		}
	}
}

func firstDiff(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	for _, s := range want {
		w[s] = true
	}
	var out []string
	for _, s := range want {
		if !g[s] && len(out) < 5 {
			out = append(out, "missing: "+s)
		}
	}
	for _, s := range got {
		if !w[s] && len(out) < 10 {
			out = append(out, "extra:   "+s)
		}
	}
	return strings.Join(out, "\n")
}

// TestSnapshotKill9 kills the capturing process during a long snapshot,
// under writes, and checks the resumed snapshot has no holes and no repeats.
func TestSnapshotKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id bigint PRIMARY KEY, v text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'v' || g FROM generate_series(0, 149999) g`)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)

	var next atomic.Int64
	next.Store(150000)
	stop := make(chan struct{})
	errc := make(chan error, 1)
	// A research assistant typing, not a bulk load: the snapshot has to make
	// progress between kills.
	go func() { errc <- churn(context.Background(), c.URL(), stop, &next, time.Millisecond) }()

	conn := c.Connect(t)
	child := startChild(t, childEnv+"="+c.URL(), chunkEnv+"=200")
	// Kill the capturer each time it has made some progress, at a random
	// moment after that: many kills, and the snapshot still finishes.
	kills := 0
	var killedAt int64
	for {
		time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond)
		var pending int
		var done int64
		if err := conn.QueryRow(context.Background(), `
			SELECT count(*) FILTER (WHERE NOT done), coalesce(sum(rows_done), 0)
			  FROM pgcourier.snapshot_progress`).Scan(&pending, &done); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			break
		}
		if done == killedAt {
			continue
		}
		if err := child.restart(true); err != nil {
			t.Fatal(err)
		}
		kills++
		killedAt = done
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, conn)
	t.Logf("%d kills during the snapshot", kills)
	if kills < 5 {
		t.Errorf("only %d kills during the snapshot; the test proves little", kills)
	}
	got, want := replay(t, conn, "visit"), tableRows(t, conn, "visit")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d; first differences:\n%s", len(got), len(want), firstDiff(got, want))
	}
	checkSnapshotOnce(t, conn, 150000)
}

// TestSnapshotNewTable picks up a table created after capture began, with
// its existing rows, when capture restarts.
func TestSnapshotNewTable(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)
	c.Exec(t, `CREATE TABLE visit (id bigint PRIMARY KEY, v text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'v' || g FROM generate_series(1, 2500) g`)
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = 1000
	runCapture(t, opts) // Setup at start adds visit and schedules its snapshot
	conn := c.Connect(t)
	// Until capture's Setup scheduled it, no snapshot is pending either.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var scheduled bool
		if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pgcourier.snapshot_progress WHERE table_name = 'public.visit')`).Scan(&scheduled); err != nil {
			t.Fatal(err)
		}
		if scheduled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not schedule the snapshot of visit in 30 s")
		}
	}
	snapshotDone(t, conn)
	c.Exec(t, `UPDATE visit SET v = 'changed' WHERE id = 7`)
	waitCaughtUp(t, c, conn)
	got, want := replay(t, conn, "visit"), tableRows(t, conn, "visit")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d:\n%s", len(got), len(want), firstDiff(got, want))
	}
}

// TestSnapshotSkipsRelayedRows checks that on a node that also applies
// other sources' batches, the snapshot copies only the rows written there.
func TestSnapshotSkipsRelayedRows(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id bigint PRIMARY KEY, v text)`)
	c.Exec(t, markerTable)
	c.Exec(t, `INSERT INTO visit SELECT g, 'local' FROM generate_series(1, 50) g`)
	conn := c.Connect(t)
	commitAs(t, c, "laptop-08", `INSERT INTO visit SELECT g, 'relayed' FROM generate_series(51, 100) g`)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = 30
	runCapture(t, opts)
	snapshotDone(t, conn)
	waitCaughtUp(t, c, conn)

	rows := replay(t, conn, "visit")
	for _, r := range rows {
		if !strings.HasSuffix(r, "v=local") {
			t.Errorf("snapshot captured %q, a row another source wrote", r)
		}
	}
	if len(rows) != 50 {
		t.Errorf("snapshot captured %d rows, want the 50 written locally", len(rows))
	}
}

// TestSnapshotToast edits rows whose large column Postgres keeps out of
// line while the snapshot copies them, from several sessions at once. An
// edit that leaves that column alone reaches the stream without its value
// (unchanged TOAST), so an upstream that never had the row cannot apply
// it: the row must come from the snapshot after the edit. Replaying the
// outbox as an upstream would must rebuild the table exactly, and the
// snapshot must not read a chunk again for such edits (under steady edits
// it would never finish). Midway, the table may gain a column that the
// edits then set: the snapshot describes the table again.
func TestSnapshotToast(t *testing.T) {
	for _, alter := range []bool{false, true} {
		t.Run(fmt.Sprintf("column added %t", alter), func(t *testing.T) { testSnapshotToast(t, alter) })
	}
}

// captureToastVisits starts capture, with chunks of chunkRows, of a table
// visit of 6,000 rows (ids 0 to 5999) whose form is a 3,200-byte value
// stored out of line, and returns the cluster and capture's log.
func captureToastVisits(t *testing.T, chunkRows int) (*pgtest.Cluster, *syncBuffer) {
	t.Helper()
	return captureVisits(t, chunkRows, `CREATE TABLE visit (id bigint PRIMARY KEY, v text, form text)`,
		`INSERT INTO visit SELECT g, 'v' || g, repeat(md5(g::text), 100) FROM generate_series(0, 5999) g`)
}

// captureVisits starts capture, with chunks of chunkRows, of the table
// visit that create makes and fill fills, its column form stored out of
// line, and returns the cluster and capture's log.
func captureVisits(t *testing.T, chunkRows int, create, fill string) (*pgtest.Cluster, *syncBuffer) {
	t.Helper()
	c := pgtest.Start(t)
	c.Exec(t, create)
	c.Exec(t, `ALTER TABLE visit ALTER form SET STORAGE EXTERNAL`)
	c.Exec(t, fill)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = chunkRows
	logs := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	runCapture(t, opts)
	return c, logs
}

func testSnapshotToast(t *testing.T, alter bool) {
	c, logs := captureToastVisits(t, 300)

	stop := make(chan struct{})
	var added atomic.Bool
	var g errgroup.Group
	for range 4 {
		g.Go(func() error {
			conn, err := pgx.Connect(context.Background(), c.URL())
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				q := `UPDATE visit SET v = v || '+' WHERE id = $1`
				if added.Load() {
					q = `UPDATE visit SET v = v || '+', n = id % 5 WHERE id = $1`
				}
				if _, err := conn.Exec(context.Background(), q, rand.IntN(6000)); err != nil {
					return err
				}
			}
		})
	}
	stopped := false
	stopEditing := func() error {
		if !stopped {
			stopped = true
			close(stop)
		}
		return g.Wait()
	}
	t.Cleanup(func() { stopEditing() }) //nolint:errcheck // a failed test stops them too

	conn := c.Connect(t)
	if alter {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var done int64
			if err := conn.QueryRow(context.Background(), `SELECT coalesce(sum(rows_done), 0) FROM pgcourier.snapshot_progress`).Scan(&done); err != nil {
				t.Fatal(err)
			}
			if done >= 2000 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the snapshot did not reach 2,000 rows in 60 s")
			}
		}
		c.Exec(t, `ALTER TABLE visit ADD COLUMN n int DEFAULT 7`)
		added.Store(true)
	}
	snapshotDone(t, conn)
	if err := stopEditing(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, c, conn)
	if n := strings.Count(logs.String(), "reading it again"); n > 1 {
		t.Errorf("the snapshot read %d chunks again", n) // once for the new column at most
	}

	// Replay as an upstream with the same columns applies: a column a
	// change does not know keeps its stored value, or takes its default.
	rows, unapplied := replayUpstream(t, conn, "visit", "id", map[string]string{"n": "7"})
	var got []string
	for _, r := range rows {
		n := "7"
		if alter {
			n = r["n"]
		}
		got = append(got, fmt.Sprintf("id=%s,v=%s,form=%d,n=%s", r["id"], r["v"], len(r["form"]), n))
	}
	sort.Strings(got)
	q := `SELECT format('id=%s,v=%s,form=%s,n=7', id, v, length(form)) FROM visit`
	if alter {
		q = `SELECT format('id=%s,v=%s,form=%s,n=%s', id, v, length(form), n) FROM visit`
	}
	want := sortedLines(t, conn, q)
	t.Logf("%d edits came before their row's snapshot copy", unapplied)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d; first differences:\n%s", len(got), len(want), firstDiff(got, want))
	}
}

// TestSnapshotBesideIdleTransaction copies a table while another session
// sits idle in a transaction that holds a transaction ID: the snapshot must
// not wait for it before every chunk.
func TestSnapshotBesideIdleTransaction(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id bigint PRIMARY KEY, v text)`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'v' || g FROM generate_series(0, 2999) g`)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)
	idle := c.Connect(t)
	if _, err := idle.Exec(context.Background(), `BEGIN; SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = 500
	var logs syncBuffer
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	runCapture(t, opts)
	conn := c.Connect(t)
	snapshotDone(t, conn)
	if n := strings.Count(logs.String(), "beside open transactions"); n > 0 {
		t.Errorf("%d snapshot chunks waited for the idle transaction", n)
	}
	if got, want := replay(t, conn, "visit"), tableRows(t, conn, "visit"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d", len(got), len(want))
	}
}
