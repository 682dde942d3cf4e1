package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/wire"
)

const (
	testNode = "laptop-07"
	testSlot = "pgcourier_laptop_07"
	testPub  = "pgcourier"
)

var allPublic = pgcourier.TableFilter{Include: []string{"public.*"}}

// prepare migrates the schema and runs Setup on the cluster's database.
func prepare(t *testing.T, c *pgtest.Cluster, filter pgcourier.TableFilter) {
	t.Helper()
	ctx := context.Background()
	conn := c.Connect(t)
	if _, err := schema.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, conn, SetupOptions{Slot: testSlot, Publication: testPub, Tables: filter}); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { dropSlot(t, c) })
}

// dropSlot drops the test's slot, ending a walsender still holding it:
// never leave a slot behind, it pins WAL.
func dropSlot(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Errorf("drop slot: %v", err)
		return
	}
	defer conn.Close(ctx)
	for range 50 {
		_, err = conn.Exec(ctx, `
			SELECT CASE WHEN active THEN pg_terminate_backend(active_pid)::text
			            ELSE pg_drop_replication_slot(slot_name)::text END
			  FROM pg_replication_slots WHERE slot_name = $1`, testSlot)
		var left bool
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, testSlot).Scan(&left)
		}
		if err == nil && !left {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("drop slot %s: still there after 5s (last error %v)", testSlot, err)
}

func testOptions(c *pgtest.Cluster, filter pgcourier.TableFilter) Options {
	return Options{
		Node: testNode, Database: c.URL(), Slot: testSlot, Publication: testPub, Tables: filter,
		MaxBatchDelay: 20 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
	}
}

// runCapture runs a Capturer until the test ends or stop is called, which
// returns once Run has; it fails the test if Run returns an error.
func runCapture(t *testing.T, opts Options) (stop func()) {
	t.Helper()
	cp, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// outboxBatches decodes every batch in the outbox, in seq order.
func outboxBatches(t *testing.T, conn *pgx.Conn) []*pgcourier.Batch {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT payload FROM pgcourier.outbox ORDER BY epoch, seq`)
	if err != nil {
		t.Fatal(err)
	}
	payloads, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	var bs []*pgcourier.Batch
	for _, p := range payloads {
		b, err := wire.Decode(p)
		if err != nil {
			t.Fatalf("decode outbox batch: %v", err)
		}
		bs = append(bs, b)
	}
	return bs
}

// changes returns every change in the batches, in order.
func changes(bs []*pgcourier.Batch) []pgcourier.Change {
	var cs []pgcourier.Change
	for _, b := range bs {
		for _, tx := range b.Transactions {
			cs = append(cs, tx.Changes...)
		}
	}
	return cs
}

// waitChanges waits until the outbox holds at least n changes and returns
// them.
func waitChanges(t *testing.T, conn *pgx.Conn, n int) []pgcourier.Change {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var rows int
		if err := conn.QueryRow(context.Background(), `SELECT coalesce(sum(rows), 0) FROM pgcourier.outbox`).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows >= n {
			return changes(outboxBatches(t, conn))
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox holds %d changes after 60s, want %d", rows, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func column(t *testing.T, rel *pgcourier.Relation, name string) int {
	t.Helper()
	for i, c := range rel.Columns {
		if c.Name == name {
			return i
		}
	}
	t.Fatalf("relation %s.%s has no column %s", rel.Schema, rel.Name, name)
	return -1
}

func TestCaptureInsertUpdateDeleteTruncate(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY, name text, note text)`)
	c.Exec(t, `CREATE TABLE audit (at int, what text)`)
	c.Exec(t, `ALTER TABLE audit REPLICA IDENTITY FULL`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	c.Exec(t, `INSERT INTO subject VALUES (1, 'ann', NULL), (2, 'bob', '')`)
	c.Exec(t, `UPDATE subject SET name = 'anne' WHERE id = 1`)
	c.Exec(t, `UPDATE subject SET id = 3 WHERE id = 2`)
	c.Exec(t, `DELETE FROM subject WHERE id = 3`)
	c.Exec(t, `INSERT INTO audit VALUES (1, 'x'), (1, 'x')`)
	c.Exec(t, `DELETE FROM audit WHERE ctid = (SELECT min(ctid) FROM audit)`)
	c.Exec(t, `TRUNCATE audit`)

	conn := c.Connect(t)
	got := waitChanges(t, conn, 9)
	type row struct {
		table string
		op    pgcourier.Op
		new   string
		old   string
	}
	show := func(vs []pgcourier.Value) string {
		if vs == nil {
			return "-"
		}
		var parts []string
		for _, v := range vs {
			switch v.Kind {
			case pgcourier.Null:
				parts = append(parts, "NULL")
			case pgcourier.Unchanged:
				parts = append(parts, "UNCHANGED")
			default:
				parts = append(parts, fmt.Sprintf("%q", v.Text))
			}
		}
		return strings.Join(parts, ",")
	}
	var rows []row
	for _, ch := range got {
		rows = append(rows, row{ch.Rel.Name, ch.Op, show(ch.New), show(ch.Old)})
	}
	want := []row{
		{"subject", pgcourier.OpInsert, `"1","ann",NULL`, "-"},
		{"subject", pgcourier.OpInsert, `"2","bob",""`, "-"},
		{"subject", pgcourier.OpUpdate, `"1","anne",NULL`, "-"},
		{"subject", pgcourier.OpUpdate, `"3","bob",""`, `"2",NULL,NULL`},
		{"subject", pgcourier.OpDelete, "-", `"3",NULL,NULL`},
		{"audit", pgcourier.OpInsert, `"1","x"`, "-"},
		{"audit", pgcourier.OpInsert, `"1","x"`, "-"},
		{"audit", pgcourier.OpDelete, "-", `"1","x"`},
		{"audit", pgcourier.OpTruncate, "-", "-"},
	}
	if len(rows) != len(want) {
		t.Fatalf("captured %d changes, want %d:\n%v", len(rows), len(want), rows)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("change %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	subj := got[0].Rel
	if !subj.Columns[0].Key || subj.Columns[1].Key || subj.Columns[0].Type != "integer" {
		t.Errorf("subject columns = %+v, want id integer key, others not key", subj.Columns)
	}

	// Batches are numbered 1, 2, 3 … and transactions are in commit order.
	bs := outboxBatches(t, conn)
	var last pgcourier.LSN
	for i, b := range bs {
		if b.Seq != uint64(i+1) || b.Source != testNode {
			t.Errorf("batch %d = source %s seq %d, want %s seq %d", i, b.Source, b.Seq, testNode, i+1)
		}
		for _, tx := range b.Transactions {
			if tx.CommitLSN <= last || tx.CommitTime.IsZero() {
				t.Errorf("batch %d: commit LSN %s after %s, time %v: want increasing LSNs and a commit time", b.Seq, tx.CommitLSN, last, tx.CommitTime)
			}
			last = tx.CommitLSN
		}
	}
}

func TestCaptureToastUnchanged(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id int PRIMARY KEY, weight int, notes text)`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	// About 1 MB of text that does not compress below the TOAST threshold.
	c.Exec(t, `INSERT INTO visit SELECT 1, 60, string_agg(md5(i::text), '') FROM generate_series(1, 32768) i`)
	c.Exec(t, `UPDATE visit SET weight = 61 WHERE id = 1`)
	c.Exec(t, `UPDATE visit SET notes = NULL WHERE id = 1`)

	got := waitChanges(t, c.Connect(t), 3)
	notes := column(t, got[0].Rel, "notes")
	if v := got[0].New[notes]; v.Kind != pgcourier.Text || len(v.Text) != 32768*32 {
		t.Errorf("insert notes = kind %c, %d bytes; want text of %d bytes", v.Kind, len(v.Text), 32768*32)
	}
	if v := got[1].New[notes]; v.Kind != pgcourier.Unchanged {
		t.Errorf("update of weight: notes kind = %c, want unchanged (%c)", v.Kind, pgcourier.Unchanged)
	}
	if v := got[1].New[column(t, got[1].Rel, "weight")]; v != pgcourier.TextValue("61") {
		t.Errorf("update of weight: weight = %+v, want 61", v)
	}
	if v := got[2].New[notes]; v.Kind != pgcourier.Null {
		t.Errorf("update setting notes NULL: notes kind = %c, want null (%c)", v.Kind, pgcourier.Null)
	}
}

func TestCaptureFollowsColumnChanges(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE consent (id int PRIMARY KEY, agreed bool)`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	c.Exec(t, `INSERT INTO consent VALUES (1, true)`)
	c.Exec(t, `ALTER TABLE consent ADD COLUMN witness text`)
	c.Exec(t, `INSERT INTO consent VALUES (2, false, 'nurse')`)
	c.Exec(t, `ALTER TABLE consent DROP COLUMN agreed`)
	c.Exec(t, `UPDATE consent SET witness = 'clerk' WHERE id = 1`)

	got := waitChanges(t, c.Connect(t), 3)
	names := func(rel *pgcourier.Relation) string {
		var ns []string
		for _, col := range rel.Columns {
			ns = append(ns, col.Name)
		}
		return strings.Join(ns, ",")
	}
	for i, want := range []string{"id,agreed", "id,agreed,witness", "id,witness"} {
		if got := names(got[i].Rel); got != want {
			t.Errorf("change %d columns = %s, want %s", i, got, want)
		}
	}
	if v := got[2].New[1]; v != pgcourier.TextValue("clerk") {
		t.Errorf("after DROP COLUMN, witness = %+v, want clerk", v)
	}
}

func TestCaptureSkipsReplicationOrigin(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	conn := c.Connect(t)
	commitAs(t, c, "laptop-08", `INSERT INTO subject VALUES (8)`)
	c.Exec(t, `INSERT INTO subject VALUES (7)`)

	got := waitChanges(t, conn, 1)
	if len(got) != 1 || got[0].New[0] != pgcourier.TextValue("7") {
		t.Errorf("captured %+v, want only the local insert of 7", got)
	}
}

func TestCaptureAdvancesIdleSlot(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	c.Exec(t, `CREATE TABLE churn (id serial PRIMARY KEY, x int)`)
	filter := pgcourier.TableFilter{Include: []string{"public.subject"}}
	prepare(t, c, filter)
	runCapture(t, testOptions(c, filter))

	ctx := context.Background()
	conn := c.Connect(t)
	slotLSN := func() pgcourier.LSN {
		var s string
		if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&s); err != nil {
			t.Fatal(err)
		}
		l, err := pgcourier.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	start := slotLSN()
	var target pgcourier.LSN
	deadline := time.Now().Add(30 * time.Second)
	for slotLSN() <= target || target == 0 {
		// Churn an unpublished table; the published one stays idle.
		if _, err := conn.Exec(ctx, `INSERT INTO churn (x) SELECT g FROM generate_series(1, 1000) g`); err != nil {
			t.Fatal(err)
		}
		if target == 0 {
			var s string
			if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
				t.Fatal(err)
			}
			target, _ = pgcourier.ParseLSN(s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed_flush_lsn stayed at %s (started %s), want past %s while only unpublished tables change", slotLSN(), start, target)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rows := changes(outboxBatches(t, conn)); len(rows) != 0 {
		t.Errorf("outbox holds %d changes of unpublished tables, want none", len(rows))
	}
}

// TestCaptureIdleSession: a walsender whose client replies regularly says
// nothing while nothing is published; it pings only a client that has not
// replied for half of wal_sender_timeout (60 s here). Capture asks it for
// an answer before ReadTimeout, and keeps its session on a quiet database.
func TestCaptureIdleSession(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	prepare(t, c, allPublic)
	var buf syncBuffer
	opts := testOptions(c, allPublic)
	opts.ReadTimeout = 2 * time.Second
	opts.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	runCapture(t, opts)

	conn := c.Connect(t)
	c.Exec(t, `INSERT INTO subject VALUES (1)`)
	waitChanges(t, conn, 1)
	time.Sleep(3 * opts.ReadTimeout)
	if n := strings.Count(buf.String(), "capture interrupted"); n > 0 {
		t.Errorf("capture interrupted %d times in %s on a quiet database, want none:\n%s", n, 3*opts.ReadTimeout, buf.String())
	}
	c.Exec(t, `INSERT INTO subject VALUES (2)`)
	waitChanges(t, conn, 2)
}

// TestCaptureSilentBacklog: a capturer that was stopped finds WAL written
// meanwhile, here a large transaction on a table that is not captured. The
// walsender decodes it without a message to the client, for longer than
// ReadTimeout; unless capture hears from it all the same, it gives up the
// session, starts over from the same place the next time, and never gets
// to the change after it. While the walsender replays the transaction at
// its commit it reads replies only every half of wal_sender_timeout, which
// must stay below ReadTimeout (60 s against 90 s by default, 2 s against
// 5 s here, which leaves room for a loaded machine).
func TestCaptureSilentBacklog(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Settings: map[string]string{"wal_sender_timeout": "2s"}})
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	c.Exec(t, `CREATE TABLE churn (id int PRIMARY KEY, x int)`)
	filter := pgcourier.TableFilter{Include: []string{"public.subject"}}
	prepare(t, c, filter)
	conn := c.Connect(t)
	var buf syncBuffer
	opts := testOptions(c, filter)
	opts.ReadTimeout = 5 * time.Second
	opts.Logger = slog.New(slog.NewTextHandler(&buf, nil))

	stop := runCapture(t, opts)
	c.Exec(t, `INSERT INTO subject VALUES (1)`)
	waitChanges(t, conn, 1)
	stop()

	c.Exec(t, `INSERT INTO churn SELECT g, g FROM generate_series(1, 4000000) g`)
	c.Exec(t, `INSERT INTO subject VALUES (2)`)
	start := time.Now()
	runCapture(t, opts)
	deadline := start.Add(60 * time.Second)
	for {
		if n := strings.Count(buf.String(), "capture interrupted"); n > 0 {
			t.Fatalf("capture interrupted while the server decoded the backlog, want it to go on:\n%s", buf.String())
		}
		var rows int
		if err := conn.QueryRow(context.Background(), `SELECT coalesce(sum(rows), 0) FROM pgcourier.outbox`).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows >= 2 {
			took := time.Since(start)
			t.Logf("change after the backlog captured in %s", took.Round(time.Millisecond))
			if took < opts.ReadTimeout {
				t.Skipf("the server decoded the backlog in %s, within ReadTimeout (%s): too fast for the test to show anything", took, opts.ReadTimeout)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("change after the backlog not captured in 60 s:\n%s", buf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCaptureOutboxCommitDurable: the slot never sends again what capture
// confirmed, so the outbox commit must be on disk when it returns, even
// where an operator turned synchronous_commit off. A trigger records the
// setting the outbox writes run under.
func TestCaptureOutboxCommitDurable(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	prepare(t, c, allPublic)
	c.Exec(t, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$`)
	c.Exec(t, `CREATE SCHEMA probe`)
	c.Exec(t, `CREATE TABLE probe.outbox_writes (seq bigint, synchronous_commit text)`)
	c.Exec(t, `
		CREATE FUNCTION probe.record() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO probe.outbox_writes VALUES (NEW.seq, current_setting('synchronous_commit'));
			RETURN NULL;
		END $$`)
	c.Exec(t, `CREATE TRIGGER record AFTER INSERT ON pgcourier.outbox FOR EACH ROW EXECUTE FUNCTION probe.record()`)
	ctx := context.Background()
	conn := c.Connect(t)
	var setting string
	if err := conn.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil {
		t.Fatal(err)
	}
	if setting != "off" {
		t.Fatalf("synchronous_commit of a new connection = %s, want off (the database's setting)", setting)
	}
	runCapture(t, testOptions(c, allPublic))

	c.Exec(t, `INSERT INTO subject VALUES (1)`)
	waitChanges(t, conn, 1)
	rows, err := conn.Query(ctx, `SELECT seq || ' ' || synchronous_commit FROM probe.outbox_writes ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1 local"}; !slices.Equal(got, want) {
		t.Errorf("outbox writes (seq and synchronous_commit) = %q, want %q", got, want)
	}
}

func TestSetup(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	c.Exec(t, `CREATE TABLE django_session (key text PRIMARY KEY)`)
	c.Exec(t, `CREATE TABLE notes (body text)`) // no identity
	c.Exec(t, `CREATE TABLE specimen (id int, taken date, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken)`)
	c.Exec(t, `CREATE TABLE specimen_2026 PARTITION OF specimen FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	conn := c.Connect(t)
	if _, err := schema.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	opts := SetupOptions{Slot: testSlot, Publication: testPub,
		Tables: pgcourier.TableFilter{Include: []string{"public.*"}, Exclude: []string{"public.django_session"}}}
	t.Cleanup(func() { c.Exec(t, `SELECT pg_drop_replication_slot($1)`, testSlot) })

	res, err := Setup(ctx, conn, opts)
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "ALTER TABLE public.notes REPLICA IDENTITY FULL;") {
		t.Errorf("Setup with an unidentified table = %v, want ErrNoIdentity with the fix", err)
	}
	published := func() string {
		rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, testPub)
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(names, " ")
	}
	if got, want := published(), "public.specimen public.subject"; got != want {
		t.Errorf("published = %q, want %q (partitions through their root, no excluded or unidentified table)", got, want)
	}
	if !res.SlotCreated || res.Epoch == 0 {
		t.Errorf("first Setup: slot created %v, epoch %d; want created and an epoch", res.SlotCreated, res.Epoch)
	}

	// Fixing the table and running again picks it up, keeps the slot and epoch.
	c.Exec(t, `ALTER TABLE notes REPLICA IDENTITY FULL`)
	c.Exec(t, `CREATE TABLE later (id int PRIMARY KEY)`)
	res2, err := Setup(ctx, conn, opts)
	if err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	if got, want := published(), "public.later public.notes public.specimen public.subject"; got != want {
		t.Errorf("published after second Setup = %q, want %q", got, want)
	}
	if res2.SlotCreated || res2.Epoch != res.Epoch {
		t.Errorf("second Setup: slot created %v, epoch %d; want the same slot and epoch %d", res2.SlotCreated, res2.Epoch, res.Epoch)
	}

	// A dropped slot is never recreated silently.
	c.Exec(t, `SELECT pg_drop_replication_slot($1)`, testSlot)
	if _, err := Setup(ctx, conn, opts); !errors.Is(err, ErrSlotLost) || !strings.Contains(err.Error(), "pgcourier resync -c FILE") {
		t.Errorf("Setup after the slot was dropped = %v, want ErrSlotLost with the recovery", err)
	}
	c.Exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, testSlot) // for the cleanup
}

func TestCaptureBatchSpan(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	prepare(t, c, allPublic)
	opts := testOptions(c, allPublic)
	opts.MaxBatchDelay = 3 * time.Second // only the commit-time span splits batches
	opts.MaxBatchSpan = 500 * time.Millisecond
	runCapture(t, opts)

	c.Exec(t, `INSERT INTO subject VALUES (1)`)
	time.Sleep(1200 * time.Millisecond)
	c.Exec(t, `INSERT INTO subject VALUES (2)`)
	c.Exec(t, `INSERT INTO subject VALUES (3)`)

	conn := c.Connect(t)
	waitChanges(t, conn, 3)
	var sizes []int
	for _, b := range outboxBatches(t, conn) {
		sizes = append(sizes, len(b.Transactions))
	}
	if fmt.Sprint(sizes) != "[1 2]" {
		t.Errorf("transactions per batch = %v, want [1 2]: a batch spans at most MaxBatchSpan of commit time", sizes)
	}
}

func TestHealth(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE subject (id int PRIMARY KEY)`)
	prepare(t, c, allPublic)
	conn := c.Connect(t)

	c.Exec(t, `INSERT INTO subject SELECT generate_series(1, 10000)`)
	h, err := Health(ctx, conn, testSlot)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Exists || h.Active || h.RetainedBytes <= 0 || h.LagBytes <= 0 || h.WALStatus != "reserved" {
		t.Errorf("Health with no capturer after writes = %+v, want existing, inactive, reserved, WAL retained and lagging", h)
	}
	runCapture(t, testOptions(c, allPublic))
	waitChanges(t, conn, 10000)
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err = Health(ctx, conn, testSlot)
		if err != nil {
			t.Fatal(err)
		}
		if h.Active && h.LagBytes < 64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Health while capturing = %+v, want active with lag caught up", h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h, err := Health(ctx, conn, "no_such_slot"); err != nil || h.Exists {
		t.Errorf("Health(no_such_slot) = %+v, %v; want not existing, no error", h, err)
	}
}

func TestCapturePartitionsAndIdentities(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE specimen (id int, taken date, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken)`)
	c.Exec(t, `CREATE TABLE specimen_2025 PARTITION OF specimen FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`)
	c.Exec(t, `CREATE TABLE specimen_2026 PARTITION OF specimen FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	c.Exec(t, `CREATE TABLE device (serial text NOT NULL, site text)`)
	c.Exec(t, `CREATE UNIQUE INDEX device_serial ON device (serial)`)
	c.Exec(t, `ALTER TABLE device REPLICA IDENTITY USING INDEX device_serial`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	c.Exec(t, `INSERT INTO specimen VALUES (1, '2025-06-01'), (2, '2026-06-01')`)
	c.Exec(t, `UPDATE specimen SET taken = '2026-02-01' WHERE id = 1`) // moves between partitions
	c.Exec(t, `INSERT INTO device VALUES ('A1', 'kisumu')`)
	c.Exec(t, `UPDATE device SET serial = 'A2' WHERE serial = 'A1'`)
	c.Exec(t, `DELETE FROM device`)

	got := waitChanges(t, c.Connect(t), 7)
	var summary []string
	for _, ch := range got {
		s := ch.Rel.Name + " " + ch.Op.String()
		if ch.Old != nil {
			s += " old=" + ch.Old[0].Text
		}
		summary = append(summary, s)
	}
	want := []string{
		"specimen insert", "specimen insert",
		// Postgres decodes a move between partitions as a delete and an insert.
		"specimen delete old=1", "specimen insert",
		"device insert", "device update old=A1", "device delete old=A2",
	}
	if strings.Join(summary, "; ") != strings.Join(want, "; ") {
		t.Errorf("captured %q, want %q", summary, want)
	}
	dev := got[4].Rel
	if !dev.Columns[0].Key || dev.Columns[1].Key {
		t.Errorf("device columns = %+v, want serial as the key (REPLICA IDENTITY USING INDEX)", dev.Columns)
	}
}

// commitAs commits sql in one transaction under the replication origin of
// source, as pgcourier's applier would when relaying that source's data.
func commitAs(t *testing.T, c *pgtest.Cluster, source, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	origin := pgcourier.OriginName(source)
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)`, origin); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, origin); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNeedsOperator(t *testing.T) {
	tests := []struct {
		err      error
		operator bool
	}{
		{&pgconn.PgError{Code: "28P01"}, true},
		{fmt.Errorf("read capture state: %w", &pgconn.PgError{Code: "42P01"}), true},
		{&pgconn.PgError{Code: "42501"}, true},
		{&pgconn.PgError{Code: "57P01"}, false}, // admin shutdown: Postgres restarting
		{&pgconn.PgError{Code: "55006"}, false}, // slot still active for a dead session
		{errors.New("receive: connection reset by peer"), false},
	}
	for _, tt := range tests {
		if got := needsOperator(tt.err) != ""; got != tt.operator {
			t.Errorf("needsOperator(%v) = %v, want %v", tt.err, got, tt.operator)
		}
	}
}

func TestRunReportsMissingSchema(t *testing.T) {
	c := pgtest.Start(t)
	var buf syncBuffer
	opts := testOptions(c, allPublic)
	opts.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	runCapture(t, opts)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(buf.String(), `level=ERROR msg="capture stopped; retrying"`) || !strings.Contains(buf.String(), "run pgcourier init -c FILE") {
		if time.Now().After(deadline) {
			t.Fatalf("log after 20s without the pgcourier schema:\n%s\nwant an error telling to run pgcourier init", buf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCaptureToastFullIdentity: under REPLICA IDENTITY FULL the old row
// comes whole, so an update that leaves a large value unchanged carries it
// in the new row too; under the default identity it cannot, and the old
// key's nulls must not take its place.
func TestCaptureToastFullIdentity(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `CREATE TABLE visit (id int PRIMARY KEY, weight int, notes text)`)
	c.Exec(t, `CREATE TABLE consent (id int PRIMARY KEY, weight int, notes text)`)
	c.Exec(t, `ALTER TABLE visit REPLICA IDENTITY FULL`)
	prepare(t, c, allPublic)
	runCapture(t, testOptions(c, allPublic))

	for _, table := range []string{"visit", "consent"} {
		c.Exec(t, `INSERT INTO `+table+` SELECT 1, 60, string_agg(md5(i::text), '') FROM generate_series(1, 32768) i`)
		c.Exec(t, `UPDATE `+table+` SET weight = 61, id = 2 WHERE id = 1`)
	}
	got := waitChanges(t, c.Connect(t), 4)
	notes := column(t, got[1].Rel, "notes")
	if v := got[1].New[notes]; v.Kind != pgcourier.Text || len(v.Text) != 32768*32 {
		t.Errorf("update under identity full: notes kind %c, %d bytes; want text of %d bytes", v.Kind, len(v.Text), 32768*32)
	}
	if v := got[3].New[notes]; v.Kind != pgcourier.Unchanged {
		t.Errorf("update moving the key under the default identity: notes kind %c, want unchanged (%c)", v.Kind, pgcourier.Unchanged)
	}
	if got[3].Old == nil || got[3].Old[column(t, got[3].Rel, "id")] != pgcourier.TextValue("1") {
		t.Errorf("update moving the key: old row %+v, want the old key 1", got[3].Old)
	}
}
