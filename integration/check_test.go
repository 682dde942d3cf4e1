package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// convergeTimeout is how long the nodes get to deliver everything once the
// writers have stopped.
const convergeTimeout = 60 * time.Second

// connect opens a connection to n's database for one check.
func (n *node) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(cctx, n.db.URL())
}

// query runs fn on a fresh connection to n's database and fails the test
// on error.
func (n *node) query(fn func(ctx context.Context, conn *pgx.Conn) error) {
	n.t.Helper()
	ctx := context.Background()
	conn, err := n.connect(ctx)
	if err != nil {
		n.t.Fatalf("%s: connect to its database: %v", n.id, err)
	}
	defer conn.Close(ctx)
	if err := fn(ctx, conn); err != nil {
		n.t.Fatalf("%s: %v", n.id, err)
	}
}

// captured is a client's capture position: the epoch and the last seq it
// put in its outbox, and how many batches wait for acknowledgement.
type captured struct {
	epoch   int64
	lastSeq int64
	pending int64
}

func readCaptured(ctx context.Context, conn *pgx.Conn) (captured, error) {
	var c captured
	err := conn.QueryRow(ctx, `
		SELECT s.epoch, s.next_seq - 1,
		       (SELECT count(*) FROM pgcourier.outbox o WHERE o.acked_at IS NULL)
		  FROM pgcourier.capture_state s`).Scan(&c.epoch, &c.lastSeq, &c.pending)
	if err == pgx.ErrNoRows {
		return c, nil
	}
	return c, err
}

// progress is a source's row of pgcourier.source_progress on the server.
type progress struct {
	epoch, appliedSeq, batches, rows int64
}

func readProgress(ctx context.Context, conn *pgx.Conn) (map[string]progress, error) {
	rows, err := conn.Query(ctx, `SELECT source, epoch, applied_seq, batches, rows FROM pgcourier.source_progress`)
	if err != nil {
		return nil, err
	}
	ps := map[string]progress{}
	for rows.Next() {
		var src string
		var p progress
		if err := rows.Scan(&src, &p.epoch, &p.appliedSeq, &p.batches, &p.rows); err != nil {
			return nil, err
		}
		ps[src] = p
	}
	return ps, rows.Err()
}

// appliedSeq returns the server's applied_seq for source, 0 if none.
func (tp *topology) appliedSeq(source string) int64 {
	tp.t.Helper()
	var seq int64
	tp.server.query(func(ctx context.Context, conn *pgx.Conn) error {
		err := conn.QueryRow(ctx, `SELECT coalesce(max(applied_seq), 0) FROM pgcourier.source_progress WHERE source = $1`, source).Scan(&seq)
		return err
	})
	return seq
}

// converge waits until every client's changes have reached the server,
// then checks the server against the clients. Writers must have stopped;
// every pgcourier process is expected to run.
//
// Each client first commits a fence row. Capture and apply keep commit
// order, so once a client's fence is on the server, so is everything the
// client committed before it. The wait also needs the server to have
// applied exactly the client's last captured seq, and the client to hold
// no batch without an acknowledgement.
func (tp *topology) converge() {
	t := tp.t
	t.Helper()
	fences := make([]string, len(tp.clients))
	for i, c := range tp.clients {
		fences[i] = newUUID()
		c.query(func(ctx context.Context, conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, `INSERT INTO fences (id, node) VALUES ($1, $2)`, fences[i], c.id)
			return err
		})
	}
	start := time.Now()
	deadline := start.Add(convergeTimeout)
	for {
		state, done := tp.caughtUp(fences)
		if done {
			t.Logf("converged %v after the writers stopped: %s", time.Since(start).Round(10*time.Millisecond), state)
			break
		}
		for _, n := range tp.nodes() {
			n.failIfDied()
		}
		if time.Now().After(deadline) {
			t.Fatalf("not converged %v after the writers stopped: %s", convergeTimeout, state)
		}
		time.Sleep(250 * time.Millisecond)
	}
	tp.check()
}

// caughtUp reports whether every client's fence is on the server, the
// server applied the client's last captured batch, and the client holds
// no unacknowledged batch; and describes the state for a failure message.
func (tp *topology) caughtUp(fences []string) (string, bool) {
	ctx := context.Background()
	srv, err := tp.server.connect(ctx)
	if err != nil {
		return fmt.Sprintf("server database: %v", err), false
	}
	defer srv.Close(ctx)
	ps, err := readProgress(ctx, srv)
	if err != nil {
		return fmt.Sprintf("server progress: %v", err), false
	}
	var blocked []string
	if rows, err := srv.Query(ctx, `SELECT source || ' blocked at seq ' || seq || ': ' || error FROM pgcourier.blocked`); err == nil {
		blocked, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	var states []string
	done := true
	for i, c := range tp.clients {
		var fenced bool
		if err := srv.QueryRow(ctx, `SELECT EXISTS (SELECT FROM fences WHERE id = $1)`, fences[i]).Scan(&fenced); err != nil {
			return fmt.Sprintf("server fences: %v", err), false
		}
		conn, err := c.connect(ctx)
		if err != nil {
			return fmt.Sprintf("%s database: %v", c.id, err), false
		}
		cp, err := readCaptured(ctx, conn)
		conn.Close(ctx)
		if err != nil {
			return fmt.Sprintf("%s capture state: %v", c.id, err), false
		}
		p := ps[c.id]
		ok := fenced && p.epoch == cp.epoch && p.appliedSeq == cp.lastSeq && cp.pending == 0
		done = done && ok
		states = append(states, fmt.Sprintf("%s captured epoch %d up to seq %d with %d unacknowledged, server applied epoch %d seq %d, fence arrived: %v",
			c.id, cp.epoch, cp.lastSeq, cp.pending, p.epoch, p.appliedSeq, fenced))
	}
	if len(blocked) > 0 {
		states = append(states, "server blocked: "+strings.Join(blocked, "; "))
	}
	return strings.Join(states, "; "), done
}

// check compares the server with the clients: every application table
// holds exactly the union of the clients' rows; every batch took effect
// once (batches = applied_seq, and the rows of the client's batches add up
// to the server's count); and no conflict or blocked batch was recorded.
func (tp *topology) check() {
	t := tp.t
	t.Helper()
	ctx := context.Background()
	srv, err := tp.server.connect(ctx)
	if err != nil {
		t.Fatalf("server database: %v", err)
	}
	defer srv.Close(ctx)

	for _, table := range appTables {
		want := map[string]string{}
		owner := map[string]string{}
		for _, c := range tp.clients {
			c.query(func(ctx context.Context, conn *pgx.Conn) error {
				rows, err := tableRows(ctx, conn, table)
				for id, row := range rows {
					if o, ok := owner[id]; ok {
						return fmt.Errorf("%s.id %s is on %s and %s: the test's writers must use disjoint keys", table, id, o, c.id)
					}
					owner[id] = c.id
					want[id] = row
				}
				return err
			})
		}
		got, err := tableRows(ctx, srv, table)
		if err != nil {
			t.Fatalf("server: %v", err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("server table %s differs from the union of the clients' (%d rows on the clients, %d on the server; -clients +server):\n%s",
				table, len(want), len(got), clip(diff, 6000))
		} else {
			t.Logf("table %s: %d rows, the same on the server as on the clients", table, len(got))
		}
	}

	ps, err := readProgress(ctx, srv)
	if err != nil {
		t.Fatalf("server progress: %v", err)
	}
	for _, c := range tp.clients {
		p, ok := ps[c.id]
		if !ok {
			t.Errorf("server has no progress for source %s", c.id)
			continue
		}
		if p.batches != p.appliedSeq {
			t.Errorf("server progress of %s: batches = %d, applied_seq = %d: want equal (a batch that took effect twice counts twice)", c.id, p.batches, p.appliedSeq)
		}
		c.checkOutbox(p.epoch)
		c.query(func(ctx context.Context, conn *pgx.Conn) error {
			var first, last, count, rows int64
			err := conn.QueryRow(ctx, `SELECT coalesce(min(seq), 0), coalesce(max(seq), 0), count(*), coalesce(sum(rows), 0) FROM pgcourier.outbox WHERE epoch = $1`, p.epoch).
				Scan(&first, &last, &count, &rows)
			if err != nil {
				return err
			}
			if first != 1 || count != last {
				return nil // trimmed: the sum says nothing
			}
			if rows != p.rows {
				t.Errorf("server progress of %s: rows = %d, the client's outbox batches hold %d row changes: want equal", c.id, p.rows, rows)
			}
			return nil
		})
	}
	if extra := len(ps) - len(tp.clients); extra != 0 {
		t.Errorf("server has progress for %d sources, want %d (the clients): %v", len(ps), len(tp.clients), ps)
	}

	rows, err := srv.Query(ctx, `
		SELECT format('%s seq %s %s.%s %s: %s %s', source, seq, table_schema, table_name, op, rule, coalesce(detail, ''))
		  FROM pgcourier.conflicts ORDER BY id LIMIT 20`)
	if err != nil {
		t.Fatalf("server conflicts: %v", err)
	}
	conflicts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("server conflicts: %v", err)
	}
	if len(conflicts) > 0 {
		t.Errorf("server recorded conflicts, want none (the clients never touch the same row):\n%s", strings.Join(conflicts, "\n"))
	}
	var blocked int
	if err := srv.QueryRow(ctx, `SELECT count(*) FROM pgcourier.blocked`).Scan(&blocked); err != nil {
		t.Fatalf("server blocked: %v", err)
	}
	if blocked > 0 {
		t.Errorf("server has %d blocked sources, want none", blocked)
	}
}

// checkOutbox decodes every batch of epoch in the client's outbox and
// checks that each is the batch its row says, and that no transaction was
// captured twice: commit LSNs rise strictly from one transaction to the
// next, across batches, and the parts of a transaction too large for one
// batch follow each other.
func (n *node) checkOutbox(epoch int64) {
	n.t.Helper()
	n.query(func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT seq, payload FROM pgcourier.outbox WHERE epoch = $1 ORDER BY seq`, epoch)
		if err != nil {
			return err
		}
		var seq int64
		var payload []byte
		var last pgcourier.LSN
		var batches, txns, parted int
		goesOn := false // the batch before ended with a part of a transaction
		_, err = pgx.ForEachRow(rows, []any{&seq, &payload}, func() error {
			b, err := wire.Decode(payload)
			if err != nil {
				return fmt.Errorf("outbox batch %d: %w", seq, err)
			}
			if b.Source != n.id || b.Epoch != epoch || b.Seq != uint64(seq) {
				n.t.Errorf("%s outbox row epoch %d seq %d holds batch %s epoch %d seq %d", n.id, epoch, seq, b.Source, b.Epoch, b.Seq)
			}
			for i, tx := range b.Transactions {
				switch {
				case i == 0 && goesOn:
					// The next part of the transaction before.
					if tx.CommitLSN != last {
						n.t.Errorf("%s outbox batch %d: starts with a transaction committed at %s, not the rest of the one at %s", n.id, seq, tx.CommitLSN, last)
					}
					continue
				case tx.CommitLSN <= last:
					n.t.Errorf("%s outbox batch %d: transaction committed at %s after one at %s: captured twice, or out of order", n.id, seq, tx.CommitLSN, last)
				}
				last = tx.CommitLSN
				txns++
			}
			if b.Continued && !goesOn {
				parted++
			}
			goesOn = b.Continued
			batches++
			return nil
		})
		if goesOn {
			n.t.Errorf("%s outbox: the last batch is a part of a transaction whose end never came", n.id)
		}
		n.t.Logf("%s outbox: %d batches, %d transactions (%d of them in parts), each once, in commit order", n.id, batches, txns, parted)
		return err
	})
}

// tableRows returns the rows of table as text, by id.
func tableRows(ctx context.Context, conn *pgx.Conn, table string) (map[string]string, error) {
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT t.id::text, t::text FROM %s t`, pgx.Identifier{table}.Sanitize()))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", table, err)
	}
	m := map[string]string{}
	var id, row string
	_, err = pgx.ForEachRow(rows, []any{&id, &row}, func() error {
		m[id] = row
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", table, err)
	}
	return m, nil
}

// snapshot returns the server's pgcourier state and application tables as
// text, for checking that something changed nothing.
func (tp *topology) snapshot() map[string][]string {
	tp.t.Helper()
	snap := map[string][]string{}
	tp.server.query(func(ctx context.Context, conn *pgx.Conn) error {
		for _, table := range append([]string{"pgcourier.source_progress", "pgcourier.source_epochs", "pgcourier.conflicts", "pgcourier.blocked"}, appTables...) {
			rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT t::text FROM %s t`, table))
			if err != nil {
				return err
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			sort.Strings(lines)
			snap[table] = lines
		}
		return nil
	})
	return snap
}

// clip shortens s to about n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("\n… (%d more bytes)", len(s)-n)
}

// waitFor polls cond until it holds, for up to timeout, and fails the test
// with cond's last description if it never does. A node process that died
// on its own fails the test at once.
func (tp *topology) waitFor(what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	tp.t.Helper()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		for _, n := range tp.nodes() {
			n.failIfDied()
		}
		if time.Since(start) > timeout {
			tp.t.Fatalf("%s: not after %v: %s", what, timeout, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// routeState is a route's row of a client's pgcourier.route_state.
type routeState struct {
	lastSuccess time.Time // zero if none
	lastSeq     int64
	lastError   string
}

// routes returns the client's recorded route states, by route name.
func (n *node) routes() map[string]routeState {
	n.t.Helper()
	m := map[string]routeState{}
	n.query(func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT route, last_success_at, coalesce(last_seq, 0), coalesce(last_error, '') FROM pgcourier.route_state`)
		if err != nil {
			return err
		}
		var name string
		var ok *time.Time
		var rs routeState
		_, err = pgx.ForEachRow(rows, []any{&name, &ok, &rs.lastSeq, &rs.lastError}, func() error {
			rs.lastSuccess = time.Time{}
			if ok != nil {
				rs.lastSuccess = *ok
			}
			m[name] = rs
			return nil
		})
		return err
	})
	return m
}

// captured returns the client's capture position.
func (n *node) captured() captured {
	n.t.Helper()
	var cp captured
	n.query(func(ctx context.Context, conn *pgx.Conn) (err error) {
		cp, err = readCaptured(ctx, conn)
		return err
	})
	return cp
}

func itoa(n int64) string { return fmt.Sprint(n) }
