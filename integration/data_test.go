package integration

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// schemaSQL is the application schema of every node: an edc-like study
// database. Tables have no foreign keys, so that rows may arrive in any
// table order. requisitions.comments is sometimes long enough to be stored
// out of line (TOAST), and updates that leave it alone send it as
// "unchanged". fences holds the rows the convergence check writes last.
const schemaSQL = `
CREATE TABLE subjects (
    id                 uuid PRIMARY KEY,
    subject_identifier text NOT NULL,
    site_code          text NOT NULL,
    dob                date,
    gender             char(1),
    initials           text,
    created            timestamptz NOT NULL DEFAULT now(),
    modified           timestamptz NOT NULL DEFAULT now(),
    revision           integer NOT NULL DEFAULT 1
);
CREATE TABLE consents (
    id               uuid PRIMARY KEY,
    subject_id       uuid NOT NULL,
    consent_datetime timestamptz NOT NULL,
    consent_version  text NOT NULL,
    is_literate      boolean,
    witness_name     text,
    identity_hash    bytea
);
CREATE TABLE visits (
    id                  uuid PRIMARY KEY,
    subject_id          uuid NOT NULL,
    visit_code          text NOT NULL,
    visit_code_sequence smallint NOT NULL DEFAULT 0,
    report_datetime     timestamptz NOT NULL,
    reason              text NOT NULL,
    info                jsonb
);
CREATE TABLE requisitions (
    id             uuid PRIMARY KEY,
    visit_id       uuid NOT NULL,
    panel          text NOT NULL,
    is_drawn       boolean NOT NULL DEFAULT false,
    drawn_datetime timestamptz,
    volume         numeric(6,2),
    specimen_refs  text[],
    comments       text
);
CREATE TABLE lab_results (
    id             bigint PRIMARY KEY,
    requisition_id uuid NOT NULL,
    analyte        text NOT NULL,
    value          numeric,
    units          text,
    flags          text,
    resulted_at    timestamptz NOT NULL
);
CREATE TABLE fences (
    id   uuid PRIMARY KEY,
    node text NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);
`

// appTables are the tables of schemaSQL, each keyed by its id column.
var appTables = []string{"subjects", "consents", "visits", "requisitions", "lab_results", "fences"}

// writer writes edc-like transactions into one client's database, as a
// data entry app would: enrolments, visits, requisitions, lab results, and
// some updates and deletes, each in a small transaction. It survives its
// database going away (a crash, a restart) by reconnecting.
type writer struct {
	node *node
	rng  *rand.Rand

	// The rows it made, to update and delete. A transaction that failed
	// may leave ids here that do not exist; touching them changes nothing.
	subjects, visits, requisitions []string
	labs                           []int64
	nextLab                        int64
	// One import of importRows lab results in one transaction, larger
	// than a batch: capture writes it in parts, the server applies it
	// whole. importing is set while its transaction is open.
	imported, importing bool

	mu         sync.Mutex
	commits    int
	reconnects int
	unexpected []error

	cancel context.CancelFunc
	done   chan struct{}
}

// startWriters starts a writer on every client of tp and returns them.
func (tp *topology) startWriters() []*writer {
	ws := make([]*writer, len(tp.clients))
	for i, c := range tp.clients {
		ws[i] = newWriter(c)
		ws[i].start()
	}
	tp.t.Cleanup(func() {
		for _, w := range ws {
			w.stop()
		}
	})
	return ws
}

func newWriter(n *node) *writer {
	return &writer{
		node:    n,
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		nextLab: int64(n.index+1) << 40, // clients' lab result ids never meet
	}
}

// start starts writing until stop.
func (w *writer) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		w.loop(ctx)
	}()
}

// stop stops writing and waits for the last transaction to end. It may be
// called more than once.
func (w *writer) stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel = nil
}

// stopWriters stops every writer and fails the test if one met an error
// that a database going away does not explain, or committed nothing.
func stopWriters(t *testing.T, ws []*writer) {
	t.Helper()
	for _, w := range ws {
		w.stop()
		w.mu.Lock()
		t.Logf("writer on %s: %d transactions committed, %d reconnects", w.node.id, w.commits, w.reconnects)
		for _, err := range w.unexpected {
			t.Errorf("writer on %s: %v", w.node.id, err)
		}
		if w.commits == 0 {
			t.Errorf("writer on %s committed nothing", w.node.id)
		}
		w.mu.Unlock()
	}
}

func (w *writer) loop(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := pgx.Connect(cctx, w.node.db.URL())
			cancel()
			if err != nil {
				sleep(ctx, 200*time.Millisecond)
				continue
			}
			conn = c
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return w.transaction(ctx, tx) })
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			w.mu.Lock()
			w.commits++
			w.mu.Unlock()
			w.imported = w.imported || w.importing
		case connectionLost(err) || conn.IsClosed():
			w.mu.Lock()
			w.reconnects++
			w.mu.Unlock()
			conn.Close(context.Background())
			conn = nil
			sleep(ctx, 100*time.Millisecond)
			continue
		default:
			w.mu.Lock()
			w.unexpected = append(w.unexpected, err)
			n := len(w.unexpected)
			w.mu.Unlock()
			if n >= 5 {
				return
			}
		}
		sleep(ctx, time.Duration(5+w.rng.IntN(20))*time.Millisecond)
	}
}

// connectionLost reports whether err says the database went away (or is
// starting up or shutting down), rather than that a statement is wrong.
func connectionLost(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	return true // not an answer from Postgres: the connection failed
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// importRows is the size of the writer's one import: more than capture's
// default part of 20,000 changes.
const importRows = 25_000

// transaction makes one to four changes; or, once some transactions are
// in, the import.
func (w *writer) transaction(ctx context.Context, tx pgx.Tx) error {
	w.importing = false
	if !w.imported && w.commits >= 20 && w.rng.IntN(10) == 0 {
		w.importing = true
		first := w.nextLab + 1
		w.nextLab += importRows
		_, err := tx.Exec(ctx, `INSERT INTO lab_results (id, requisition_id, analyte, value, units, resulted_at)
			SELECT $1::int8 + g, $2::uuid, 'import', g, 'cells/uL', now() FROM generate_series(0, $3::int8 - 1) g`,
			first, newUUID(), importRows)
		return err
	}
	for range 1 + w.rng.IntN(4) {
		if err := w.change(ctx, tx); err != nil {
			return err
		}
	}
	return nil
}

// change makes one random change of a data entry session.
func (w *writer) change(ctx context.Context, tx pgx.Tx) error {
	r := w.rng
	p := r.IntN(100)
	switch {
	case p < 20 || len(w.subjects) == 0:
		return w.enrol(ctx, tx)
	case p < 30 || len(w.visits) == 0:
		id := newUUID()
		_, err := tx.Exec(ctx, `INSERT INTO visits (id, subject_id, visit_code, visit_code_sequence, report_datetime, reason, info)
			VALUES ($1, $2, $3, $4, now() - $5 * interval '1 minute', 'scheduled', $6)`,
			id, pick(r, w.subjects), fmt.Sprintf("%d.0", 1000+100*r.IntN(10)), r.IntN(3), r.IntN(5000),
			fmt.Sprintf(`{"weight_kg": %d.%d, "notes": %q}`, 40+r.IntN(60), r.IntN(10), words(r, 3)))
		w.visits = append(w.visits, id)
		return err
	case p < 42 || len(w.requisitions) == 0:
		id := newUUID()
		comments := words(r, 4)
		if r.IntN(8) == 0 {
			comments = hex.EncodeToString(randomBytes(3000 + r.IntN(3000))) // stored out of line
		}
		_, err := tx.Exec(ctx, `INSERT INTO requisitions (id, visit_id, panel, specimen_refs, comments) VALUES ($1, $2, $3, $4, $5)`,
			id, pick(r, w.visits), pick(r, []string{"cd4", "viral_load", "fbc", "chemistry", "hba1c"}),
			[]string{fmt.Sprintf("SP%06d", r.IntN(1e6)), fmt.Sprintf("SP%06d", r.IntN(1e6))}, comments)
		w.requisitions = append(w.requisitions, id)
		return err
	case p < 55 || len(w.labs) == 0:
		req := pick(r, w.requisitions)
		for range 1 + r.IntN(3) {
			w.nextLab++
			_, err := tx.Exec(ctx, `INSERT INTO lab_results (id, requisition_id, analyte, value, units, flags, resulted_at)
				VALUES ($1, $2, $3, $4::numeric / 100, $5, $6, now())`,
				w.nextLab, req, pick(r, []string{"cd4", "hgb", "wbc", "alt", "creat"}), r.IntN(1e6),
				pick(r, []string{"cells/uL", "g/dL", "U/L", "umol/L"}), nullable(r, "H", "L", "HH"))
			if err != nil {
				return err
			}
			w.labs = append(w.labs, w.nextLab)
		}
		return nil
	case p < 63:
		_, err := tx.Exec(ctx, `UPDATE subjects SET initials = $2, modified = now(), revision = revision + 1 WHERE id = $1`,
			pick(r, w.subjects), initials(r))
		return err
	case p < 71:
		// Leaves comments alone: an out-of-line value travels as unchanged.
		_, err := tx.Exec(ctx, `UPDATE requisitions SET is_drawn = true, drawn_datetime = now(), volume = $2::numeric / 100 WHERE id = $1`,
			pick(r, w.requisitions), 100+r.IntN(900))
		return err
	case p < 77:
		_, err := tx.Exec(ctx, `UPDATE visits SET info = coalesce(info, '{}') || jsonb_build_object('checked', $2::int) WHERE id = $1`,
			pick(r, w.visits), r.IntN(100))
		return err
	case p < 84:
		_, err := tx.Exec(ctx, `UPDATE lab_results SET value = value + 1, flags = $2 WHERE id = $1`, pick(r, w.labs), nullable(r, "H", "L"))
		return err
	case p < 87:
		// A corrected key: the old row goes, a new one takes its values.
		i := r.IntN(len(w.labs))
		w.nextLab++
		_, err := tx.Exec(ctx, `UPDATE lab_results SET id = $2 WHERE id = $1`, w.labs[i], w.nextLab)
		w.labs[i] = w.nextLab
		return err
	case p < 95:
		i := r.IntN(len(w.labs))
		_, err := tx.Exec(ctx, `DELETE FROM lab_results WHERE id = $1`, w.labs[i])
		w.labs = append(w.labs[:i], w.labs[i+1:]...)
		return err
	default:
		i := r.IntN(len(w.requisitions))
		_, err := tx.Exec(ctx, `DELETE FROM requisitions WHERE id = $1`, w.requisitions[i])
		w.requisitions = append(w.requisitions[:i], w.requisitions[i+1:]...)
		return err
	}
}

// enrol registers a subject with a consent and a first visit.
func (w *writer) enrol(ctx context.Context, tx pgx.Tx) error {
	r := w.rng
	subject, visit := newUUID(), newUUID()
	_, err := tx.Exec(ctx, `INSERT INTO subjects (id, subject_identifier, site_code, dob, gender, initials)
		VALUES ($1, $2, $3, date '1960-01-01' + $4::int, $5, $6)`,
		subject, fmt.Sprintf("%03d-%02d-%04d-%d", 100+w.node.index, r.IntN(40), r.IntN(1e4), r.IntN(10)),
		fmt.Sprintf("%02d", 10+w.node.index), r.IntN(20000), pick(r, []string{"M", "F"}), initials(r))
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO consents (id, subject_id, consent_datetime, consent_version, is_literate, witness_name, identity_hash)
		VALUES ($1, $2, now(), $3, $4, $5, $6)`,
		newUUID(), subject, pick(r, []string{"1", "2", "3.1"}), r.IntN(2) == 0, nullable(r, "Akinyi", "Otieno", "Wanjiru"), randomBytes(32))
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO visits (id, subject_id, visit_code, report_datetime, reason) VALUES ($1, $2, '1000', now(), 'scheduled')`,
		visit, subject)
	w.subjects = append(w.subjects, subject)
	w.visits = append(w.visits, visit)
	return err
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// nullable returns nil (SQL NULL) or one of vals.
func nullable(r *rand.Rand, vals ...string) any {
	if r.IntN(3) == 0 {
		return nil
	}
	return pick(r, vals)
}

func initials(r *rand.Rand) string {
	return string([]byte{byte('A' + r.IntN(26)), byte('A' + r.IntN(26))})
}

var vocabulary = strings.Fields(`patient reports mild headache since last visit no fever
	sample haemolysed redrawn fasting ok tube labelled at bedside courier delayed rain
	participant relocated phone number updated spouse attended clinic ñandú O'Brien "quoted"`)

func words(r *rand.Rand, n int) string {
	ws := make([]string, 1+r.IntN(n))
	for i := range ws {
		ws[i] = pick(r, vocabulary)
	}
	return strings.Join(ws, " ")
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	b := randomBytes(16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
