package apply

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/internal/schema"
)

// testNode is the id of the node the tests apply on.
const testNode = "central"

// upstream starts a cluster with the pgcourier schema, runs setup on it,
// and returns it with a Writer.
func upstream(t testing.TB, setup string, opts ...Options) (*pgtest.Cluster, *Writer) {
	t.Helper()
	c := pgtest.Start(t)
	migrate(t, c)
	if setup != "" {
		c.Exec(t, setup)
	}
	return c, newWriter(t, c, opts...)
}

func migrate(t testing.TB, c *pgtest.Cluster) {
	t.Helper()
	conn := c.Connect(t)
	if _, err := schema.Migrate(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
}

// newWriter returns a Writer on c's database, closed when the test ends.
func newWriter(t testing.TB, c *pgtest.Cluster, opts ...Options) *Writer {
	t.Helper()
	o := Options{Node: testNode}
	if len(opts) > 0 {
		o = opts[0]
		if o.Node == "" {
			o.Node = testNode
		}
	}
	cfg, err := pgx.ParseConfig(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

// mustApply applies b and fails the test on an error.
func mustApply(t testing.TB, w *Writer, b *pgcourier.Batch) Result {
	t.Helper()
	res, err := w.Apply(context.Background(), b)
	if err != nil {
		t.Fatalf("Apply(%s seq %d) error: %v", b.Source, b.Seq, err)
	}
	return res
}

// wantStatus applies b and fails the test unless the result has status s.
func wantStatus(t testing.TB, w *Writer, b *pgcourier.Batch, s Status) Result {
	t.Helper()
	res := mustApply(t, w, b)
	if res.Status != s {
		t.Fatalf("Apply(%s seq %d) = %v (err %v), want %v", b.Source, b.Seq, res.Status, res.Err, s)
	}
	return res
}

// Values.
var (
	null      = pgcourier.Value{Kind: pgcourier.Null}
	unchanged = pgcourier.Value{Kind: pgcourier.Unchanged}
)

func tv(s string) pgcourier.Value { return pgcourier.TextValue(s) }

// vals turns strings into text values; "NULL" is NULL and "UNCHANGED" an
// unchanged TOAST value.
func vals(ss ...string) []pgcourier.Value {
	vs := make([]pgcourier.Value, len(ss))
	for i, s := range ss {
		switch s {
		case "NULL":
			vs[i] = null
		case "UNCHANGED":
			vs[i] = unchanged
		default:
			vs[i] = tv(s)
		}
	}
	return vs
}

// relation returns a relation of public.name. Columns are "name type",
// with a trailing " key" for a replica identity column.
func relation(name string, cols ...string) *pgcourier.Relation {
	r := &pgcourier.Relation{Schema: "public", Name: name}
	for _, c := range cols {
		f := strings.Fields(c)
		col := pgcourier.Column{Name: f[0]}
		if f[len(f)-1] == "key" {
			col.Key = true
			f = f[:len(f)-1]
		}
		col.Type = strings.Join(f[1:], " ")
		r.Columns = append(r.Columns, col)
	}
	return r
}

func ins(r *pgcourier.Relation, vs ...string) pgcourier.Change {
	return pgcourier.Change{Rel: r, Op: pgcourier.OpInsert, New: vals(vs...)}
}

func upd(r *pgcourier.Relation, vs ...string) pgcourier.Change {
	return pgcourier.Change{Rel: r, Op: pgcourier.OpUpdate, New: vals(vs...)}
}

// updOld is an update that carries an old image.
func updOld(r *pgcourier.Relation, newVals, oldVals []string) pgcourier.Change {
	return pgcourier.Change{Rel: r, Op: pgcourier.OpUpdate, New: vals(newVals...), Old: vals(oldVals...)}
}

// del deletes the row whose identity is vs (NULL for columns outside it).
func del(r *pgcourier.Relation, vs ...string) pgcourier.Change {
	return pgcourier.Change{Rel: r, Op: pgcourier.OpDelete, Old: vals(vs...)}
}

func truncate(r *pgcourier.Relation) pgcourier.Change {
	return pgcourier.Change{Rel: r, Op: pgcourier.OpTruncate}
}

// base is the commit time the tests count from.
var base = time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)

// at returns base plus s seconds.
func at(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }

// txn is a transaction committed at time when, with a commit LSN made from
// it.
func txn(when time.Time, chs ...pgcourier.Change) pgcourier.Transaction {
	return pgcourier.Transaction{CommitLSN: pgcourier.LSN(0x1000000 + when.Sub(base).Microseconds()), CommitTime: when, Changes: chs}
}

func batch(source string, seq uint64, txs ...pgcourier.Transaction) *pgcourier.Batch {
	return &pgcourier.Batch{Source: source, Epoch: 1, Seq: seq, Transactions: txs}
}

// query returns the rows of sql as text, NULL spelled NULL, columns joined
// by "|".
func query(t testing.TB, c *pgtest.Cluster, sql string, args ...any) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for k, v := range pgcourier.ValueSettings() {
		if _, err := conn.Exec(ctx, fmt.Sprintf("SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := conn.Query(ctx, sql, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var parts []string
		for _, v := range rows.RawValues() {
			if v == nil {
				parts = append(parts, "NULL")
			} else {
				parts = append(parts, string(v))
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}
