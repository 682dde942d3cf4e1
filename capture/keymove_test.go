package capture

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// replayUpstream applies the outbox's changes of table to an empty image
// the way the applier does, finding rows by the column key: an update or
// insert of an existing row keeps the stored values of the columns it
// leaves out (unchanged TOAST) or does not know (defaults gives a new
// row's), and moves the row when its key changes; an update of a missing
// row with values left out cannot recreate it and is counted in unapplied.
func replayUpstream(t *testing.T, conn *pgx.Conn, table, key string, defaults map[string]string) (rows map[string]map[string]string, unapplied int) {
	t.Helper()
	rows = map[string]map[string]string{}
	for _, ch := range changes(outboxBatches(t, conn)) {
		if ch.Rel.Name != table {
			continue
		}
		img := func(vs []pgcourier.Value) map[string]pgcourier.Value {
			m := map[string]pgcourier.Value{}
			for i, col := range ch.Rel.Columns {
				m[col.Name] = vs[i]
			}
			return m
		}
		switch ch.Op {
		case pgcourier.OpInsert, pgcourier.OpUpdate:
			in := img(ch.New)
			from := in[key].Text
			if ch.Old != nil {
				from = img(ch.Old)[key].Text
			}
			stored, ok := rows[from]
			if !ok && slices.ContainsFunc(ch.New, func(v pgcourier.Value) bool { return v.Kind == pgcourier.Unchanged }) {
				unapplied++
				continue
			}
			delete(rows, from)
			row := map[string]string{}
			for k, v := range defaults {
				row[k] = v
			}
			for k, v := range stored {
				row[k] = v
			}
			for k, v := range in {
				if v.Kind != pgcourier.Unchanged {
					row[k] = v.Text
				}
			}
			rows[in[key].Text] = row
		case pgcourier.OpDelete:
			delete(rows, img(ch.Old)[key].Text)
		}
	}
	return rows, unapplied
}

// hasICU reports whether the test cluster's Postgres has ICU collations.
func hasICU(t *testing.T) bool {
	t.Helper()
	c := pgtest.Start(t)
	var ok bool
	if err := c.Connect(t).QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'en-x-icu')`).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestSnapshotKeyMoveToast moves rows the snapshot has not copied yet to
// keys before the ones it has, with an update that leaves a large value
// unchanged: pgoutput sends the update without that value, so upstream
// cannot recreate the row from it, and no later chunk would read the key it
// moved to. Replaying the outbox must still rebuild the table.
func TestSnapshotKeyMoveToast(t *testing.T) {
	for _, tc := range []struct {
		name         string
		create, fill string
		move         string // moves the row numbered %d
		key          string // the column upstream finds rows by
		restart      bool   // the snapshot must start over
	}{{
		name:   "primary key",
		create: `CREATE TABLE visit (id bigint PRIMARY KEY, v text, form text)`,
		fill:   `INSERT INTO visit SELECT g, 'v' || g, repeat(md5(g::text), 100) FROM generate_series(0, 5999) g`,
		move:   `UPDATE visit SET id = -id, v = v || '>' WHERE id = %d`,
		key:    "id", restart: true,
	}, {
		// Chunks follow the identity, in which an update's old key comes:
		// a new primary key moves the row nowhere in them.
		name: "identity index",
		create: `CREATE TABLE visit (id bigint PRIMARY KEY, code bigint NOT NULL UNIQUE, v text, form text);
			ALTER TABLE visit REPLICA IDENTITY USING INDEX visit_code_key`,
		fill: `INSERT INTO visit SELECT g, g, 'v' || g, repeat(md5(g::text), 100) FROM generate_series(0, 5999) g`,
		move: `UPDATE visit SET id = -id, v = v || '>' WHERE id = %d`,
		key:  "code",
	}, {
		// In the column's collation 'a…' sorts before 'R…', in the
		// database's (C) after.
		name:   "collation",
		create: `CREATE TABLE visit (id text COLLATE "en-x-icu" PRIMARY KEY, v text, form text)`,
		fill:   `INSERT INTO visit SELECT 'R' || lpad(g::text, 4, '0'), 'v' || g, repeat(md5(g::text), 100) FROM generate_series(0, 5999) g`,
		move:   `UPDATE visit SET id = 'a' || substr(id, 2), v = v || '>' WHERE id = 'R' || lpad('%d', 4, '0')`,
		key:    "id", restart: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.create, "icu") && !hasICU(t) {
				t.Skip("this Postgres has no ICU collations")
			}
			c, logs := captureVisits(t, 200, tc.create, tc.fill)
			ctx := context.Background()
			conn := c.Connect(t)
			// Once the snapshot is under way, move rows from the end of
			// the table, which it reaches last, to keys before everything
			// it copied.
			moved := 0
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				var done int64
				var finished bool
				if err := conn.QueryRow(ctx, `SELECT rows_done, done FROM pgcourier.snapshot_progress WHERE table_name = 'public.visit'`).Scan(&done, &finished); err != nil {
					t.Fatal(err)
				}
				if finished {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the snapshot did not finish in 60 s")
				}
				if done < 400 || moved >= 20 {
					continue
				}
				c.Exec(t, fmt.Sprintf(tc.move, 5999-moved))
				moved++
			}
			if moved == 0 {
				t.Fatal("the snapshot finished before a row was moved; the test proves nothing")
			}
			waitCaughtUp(t, c, conn)

			rows, unapplied := replayUpstream(t, conn, "visit", tc.key, nil)
			var got []string
			for _, r := range rows {
				got = append(got, fmt.Sprintf("id=%s,v=%s,form=%d", r["id"], r["v"], len(r["form"])))
			}
			sort.Strings(got)
			want := sortedLines(t, conn, `SELECT format('id=%s,v=%s,form=%s', id, v, length(form)) FROM visit`)
			t.Logf("%d rows moved, %d updates came before their row's copy", moved, unapplied)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("replaying the outbox gives %d rows, the table holds %d; first differences:\n%s", len(got), len(want), firstDiff(got, want))
			}
			if restarted := strings.Contains(logs.String(), "copying the table again from the start"); restarted != tc.restart {
				t.Errorf("the snapshot started over: %t, want %t", restarted, tc.restart)
			}
			if unapplied == 0 {
				t.Fatal("every moved row was copied before its move; the test proves little")
			}
		})
	}
}

// TestSnapshotResumesInItsKey resumes snapshots whose progress is in
// another order than the table's chunking key: resuming from that key would
// skip rows, so they start over. One was written by an older version, in
// primary-key order, with no order recorded, for a table whose chunks now
// follow its replica identity's index; the other in a key whose type has
// changed since.
func TestSnapshotResumesInItsKey(t *testing.T) {
	for _, tc := range []struct {
		name, create, order, key string
		want                     []string // the order recorded at the end
	}{{
		name: "older version",
		create: `CREATE TABLE visit (id bigint PRIMARY KEY, code bigint NOT NULL UNIQUE, v text);
			ALTER TABLE visit REPLICA IDENTITY USING INDEX visit_code_key`,
		order: "NULL", key: "code", want: []string{"code bigint"},
	}, {
		name:   "type changed",
		create: `CREATE TABLE visit (id bigint PRIMARY KEY, code bigint NOT NULL, v text)`,
		order:  `ARRAY['id integer']`, key: "id", want: []string{"id bigint"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			c := pgtest.Start(t)
			c.Exec(t, tc.create)
			c.Exec(t, `INSERT INTO visit SELECT g, 5999 - g, 'v' || g FROM generate_series(0, 5999) g`)
			c.Exec(t, markerTable)
			prepare(t, c, allPublic)
			// As if half the table had been copied by id; nothing is in
			// the outbox, so replaying it shows every row the snapshot
			// skips.
			c.Exec(t, `UPDATE pgcourier.snapshot_progress SET last_key = '{2999}', key_columns = `+tc.order+`, rows_done = 3000 WHERE table_name = 'public.visit'`)
			opts := testOptions(c, allPublic)
			opts.SnapshotChunkRows = 500
			logs := &syncBuffer{}
			opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
			runCapture(t, opts)

			conn := c.Connect(t)
			snapshotDone(t, conn)
			waitCaughtUp(t, c, conn)
			rows, _ := replayUpstream(t, conn, "visit", tc.key, nil)
			if len(rows) != 6000 {
				t.Errorf("replaying the outbox gives %d rows, want 6000", len(rows))
			}
			if !strings.Contains(logs.String(), "its progress is in another key order") {
				t.Errorf("no warning that the snapshot started over; log:\n%s", logs.String())
			}
			var order []string
			if err := conn.QueryRow(context.Background(), `SELECT key_columns FROM pgcourier.snapshot_progress WHERE table_name = 'public.visit'`).Scan(&order); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(order, tc.want) {
				t.Errorf("progress records key order %q, want %q", order, tc.want)
			}
		})
	}
}

// TestSnapshotKeyMoveAtShutdown stops capture while it compares the keys of
// an update that moves a row the snapshot has not copied yet to a key it
// has, leaving a large value unchanged (see moved). What capture writes on
// the way out must not hold that update without the snapshot's restart: a
// restarted capture skips what the outbox holds, and no chunk would copy
// the moved row. The key's type is a domain whose check waits for advisory
// locks the test holds: lock 1 when the key is 399, which stops the
// snapshot before its third chunk, lock 2 when the key is negative, which
// stops the comparison of the key the row moves to.
func TestSnapshotKeyMoveAtShutdown(t *testing.T) {
	c := pgtest.Start(t)
	c.Exec(t, `
		CREATE FUNCTION hold(k bigint) RETURNS bool LANGUAGE plpgsql AS $$
		BEGIN
			IF k = 399 THEN PERFORM pg_advisory_xact_lock_shared(1); END IF;
			IF k < 0 THEN PERFORM pg_advisory_xact_lock_shared(2); END IF;
			RETURN true;
		END $$`)
	c.Exec(t, `CREATE DOMAIN visit_key AS bigint CHECK (hold(VALUE))`)
	c.Exec(t, `CREATE TABLE visit (id visit_key PRIMARY KEY, v text, form text)`)
	c.Exec(t, `ALTER TABLE visit ALTER form SET STORAGE EXTERNAL`)
	c.Exec(t, `INSERT INTO visit SELECT g, 'v' || g, repeat(md5(g::text), 100) FROM generate_series(0, 5999) g`)
	c.Exec(t, markerTable)
	prepare(t, c, allPublic)
	ctx := context.Background()
	conn := c.Connect(t)
	// A session's own locks never hold it: the update below runs here.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(1), pg_advisory_lock(2)`); err != nil {
		t.Fatal(err)
	}
	waitLock := func(key int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var waiting bool
			err := conn.QueryRow(ctx, `
				SELECT EXISTS (SELECT FROM pg_locks
				                WHERE locktype = 'advisory' AND objid = $1 AND NOT granted
				                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`, key).Scan(&waiting)
			if err != nil {
				t.Fatal(err)
			}
			if waiting {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no session waits for advisory lock %d after 30 s", key)
			}
		}
	}
	opts := testOptions(c, allPublic)
	opts.SnapshotChunkRows = 200
	logs := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	stop := runCapture(t, opts)

	waitLock(1) // rows 0 to 399 copied
	if _, err := conn.Exec(ctx, `UPDATE visit SET id = -id, v = v || '>' WHERE id = 5999`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(1)`); err != nil {
		t.Fatal(err)
	}
	waitLock(2) // capture compares the update's keys
	stop()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(2)`); err != nil {
		t.Fatal(err)
	}

	runCapture(t, opts)
	snapshotDone(t, conn)
	waitCaughtUp(t, c, conn)
	rows, unapplied := replayUpstream(t, conn, "visit", "id", nil)
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("id=%s,v=%s,form=%d", r["id"], r["v"], len(r["form"])))
	}
	sort.Strings(got)
	want := sortedLines(t, conn, `SELECT format('id=%s,v=%s,form=%s', id, v, length(form)) FROM visit`)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("replaying the outbox gives %d rows, the table holds %d (%d updates came before their row's copy); first differences:\n%s",
			len(got), len(want), unapplied, firstDiff(got, want))
	}
	if !strings.Contains(logs.String(), "copying the table again from the start") {
		t.Error("the snapshot did not start over, want it to after the update")
	}
}
