package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// sizes scale the workloads: fullSizes for the published figures, sized so
// that the whole run ends within ten minutes on a 2-core machine, and
// quickSizes for smoke tests that only prove the harness works.
type sizes struct {
	clients    int              // concurrent clients of W1, W3, W4, W5 and W7
	importers  int              // concurrent clients of W2 and W8
	importTx   int64            // rows per W2 and W8 transaction
	lagRate    int              // rows/s offered during W1's lag stretch
	lagFor     time.Duration    // length of W1's lag stretch
	rows       map[string]int64 // row changes per workload
	phaseLimit time.Duration    // longest wait for a stretch to arrive
}

var fullSizes = sizes{
	clients:    4,
	importers:  2,
	importTx:   100,
	lagRate:    1000,
	lagFor:     5 * time.Second,
	rows:       map[string]int64{"W1": 100_000, "W2": 400_000, "W3": 100_000, "W4": 100_000, "W5": 200_000, "W6": 2_000_000, "W7": 100_000, "W8": 400_000},
	phaseLimit: 5 * time.Minute,
}

var quickSizes = sizes{
	clients:    4,
	importers:  2,
	importTx:   100,
	lagRate:    500,
	lagFor:     time.Second,
	rows:       map[string]int64{"W1": 2_000, "W2": 2_000, "W3": 2_000, "W4": 2_000, "W5": 2_000, "W6": 2_000, "W7": 2_000, "W8": 2_000},
	phaseLimit: 30 * time.Second,
}

// workload is one kind of change traffic on the source.
type workload struct {
	id    string
	title string // a few words for progress lines and the table
	about string // one sentence for the method section
	// backlog workloads run with the link down; the contender is timed
	// catching up once it comes back.
	backlog bool
	// lagStretch workloads start, in live mode, with a stretch at a steady
	// offered rate whose per-row lag is measured, before the timed stretch.
	lagStretch bool
	// tables are the tables the workload writes, parents first.
	tables []string
	// seed, when set, fills the source before any contender starts; the
	// harness copies the rows to the target as they are.
	seed func(ctx context.Context, conn *pgx.Conn, n int64) error
	// run commits about n row changes on the source.
	run func(ctx context.Context, g *generator, n int64) (genStats, error)
}

// workloads lists every workload in report order.
var workloads = []*workload{
	{
		id: "W1", title: "single-row inserts",
		about: "single-row insert transactions (subjects) from several concurrent clients, as fast as they go: a day of data entry. " +
			"In live mode a stretch at a steady offered rate comes first, for lag.",
		lagStretch: true,
		tables:     []string{"subject"},
		run:        func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.singleInserts(ctx, n) },
	},
	{
		id: "W2", title: "100-row inserts",
		about:  "100-row insert transactions (subjects) from two clients: an import.",
		tables: []string{"subject"},
		run:    func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.imports(ctx, n) },
	},
	{
		id: "W3", title: "single-row updates",
		about: "single-row updates of existing visits (about 300-byte jsonb form data), each visit edited once, in random order, " +
			"from several clients; the visits exist on both sides before the contender starts.",
		tables: []string{"visit"},
		seed:   seedVisits,
		run:    func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.edits(ctx, n) },
	},
	{
		id: "W4", title: "edc mix",
		about: "an edc-like mix from several clients: enrolment (subject + consent), visits (about 300-byte jsonb) with 0–3 requisitions, " +
			"visit edits, requisition updates and deletes; about 1.7 row changes per transaction.",
		tables: allTables,
		run:    func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.mix(ctx, n) },
	},
	{
		id: "W5", title: "backlog catch-up",
		about:   "W1's traffic while the link is down; then the link returns and the contender is timed catching up.",
		backlog: true,
		tables:  []string{"subject"},
		run:     func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.singleInserts(ctx, n) },
	},
	{
		id: "W6", title: "one huge transaction",
		about:   "one transaction inserting every row (subjects) while the link is down; then the link returns: catch-up time and memory.",
		backlog: true,
		tables:  []string{"subject"},
		run:     func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.oneTransaction(ctx, n) },
	},
	{
		id: "W7", title: "edc mix backlog",
		about:   "W4's traffic while the link is down; then the link returns and the contender is timed catching up: a day of clinic work shipped at once.",
		backlog: true,
		tables:  allTables,
		run:     func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.mix(ctx, n) },
	},
	{
		id: "W8", title: "import backlog",
		about:   "W2's traffic while the link is down; then the link returns and the contender is timed catching up.",
		backlog: true,
		tables:  []string{"subject"},
		run:     func(ctx context.Context, g *generator, n int64) (genStats, error) { return g.imports(ctx, n) },
	},
}

// genStats describes a stretch of workload committed on the source.
type genStats struct {
	changes    int64     // rows inserted, updated and deleted
	start, end time.Time // before the first statement, after the last commit
	// lo and hi bound the subject ids inserted, for lag.
	lo, hi int64
}

// rate returns the changes per second the workload committed.
func (s genStats) rate() float64 {
	return float64(s.changes) / s.end.Sub(s.start).Seconds()
}

// generator commits workloads on the source database.
type generator struct {
	url         string
	sz          sizes
	nextSubject int64 // the first subject id not used yet
}

func newGenerator(url string, sz sizes) *generator {
	return &generator{url: url, sz: sz, nextSubject: 1}
}

// subjectIDs reserves n fresh subject ids and returns the first and last.
func (g *generator) subjectIDs(n int64) (lo, hi int64) {
	lo = g.nextSubject
	g.nextSubject += n
	return lo, lo + n - 1
}

// clientFunc is one client's part of a workload. It returns the row
// changes it committed.
type clientFunc func(ctx context.Context, conn *pgx.Conn, client int) (int64, error)

// runClients opens n connections, then runs f on all of them at once and times
// them from the first statement to the last commit.
func (g *generator) runClients(ctx context.Context, n int, f clientFunc) (genStats, error) {
	conns := make([]*pgx.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		c, err := pgx.Connect(ctx, g.url)
		if err != nil {
			return genStats{}, fmt.Errorf("workload client: %w", err)
		}
		conns[i] = c
	}
	var total atomic.Int64
	eg, ectx := errgroup.WithContext(ctx)
	st := genStats{start: time.Now()}
	for i, c := range conns {
		eg.Go(func() error {
			n, err := f(ectx, c, i)
			total.Add(n)
			return err
		})
	}
	err := eg.Wait()
	st.end = time.Now()
	st.changes = total.Load()
	return st, err
}

// singleInserts commits n single-row subject inserts from the clients.
func (g *generator) singleInserts(ctx context.Context, n int64) (genStats, error) {
	lo, hi := g.subjectIDs(n)
	var next atomic.Int64
	next.Store(lo)
	st, err := g.runClients(ctx, g.sz.clients, func(ctx context.Context, conn *pgx.Conn, _ int) (int64, error) {
		var done int64
		for id := next.Add(1) - 1; id <= hi; id = next.Add(1) - 1 {
			tag, err := conn.Exec(ctx, subjectsSQL, id, id)
			if err != nil {
				return done, fmt.Errorf("insert subject: %w", err)
			}
			done += tag.RowsAffected()
		}
		return done, nil
	})
	st.lo, st.hi = lo, hi
	return st, err
}

// paced commits single-row subject inserts at a steady rate (rows/s) for d:
// row j is due at start + j/rate and goes to client j mod clients. A
// client that falls behind sends at once, so the offered rate holds as
// long as the source keeps up.
func (g *generator) paced(ctx context.Context, rate int, d time.Duration) (genStats, error) {
	n := max(int64(float64(rate)*d.Seconds()), 1)
	lo, hi := g.subjectIDs(n)
	clients := g.sz.clients
	// The schedule starts when the first client does, after all connected.
	start := sync.OnceValue(time.Now)
	st, err := g.runClients(ctx, clients, func(ctx context.Context, conn *pgx.Conn, client int) (int64, error) {
		start := start()
		var done int64
		for j := int64(client); j < n; j += int64(clients) {
			due := start.Add(time.Duration(j) * time.Second / time.Duration(rate))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return done, ctx.Err()
				case <-t.C:
				}
			}
			tag, err := conn.Exec(ctx, subjectsSQL, lo+j, lo+j)
			if err != nil {
				return done, fmt.Errorf("insert subject: %w", err)
			}
			done += tag.RowsAffected()
		}
		return done, nil
	})
	st.lo, st.hi = lo, hi
	return st, err
}

// imports commits n subjects in transactions of importTx rows from the
// importer clients.
func (g *generator) imports(ctx context.Context, n int64) (genStats, error) {
	lo, hi := g.subjectIDs(n)
	size := g.sz.importTx
	var next atomic.Int64
	next.Store(lo)
	st, err := g.runClients(ctx, g.sz.importers, func(ctx context.Context, conn *pgx.Conn, _ int) (int64, error) {
		var done int64
		for a := next.Add(size) - size; a <= hi; a = next.Add(size) - size {
			tag, err := conn.Exec(ctx, subjectsSQL, a, min(a+size-1, hi))
			if err != nil {
				return done, fmt.Errorf("import subjects: %w", err)
			}
			done += tag.RowsAffected()
		}
		return done, nil
	})
	st.lo, st.hi = lo, hi
	return st, err
}

// oneTransaction commits n subjects in a single transaction.
func (g *generator) oneTransaction(ctx context.Context, n int64) (genStats, error) {
	lo, hi := g.subjectIDs(n)
	st, err := g.runClients(ctx, 1, func(ctx context.Context, conn *pgx.Conn, _ int) (int64, error) {
		tag, err := conn.Exec(ctx, subjectsSQL, lo, hi)
		if err != nil {
			return 0, fmt.Errorf("insert subjects: %w", err)
		}
		return tag.RowsAffected(), nil
	})
	st.lo, st.hi = lo, hi
	return st, err
}

// seedVisits inserts n visits, ten per subject, and their subjects.
func seedVisits(ctx context.Context, conn *pgx.Conn, n int64) error {
	if _, err := conn.Exec(ctx, subjectsSQL, 1, (n+9)/10); err != nil {
		return fmt.Errorf("seed subjects: %w", err)
	}
	if _, err := conn.Exec(ctx, visitsSQL, 1, n); err != nil {
		return fmt.Errorf("seed visits: %w", err)
	}
	return nil
}

// edits updates each of the n seeded visits once, in a scattered order
// (id = k·stride mod n + 1 with stride coprime to n).
func (g *generator) edits(ctx context.Context, n int64) (genStats, error) {
	stride := int64(7919)
	for gcd(stride, n) != 1 {
		stride++
	}
	var next atomic.Int64
	return g.runClients(ctx, g.sz.clients, func(ctx context.Context, conn *pgx.Conn, _ int) (int64, error) {
		var done int64
		for k := next.Add(1) - 1; k < n; k = next.Add(1) - 1 {
			id := k*stride%n + 1
			tag, err := conn.Exec(ctx, editVisitSQL, id)
			if err != nil {
				return done, fmt.Errorf("edit visit: %w", err)
			}
			if tag.RowsAffected() != 1 {
				return done, fmt.Errorf("edit visit %d: no such visit", id)
			}
			done++
		}
		return done, nil
	})
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// mix commits about n row changes of edc-like data entry. Each client
// works on its own subjects, visits and requisitions (ids are striped by
// client), so clients never wait for each other's locks.
func (g *generator) mix(ctx context.Context, n int64) (genStats, error) {
	var total atomic.Int64
	clients := g.sz.clients
	return g.runClients(ctx, clients, func(ctx context.Context, conn *pgx.Conn, client int) (int64, error) {
		m := &mixClient{
			conn:   conn,
			rng:    rand.New(rand.NewPCG(uint64(client)+1, 42)),
			stride: int64(clients),
			offset: int64(client) + 1,
		}
		var done int64
		for total.Load() < n {
			k, err := m.step(ctx)
			done += k
			total.Add(k)
			if err != nil {
				return done, err
			}
		}
		return done, nil
	})
}

// mixClient is one data-entry client of the edc mix.
type mixClient struct {
	conn           *pgx.Conn
	rng            *rand.Rand
	stride, offset int64 // this client's ids are offset, offset+stride, …
	seq            [4]int64
	subjects       []int64
	visits         []int64
	requisitions   []int64
}

// id returns this client's next id for table t (an index into allTables).
func (m *mixClient) id(t int) int64 {
	id := m.seq[t]*m.stride + m.offset
	m.seq[t]++
	return id
}

// step commits one transaction and returns the row changes it made.
func (m *mixClient) step(ctx context.Context) (int64, error) {
	r := m.rng.IntN(100)
	switch {
	case len(m.subjects) == 0 || r < 10:
		return m.enrol(ctx)
	case len(m.visits) == 0 || r < 50:
		return m.visit(ctx)
	case r < 85:
		return m.exec(ctx, editVisitSQL, m.visits[m.rng.IntN(len(m.visits))])
	case len(m.requisitions) == 0:
		return m.visit(ctx)
	case r < 95:
		return m.exec(ctx, drawnSQL, m.requisitions[m.rng.IntN(len(m.requisitions))])
	default:
		i := m.rng.IntN(len(m.requisitions))
		id := m.requisitions[i]
		m.requisitions[i] = m.requisitions[len(m.requisitions)-1]
		m.requisitions = m.requisitions[:len(m.requisitions)-1]
		return m.exec(ctx, dropRequisitionSQL, id)
	}
}

// enrol registers a subject and their consent in one transaction.
func (m *mixClient) enrol(ctx context.Context) (int64, error) {
	sid := m.id(0)
	b := &pgx.Batch{}
	b.Queue(subjectsSQL, sid, sid)
	b.Queue(consentSQL, m.id(1), sid)
	n, err := m.batch(ctx, b)
	if err == nil {
		m.subjects = append(m.subjects, sid)
	}
	return n, err
}

// visit records a visit of a known subject with 0 to 3 requisitions in one
// transaction.
func (m *mixClient) visit(ctx context.Context) (int64, error) {
	if len(m.subjects) == 0 {
		return m.enrol(ctx)
	}
	vid := m.id(2)
	b := &pgx.Batch{}
	b.Queue(visitSQL, vid, m.subjects[m.rng.IntN(len(m.subjects))])
	var reqs []int64
	for range m.rng.IntN(4) {
		rid := m.id(3)
		reqs = append(reqs, rid)
		b.Queue(requisitionSQL, rid, vid)
	}
	n, err := m.batch(ctx, b)
	if err == nil {
		m.visits = append(m.visits, vid)
		m.requisitions = append(m.requisitions, reqs...)
	}
	return n, err
}

// batch runs b's statements in one transaction: the extended protocol ends
// a batch with a single Sync, so its statements commit together.
func (m *mixClient) batch(ctx context.Context, b *pgx.Batch) (int64, error) {
	res := m.conn.SendBatch(ctx, b)
	var n int64
	for range b.Len() {
		tag, err := res.Exec()
		if err != nil {
			res.Close()
			return 0, fmt.Errorf("edc mix: %w", err)
		}
		n += tag.RowsAffected()
	}
	if err := res.Close(); err != nil {
		return 0, fmt.Errorf("edc mix: %w", err)
	}
	return n, nil
}

// exec runs one single-row statement in its own transaction.
func (m *mixClient) exec(ctx context.Context, sql string, id int64) (int64, error) {
	tag, err := m.conn.Exec(ctx, sql, id)
	if err != nil {
		return 0, fmt.Errorf("edc mix: %w", err)
	}
	return tag.RowsAffected(), nil
}

// insertMarker commits marker row id on the source.
func insertMarker(ctx context.Context, url string, id int64) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("insert marker: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "INSERT INTO bench_marker (id) VALUES ($1)", id); err != nil {
		return fmt.Errorf("insert marker: %w", err)
	}
	return nil
}
