package apply

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// benchRows is the size of every benchmark batch: that many one-row
// transactions, as a field laptop commits them.
const benchRows = 1000

const benchTable = `CREATE TABLE visit (id bigint PRIMARY KEY, subject int NOT NULL, weight numeric(5,1), notes text, at timestamptz NOT NULL)`

// benchCluster quiets the clusters of both benchmarks alike: no autovacuum
// runs compete for this machine's CPUs in the middle of a measurement.
var benchCluster = pgtest.Options{Name: "bench", Settings: map[string]string{"autovacuum": "off"}}

var benchVisit = relation("visit", "id bigint key", "subject integer", "weight numeric(5,1)", "notes text", "at timestamp with time zone")

func benchValues(id int64) []string {
	return []string{fmt.Sprint(id), fmt.Sprint(id % 97), fmt.Sprintf("%d.%d", 40+id%60, id%10), "note for visit " + fmt.Sprint(id), "2026-05-01 08:00:00+00"}
}

// benchBatch returns batch seq of benchRows one-row transactions made by
// next, which returns each change in turn.
func benchBatch(seq uint64, next func() pgcourier.Change) *pgcourier.Batch {
	return benchBatchOf(seq, 1, next)
}

// benchBatchOf returns batch seq of benchRows changes made by next, in
// transactions of perTx changes.
func benchBatchOf(seq uint64, perTx int, next func() pgcourier.Change) *pgcourier.Batch {
	b := &pgcourier.Batch{Source: "laptop-07", Epoch: 1, Seq: seq}
	for i := 0; i < benchRows; i += perTx {
		tx := pgcourier.Transaction{
			CommitLSN:  pgcourier.LSN(seq*benchRows + uint64(i)),
			CommitTime: base.Add(time.Duration(seq*benchRows+uint64(i)) * time.Millisecond),
		}
		for range perTx {
			tx.Changes = append(tx.Changes, next())
		}
		b.Transactions = append(b.Transactions, tx)
	}
	return b
}

// BenchmarkApply applies batches of 1,000 one-row transactions and reports
// rows per second:
//
//   - insert: new rows, applied together;
//   - insert-100: new rows in 100-row transactions (an import);
//   - update: updates of rows the same source wrote;
//   - mixed: 60% inserts, 30% updates and 10% deletes in random order, so
//     runs of one operation are short;
//   - insert-row-by-row: inserts into a table with a second unique
//     constraint, which a cautious plan applies one statement per change;
//     the writer's optimistic plan groups them all the same;
//   - copy: the same rows by COPY into a plain table, for comparison: the
//     ceiling of any apply.
func BenchmarkApply(b *testing.B) {
	c := pgtest.Start(b, benchCluster)
	migrate(b, c)
	c.Exec(b, benchTable+`; CREATE TABLE visit_u (LIKE visit INCLUDING ALL, UNIQUE (subject, id))`)
	w := newWriter(b, c)
	ctx := context.Background()
	var seq uint64
	var nextID int64
	apply := func(b *testing.B, bt *pgcourier.Batch) {
		res, err := w.Apply(ctx, bt)
		if err != nil || res.Status != Applied || res.Conflicts != 0 {
			b.Fatalf("Apply = %v, %v (%v), %d conflicts", res.Status, err, res.Err, res.Conflicts)
		}
	}
	insert := func(rel *pgcourier.Relation) func() pgcourier.Change {
		return func() pgcourier.Change { nextID++; return ins(rel, benchValues(nextID)...) }
	}
	report := func(b *testing.B, rows int, took time.Duration) {
		b.ReportMetric(float64(rows)/took.Seconds(), "rows/s")
	}

	b.Run("insert", func(b *testing.B) {
		var took time.Duration
		for b.Loop() {
			seq++
			bt := benchBatch(seq, insert(benchVisit))
			start := time.Now()
			apply(b, bt)
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})

	b.Run("insert-100", func(b *testing.B) {
		var took time.Duration
		for b.Loop() {
			seq++
			bt := benchBatchOf(seq, 100, insert(benchVisit))
			start := time.Now()
			apply(b, bt)
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})

	b.Run("update", func(b *testing.B) {
		first := nextID + 1
		seq++
		apply(b, benchBatch(seq, insert(benchVisit)))
		var took time.Duration
		round := int64(0)
		for b.Loop() {
			seq++
			round++
			i := int64(0)
			bt := benchBatch(seq, func() pgcourier.Change {
				vs := benchValues(first + i)
				vs[3] = fmt.Sprintf("revised %d", round)
				i++
				return upd(benchVisit, vs...)
			})
			start := time.Now()
			apply(b, bt)
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})

	b.Run("mixed", func(b *testing.B) {
		rnd := rand.New(rand.NewPCG(1, 2))
		var live []int64
		var took time.Duration
		for b.Loop() {
			seq++
			bt := benchBatch(seq, func() pgcourier.Change {
				switch p := rnd.IntN(10); {
				case p < 6 || len(live) < 10:
					nextID++
					live = append(live, nextID)
					return ins(benchVisit, benchValues(nextID)...)
				case p < 9:
					vs := benchValues(live[rnd.IntN(len(live))])
					vs[2] = "99.9"
					return upd(benchVisit, vs...)
				default:
					j := rnd.IntN(len(live))
					id := live[j]
					live = append(live[:j], live[j+1:]...)
					return del(benchVisit, fmt.Sprint(id), "NULL", "NULL", "NULL", "NULL")
				}
			})
			start := time.Now()
			apply(b, bt)
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})

	b.Run("insert-row-by-row", func(b *testing.B) {
		rel := relation("visit_u", "id bigint key", "subject integer", "weight numeric(5,1)", "notes text", "at timestamp with time zone")
		var took time.Duration
		for b.Loop() {
			seq++
			bt := benchBatch(seq, insert(rel))
			start := time.Now()
			apply(b, bt)
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})

	b.Run("copy", func(b *testing.B) {
		conn := c.Connect(b)
		if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS visit_copy (LIKE visit INCLUDING ALL)`); err != nil {
			b.Fatal(err)
		}
		var took time.Duration
		for b.Loop() {
			rows := make([][]any, benchRows)
			for i := range rows {
				nextID++
				rows[i] = []any{nextID, int32(nextID % 97), float64(40+nextID%60) + float64(nextID%10)/10, "note for visit " + fmt.Sprint(nextID), base}
			}
			start := time.Now()
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{"visit_copy"}, []string{"id", "subject", "weight", "notes", "at"}, pgx.CopyFromRows(rows)); err != nil {
				b.Fatal(err)
			}
			took += time.Since(start)
		}
		report(b, b.N*benchRows, took)
	})
}

// BenchmarkNativeReplication measures Postgres's own logical replication on
// the same rows, for comparison with BenchmarkApply: 1,000 row changes are
// committed on a source while the target table is locked, then the
// subscription's apply worker takes them; rows/s counts from the lock's
// release to the last change's arrival.
//
//   - insert: one-row insert transactions (BenchmarkApply/insert);
//   - insert-100: 100-row insert transactions (BenchmarkApply/insert-100);
//   - update: one-row updates of rows that exist on both sides
//     (BenchmarkApply/update).
func BenchmarkNativeReplication(b *testing.B) {
	cs := pgtest.StartN(b, 2, benchCluster)
	src, dst := cs[0], cs[1]
	src.Exec(b, benchTable+`; CREATE PUBLICATION bench FOR TABLE visit`)
	dst.Exec(b, benchTable)
	dst.Exec(b, fmt.Sprintf(`CREATE SUBSCRIPTION bench CONNECTION '%s' PUBLICATION bench WITH (copy_data = false)`, src.URL()))
	b.Cleanup(func() { dst.Exec(b, `DROP SUBSCRIPTION bench`) })
	ctx := context.Background()
	srcConn, dstConn, locker := src.Connect(b), dst.Connect(b), dst.Connect(b)
	const insertSQL = `INSERT INTO visit VALUES ($1::text::bigint, $2::text::int, $3::text::numeric, $4, $5::text::timestamptz)`
	var nextID int64
	insert := func() {
		nextID++
		vs := benchValues(nextID)
		if _, err := srcConn.Exec(ctx, insertSQL, vs[0], vs[1], vs[2], vs[3], vs[4]); err != nil {
			b.Fatal(err)
		}
	}
	// arrived waits until the target's row id has the notes want.
	arrived := func(id int64, want string) {
		deadline := time.Now().Add(time.Minute)
		for {
			var got string
			err := dstConn.QueryRow(ctx, `SELECT notes FROM visit WHERE id = $1`, id).Scan(&got)
			if err == nil && got == want {
				return
			}
			if err != nil && err != pgx.ErrNoRows {
				b.Fatal(err)
			}
			if time.Now().After(deadline) {
				b.Fatalf("row %d with notes %q did not arrive within a minute", id, want)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	// backlog commits the changes of commit on the source while the
	// target table is locked, then times their arrival.
	backlog := func(b *testing.B, commit func() (lastID int64, notes string)) time.Duration {
		if _, err := locker.Exec(ctx, `BEGIN; LOCK TABLE visit IN ACCESS EXCLUSIVE MODE`); err != nil {
			b.Fatal(err)
		}
		id, notes := commit()
		time.Sleep(100 * time.Millisecond) // the worker receives what it can, and waits
		start := time.Now()
		if _, err := locker.Exec(ctx, `COMMIT`); err != nil {
			b.Fatal(err)
		}
		arrived(id, notes)
		return time.Since(start)
	}
	insert()
	arrived(nextID, benchValues(nextID)[3])

	b.Run("insert", func(b *testing.B) {
		var took time.Duration
		for b.Loop() {
			took += backlog(b, func() (int64, string) {
				for range benchRows {
					insert()
				}
				return nextID, benchValues(nextID)[3]
			})
		}
		b.ReportMetric(float64(b.N*benchRows)/took.Seconds(), "rows/s")
	})

	b.Run("insert-100", func(b *testing.B) {
		var took time.Duration
		for b.Loop() {
			took += backlog(b, func() (int64, string) {
				for range benchRows / 100 {
					tx, err := srcConn.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					for range 100 {
						nextID++
						vs := benchValues(nextID)
						if _, err := tx.Exec(ctx, insertSQL, vs[0], vs[1], vs[2], vs[3], vs[4]); err != nil {
							b.Fatal(err)
						}
					}
					if err := tx.Commit(ctx); err != nil {
						b.Fatal(err)
					}
				}
				return nextID, benchValues(nextID)[3]
			})
		}
		b.ReportMetric(float64(b.N*benchRows)/took.Seconds(), "rows/s")
	})

	b.Run("update", func(b *testing.B) {
		first := nextID + 1
		for range benchRows {
			insert()
		}
		arrived(nextID, benchValues(nextID)[3])
		var took time.Duration
		round := 0
		for b.Loop() {
			round++
			notes := fmt.Sprintf("revised %d", round)
			took += backlog(b, func() (int64, string) {
				for i := range int64(benchRows) {
					if _, err := srcConn.Exec(ctx, `UPDATE visit SET notes = $2 WHERE id = $1`, first+i, notes); err != nil {
						b.Fatal(err)
					}
				}
				return first + benchRows - 1, notes
			})
		}
		b.ReportMetric(float64(b.N*benchRows)/took.Seconds(), "rows/s")
	})
}
