package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
)

// needsDiagnosis reports whether the column behind err must be found by
// trying the run's values one column at a time: the server names no column
// for a value its type refuses.
func needsDiagnosis(be *BlockedError, err error) bool {
	if be.Column != "" {
		return false
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return strings.HasPrefix(pe.Code, "22") || pe.Code == "42804" || (pe.Code == "23514" && pe.TableName == "")
}

// diagnose finds the first column of r whose values the upstream type
// refuses, and names it in be. It runs after the batch's transaction ended,
// one small transaction per column.
func (w *Writer) diagnose(ctx context.Context, conn *pgx.Conn, r *run, be *BlockedError) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	type probe struct {
		name string
		vals []*string
	}
	var probes []probe
	for _, c := range r.cols {
		probes = append(probes, probe{r.p.rel.Columns[c].Name, column(r, c, func(ch *pgcourier.Change) []pgcourier.Value { return ch.New })})
	}
	for _, c := range r.p.match {
		probes = append(probes, probe{r.p.rel.Columns[c].Name, column(r, c, lookup)})
	}
	// The first column that fails as the statement did; else the first
	// that fails at all.
	var found string
	var foundErr *pgconn.PgError
	for _, p := range probes {
		col, _ := r.p.t.column(p.name)
		checks := []string{fmt.Sprintf("SELECT count(v::%s) FROM unnest($1::text[]) v", col.Type)}
		if strings.HasPrefix(col.Type, "pg_catalog.") && strings.Contains(col.Format, "(") {
			// The type modifier: an explicit cast rounds or truncates where
			// storing the value fails, so look for values it changes.
			checks = append(checks, fmt.Sprintf("SELECT count(v::%s::%s) FROM unnest($1::text[]) v", col.Type, col.Format))
			if be.SQLState == "22001" {
				checks = append(checks, fmt.Sprintf(
					"SELECT 1 / (count(*) FILTER (WHERE v::%[1]s::%[2]s::text IS DISTINCT FROM v::%[1]s::text) = 0)::int FROM unnest($1::text[]) v",
					col.Type, col.Format))
			}
		}
		for _, check := range checks {
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, settingsSQL); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, check, p.vals)
				return err
			})
			if err == nil {
				continue
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || infrastructure(err) {
				return
			}
			if found == "" || (foundErr.Code != be.SQLState && (pe.Code == be.SQLState || pe.Code == "22012")) {
				found, foundErr = p.name, pe
			}
			break
		}
		if foundErr != nil && (foundErr.Code == be.SQLState || foundErr.Code == "22012") {
			break
		}
	}
	if found == "" {
		return
	}
	be.Column = found
	switch {
	case be.Detail != "":
	case foundErr.Code == "22012": // the modifier check above
		col, _ := r.p.t.column(found)
		be.Detail = fmt.Sprintf("a value does not fit %s", col.Format)
	case foundErr.Message != be.Message:
		be.Detail = foundErr.Message
	}
}

// constraintColumnsSQL lists the columns of a constraint, or of a unique
// index that is not a constraint, of table schema.name.
const constraintColumnsSQL = `
SELECT pg_catalog.string_agg(a.attname, ', ' ORDER BY k.ord)
  FROM (SELECT x.rel, x.keys FROM (
          SELECT con.conrelid AS rel, con.conkey AS keys, 1 AS pref
            FROM pg_catalog.pg_constraint con
           WHERE con.conname = $3 AND con.conrelid = (
                 SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2)
          UNION ALL
          SELECT i.indrelid, i.indkey::int2[], 2
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
           WHERE ic.relname = $3 AND n.nspname = $1) x
         ORDER BY x.pref LIMIT 1) y
 CROSS JOIN unnest(y.keys) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = y.rel AND a.attnum = k.attnum`

// constraintColumns names the columns of a violated constraint, for a
// server error that names only the constraint. It returns "" if it cannot
// tell.
func constraintColumns(ctx context.Context, conn *pgx.Conn, schema, table, constraint string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if schema == "" {
		schema = "public"
	}
	var cols *string
	if err := conn.QueryRow(ctx, constraintColumnsSQL, schema, table, constraint).Scan(&cols); err != nil || cols == nil {
		return ""
	}
	return *cols
}

// column returns the values of incoming column c in image img of every
// change of r.
func column(r *run, c int, img func(*pgcourier.Change) []pgcourier.Value) []*string {
	vals := make([]*string, len(r.items))
	for i, it := range r.items {
		vs := img(it.ch)
		if vs == nil {
			continue
		}
		if v := vs[c]; v.Kind == pgcourier.Text {
			vals[i] = &v.Text
		}
	}
	return vals
}
