package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// dbName is the database the benchmark uses on both clusters: the default
// database of a fresh cluster, which pgtest's Cluster.URL names, as creating
// another would only add seconds to every scenario.
const dbName = "postgres"

// pubName is the publication on the source that covers every table the
// workloads write, and the marker table.
const pubName = "bench"

// markerTable receives one row after each timed stretch of workload; its
// arrival at the target means everything committed before it has arrived.
const markerTable = "bench_marker"

// allTables are the tables of the edc-like schema, parents first.
var allTables = []string{"subject", "consent", "visit", "requisition"}

// schemaDDL creates the edc-like tables on both sides: subjects enrolled at a
// site, their consents, their visits (with the form data as jsonb, as edc
// keeps CRF answers), and the specimen requisitions made at a visit. Foreign
// keys and their indexes are those a Django app would create.
const schemaDDL = `
CREATE TABLE subject (
	id                 bigint PRIMARY KEY,
	subject_identifier text NOT NULL UNIQUE,
	site               text NOT NULL,
	initials           text NOT NULL,
	gender             text NOT NULL,
	dob                date NOT NULL,
	status             text NOT NULL,
	created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
	modified_at        timestamptz
);
CREATE TABLE consent (
	id               bigint PRIMARY KEY,
	subject_id       bigint NOT NULL REFERENCES subject (id),
	version          text NOT NULL,
	consent_datetime timestamptz NOT NULL,
	is_literate      boolean NOT NULL,
	witness_name     text,
	created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
	modified_at      timestamptz
);
CREATE INDEX ON consent (subject_id);
CREATE TABLE visit (
	id              bigint PRIMARY KEY,
	subject_id      bigint NOT NULL REFERENCES subject (id),
	visit_code      text NOT NULL,
	report_datetime timestamptz NOT NULL,
	status          text NOT NULL,
	data            jsonb NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
	modified_at     timestamptz
);
CREATE INDEX ON visit (subject_id);
CREATE TABLE requisition (
	id                  bigint PRIMARY KEY,
	visit_id            bigint NOT NULL REFERENCES visit (id),
	panel               text NOT NULL,
	specimen_identifier text NOT NULL,
	is_drawn            boolean NOT NULL,
	drawn_datetime      timestamptz,
	created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
	modified_at         timestamptz
);
CREATE INDEX ON requisition (visit_id);
CREATE TABLE bench_marker (
	id         bigint PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
`

// sourceDDL adds the publication every Postgres-based contender reads.
const sourceDDL = schemaDDL + `
CREATE PUBLICATION bench FOR TABLE subject, consent, visit, requisition, bench_marker;
`

// targetDDL gives every target table an extra column that records when the
// row arrived. Native logical replication fills a column the source lacks
// with its default, so applied_at - created_at is the lag of a row (both
// clusters share this machine's clock).
const targetDDL = schemaDDL + `
ALTER TABLE subject     ADD COLUMN applied_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE consent     ADD COLUMN applied_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE visit       ADD COLUMN applied_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE requisition ADD COLUMN applied_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE bench_marker ADD COLUMN applied_at timestamptz NOT NULL DEFAULT clock_timestamp();
`

// subjectsSQL inserts subjects $1 to $2, every column derived from the id,
// so one statement serves a single-row entry, a 100-row import and a
// 2,000,000-row transaction alike.
const subjectsSQL = `INSERT INTO subject (id, subject_identifier, site, initials, gender, dob, status)
SELECT g, '066-' || lpad(g::text, 9, '0'), 'site-' || lpad((g % 12)::text, 2, '0'),
       chr(65 + (g % 26)::int) || chr(65 + (g / 26 % 26)::int),
       CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END,
       date '1950-01-01' + (g % 20000)::int, 'enrolled'
FROM generate_series($1::bigint, $2::bigint) AS g`

// visitColumns is the column list visitValues fills.
const visitColumns = "id, subject_id, visit_code, report_datetime, status, data"

// visitValues returns the select list of a visit row with id expression g
// and subject expression s. Its form data is about 300 bytes of jsonb.
func visitValues(g, s string) string {
	return strings.NewReplacer("{g}", g, "{s}", s).Replace(`{g}, {s},
       (1000 + {g} % 10 * 10)::text,
       timestamptz '2024-01-01 08:00:00+00' + {g} * interval '37 seconds',
       'scheduled',
       jsonb_build_object(
           'reason', 'scheduled', 'info_source', 'participant',
           'weight_kg', 45 + {g} % 50, 'height_cm', 140 + {g} % 50,
           'sys_blood_pressure', 100 + {g} % 60, 'dia_blood_pressure', 60 + {g} % 40,
           'temperature', 36 + ({g} % 20) / 10.0,
           'symptoms', jsonb_build_array('cough', 'fever', 'headache'),
           'hiv_result', CASE WHEN {g} % 7 = 0 THEN 'POS' ELSE 'NEG' END,
           'comments', md5({g}::text) || md5(({g} + 1)::text))`)
}

// visitsSQL inserts visits $1 to $2, ten per subject (subject 1 has visits
// 1 to 10), for seeding.
var visitsSQL = "INSERT INTO visit (" + visitColumns + ")\nSELECT " +
	visitValues("g", "(g - 1) / 10 + 1") + "\nFROM generate_series($1::bigint, $2::bigint) AS g"

// visitSQL inserts visit $1 of subject $2.
var visitSQL = "INSERT INTO visit (" + visitColumns + ")\nSELECT " +
	visitValues("$1::bigint", "$2::bigint")

// editVisitSQL is a field worker correcting visit $1's form.
const editVisitSQL = `UPDATE visit
SET status = 'edited', modified_at = clock_timestamp(),
    data = data || jsonb_build_object('comments', md5($1::bigint::text || 'edit'), 'weight_kg', 45 + $1::bigint % 51)
WHERE id = $1::bigint`

// consentSQL inserts consent $1 of subject $2.
const consentSQL = `INSERT INTO consent (id, subject_id, version, consent_datetime, is_literate, witness_name)
VALUES ($1::bigint, $2::bigint, '3', clock_timestamp(), $1::bigint % 5 <> 0,
        CASE WHEN $1::bigint % 5 = 0 THEN 'witness ' || $1::bigint END)`

// requisitionSQL inserts requisition $1 made at visit $2.
const requisitionSQL = `INSERT INTO requisition (id, visit_id, panel, specimen_identifier, is_drawn, drawn_datetime)
VALUES ($1::bigint, $2::bigint, (ARRAY['viral_load', 'cd4', 'fbc', 'chemistry'])[$1::bigint % 4 + 1],
        '066' || lpad($1::bigint::text, 10, '0'), true, clock_timestamp())`

// drawnSQL records that requisition $1's specimen was handed over.
const drawnSQL = `UPDATE requisition SET is_drawn = NOT is_drawn, drawn_datetime = clock_timestamp(), modified_at = clock_timestamp() WHERE id = $1::bigint`

// dropRequisitionSQL removes requisition $1, entered by mistake.
const dropRequisitionSQL = `DELETE FROM requisition WHERE id = $1::bigint`

// createSchema creates the tables on the source and the target, and the
// publication on the source.
func createSchema(ctx context.Context, e *env) error {
	var g errgroup.Group
	for _, side := range []struct {
		url, ddl string
	}{{e.srcURL, sourceDDL}, {e.dstURL, targetDDL}} {
		g.Go(func() error {
			conn, err := pgx.Connect(ctx, side.url)
			if err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
			defer conn.Close(context.WithoutCancel(ctx))
			if _, err := conn.Exec(ctx, side.ddl); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
			return nil
		})
	}
	return g.Wait()
}

// columns returns the columns of table on the connection's database, in
// order.
func columns(ctx context.Context, conn *pgx.Conn, table string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT attname FROM pg_attribute
WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	return cols, nil
}

// columnList renders cols as a quoted SQL column list.
func columnList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}

// copyTable streams the rows of table from one database to another with
// COPY, the source's columns only, and returns how many it copied. The
// receiving connection keeps the settings its caller gave it (replica mode
// for the copy contender).
func copyTable(ctx context.Context, from, to *pgx.Conn, table string) (int64, error) {
	cols, err := columns(ctx, from, table)
	if err != nil {
		return 0, err
	}
	list := columnList(cols)
	ident := pgx.Identifier{table}.Sanitize()
	pr, pw := io.Pipe()
	var g errgroup.Group
	g.Go(func() error {
		_, err := from.PgConn().CopyTo(ctx, pw, "COPY (SELECT "+list+" FROM "+ident+") TO STDOUT")
		pw.CloseWithError(err)
		return err
	})
	tag, err := to.PgConn().CopyFrom(ctx, pr, "COPY "+ident+" ("+list+") FROM STDIN")
	pr.CloseWithError(err) // unblocks CopyTo if CopyFrom gave up early
	if gerr := g.Wait(); gerr != nil && err == nil {
		err = gerr
	}
	if err != nil {
		return 0, fmt.Errorf("copy %s: %w", table, err)
	}
	return tag.RowsAffected(), nil
}

// fingerprint returns the row count and a hash of the source columns of
// every row of table.
func fingerprint(ctx context.Context, conn *pgx.Conn, table string, cols []string) (string, error) {
	var n int64
	var sum string
	err := conn.QueryRow(ctx, "SELECT count(*), coalesce(sum(hashtextextended(ROW("+columnList(cols)+")::text, 0)), 0)::text FROM "+
		pgx.Identifier{table}.Sanitize()).Scan(&n, &sum)
	if err != nil {
		return "", fmt.Errorf("fingerprint %s: %w", table, err)
	}
	return fmt.Sprintf("%d rows, hash %s", n, sum), nil
}
