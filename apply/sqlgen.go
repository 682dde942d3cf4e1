package apply

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
)

// argKind names a statement parameter; statements are cached by run shape,
// so their parameters are described rather than bound.
type argKind int

const (
	argSource argKind = iota // the batch's source (text)
	argEpoch                 // its epoch (int8)
	argSeq                   // its seq (int8)
	argOrigin                // the source's replication origin (oid)
	argNode                  // this node's id (text)
	argPos                   // per change: its index in the batch (int4[])
	argTime                  // per change: its transaction's commit time (timestamptz[])
	argLSN                   // per change: its transaction's commit LSN (text[])
	argOld                   // per change: the old image as JSON (text[])
	argOp                    // per change: its operation, I, U or D (text[])
	argNew                   // per change: the new value of one incoming column (text[])
	argKey                   // per change: the lookup value of one incoming column (text[])
)

type argSpec struct {
	kind argKind
	col  int // incoming column, for argNew and argKey
}

// stmt is generated SQL with the description of its parameters.
type stmt struct {
	sql  string
	args []argSpec
	exec bool // returns no row; otherwise one row: (check bool, applied int8, conflicts int8)
	lock bool // only locks rows: its counts are not changes
}

// gen builds one statement. A scalar statement applies one change: its
// per-change parameters are single values rather than arrays.
type gen struct {
	sb     strings.Builder
	args   []argSpec
	at     map[argSpec]int
	scalar bool
}

// param returns the placeholder of the parameter, cast to its type.
func (g *gen) param(kind argKind, col int) string {
	s := argSpec{kind, col}
	if g.at == nil {
		g.at = map[argSpec]int{}
	}
	n, ok := g.at[s]
	if !ok {
		g.args = append(g.args, s)
		n = len(g.args)
		g.at[s] = n
	}
	typ := "text"
	switch kind {
	case argEpoch, argSeq:
		typ = "int8"
	case argOrigin:
		typ = "oid"
	case argPos:
		typ = "int4[]"
	case argTime:
		typ = "timestamptz[]"
	case argLSN, argOld, argOp, argNew, argKey:
		typ = "text[]"
	}
	if g.scalar {
		typ = strings.TrimSuffix(typ, "[]")
	}
	return fmt.Sprintf("$%d::%s", n, typ)
}

// rows writes the FROM item that yields the statement's changes as u(names),
// from parallel arrays or, in a scalar statement, from single values.
func (g *gen) rows(names, params []string) {
	if g.scalar {
		var cols []string
		for i, n := range names {
			cols = append(cols, params[i]+" AS "+n)
		}
		g.w("(SELECT ", strings.Join(cols, ", "), ") AS u")
		return
	}
	g.w("unnest(", strings.Join(params, ", "), ") AS u(", strings.Join(names, ", "), ")")
}

func (g *gen) w(parts ...string) {
	for _, p := range parts {
		g.sb.WriteString(p)
	}
}

func (g *gen) stmt() stmt { return stmt{sql: g.sb.String(), args: g.args} }

// ident quotes a name for SQL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// literal quotes s as an SQL string literal, whatever
// standard_conforming_strings says.
func literal(s string) string {
	if strings.ContainsRune(s, '\\') {
		return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// jsonObject renders jsonb_build_object over name/expression pairs, in
// pieces small enough for the function's argument limit.
func jsonObject(names, exprs []string) string {
	if len(names) == 0 {
		return "'{}'::jsonb"
	}
	const perCall = 50
	var parts []string
	for i := 0; i < len(names); i += perCall {
		var args []string
		for j := i; j < min(i+perCall, len(names)); j++ {
			args = append(args, literal(names[j]), exprs[j])
		}
		parts = append(parts, "pg_catalog.jsonb_build_object("+strings.Join(args, ", ")+")")
	}
	return strings.Join(parts, " || ")
}

// statements returns the statements that apply r, cached by shape.
func (w *Writer) statements(r *run) []stmt {
	sig := r.signature()
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.stmts[sig]; ok {
		return s
	}
	s := buildStatements(r)
	if len(w.stmts) >= 4096 {
		clear(w.stmts)
	}
	w.stmts[sig] = s
	return s
}

// buildStatements generates the statements for r. A truncate run gets the
// statement that refuses it; Apply swaps in truncateApply for the sources
// allowed to truncate.
func buildStatements(r *run) []stmt {
	switch {
	case r.kind == runTruncate:
		return []stmt{truncateStmt(r)}
	case r.kind == runPlain:
		return []stmt{plainInsert(r)}
	case !r.p.keyed:
		return []stmt{lockKeyless(r), judged(r)}
	case r.fast():
		return []stmt{fast(r)}
	}
	return []stmt{judged(r)}
}

// fastMissed is the SQLSTATE of a fast statement that met a change that
// needs judging (pgcourier.apply_fast_check).
const fastMissed = "PGC01"

// fast applies a run whose every change the last-writer rules would let
// through: inserts of keys that do not exist upstream, updates and deletes
// of rows this source wrote last. It skips the judging, and fails (with
// SQLSTATE fastMissed, or unique_violation for an insert of a key that
// exists) if any change is not such a change; only an optimistic plan uses
// it, so the writer then applies the batch again with judged statements.
func fast(r *run) stmt {
	if r.ops == opBit(pgcourier.OpInsert) {
		return fastInsert(r)
	}
	g := gen{scalar: r.single()}
	t := r.p.t
	var names, params, sel []string
	add := func(name, param string) { names = append(names, name); params = append(params, param) }
	add("pos", g.param(argPos, 0))
	add("op", g.param(argOp, 0))
	sel = g.values(r, true, false, add, []string{"u.pos", "u.op"})
	g.w("WITH inc AS (\n  SELECT ", strings.Join(sel, ", "), "\n    FROM ")
	g.rows(names, params)
	g.w("\n),\n")
	// A CTE per operation the run holds; the counts of their rows must
	// add up to the run's changes.
	var ctes, counts []string
	if r.has(pgcourier.OpDelete) || r.has(pgcourier.OpUpdate) {
		ours := "(t.xmin = pg_catalog.pg_current_xact_id()::xid OR (pg_catalog.pg_xact_commit_timestamp_origin(t.xmin)).roident = " + g.param(argOrigin, 0) + ")"
		at := matchCond(r, "inc")
		if r.has(pgcourier.OpDelete) {
			ctes = append(ctes, "del AS (\n  DELETE FROM "+t.ident+" t USING inc WHERE inc.op = 'D' AND "+at+" AND "+ours+"\n  RETURNING 1\n)")
			counts = append(counts, "(SELECT count(*) FROM del)")
		}
		if r.has(pgcourier.OpUpdate) {
			ctes = append(ctes, "upd AS (\n  UPDATE "+t.ident+" t SET "+strings.Join(fastSets(r), ", ")+"\n"+
				"    FROM inc WHERE inc.op = 'U' AND "+at+" AND "+ours+"\n  RETURNING 1\n)")
			counts = append(counts, "(SELECT count(*) FROM upd)")
		}
	}
	if r.has(pgcourier.OpInsert) {
		// No ON CONFLICT: a key that exists raises unique_violation, which
		// sends the batch to the judged plan as a miss would, and a plain
		// insert costs less than a speculative one.
		cols, vals := insertCols(r, "inc")
		ctes = append(ctes, "ins AS (\n  INSERT INTO "+t.ident+" ("+strings.Join(cols, ", ")+")"+overriding(r)+"\n"+
			"  SELECT "+strings.Join(vals, ", ")+" FROM inc WHERE inc.op = 'I' ORDER BY inc.pos\n  RETURNING 1\n)")
		counts = append(counts, "(SELECT count(*) FROM ins)")
	}
	done := strings.Join(counts, " + ")
	g.w(strings.Join(ctes, ",\n"), "\n",
		"SELECT pgcourier.apply_fast_check(", done, " = (SELECT count(*) FROM inc), ", literal(t.Schema), ", ", literal(t.Name), "),\n",
		"       ", done, ", 0::int8")
	return g.stmt()
}

// fastInsert is the fast statement of a run of inserts only: a plain
// INSERT, which inserts every row or fails, so there is nothing to count.
func fastInsert(r *run) stmt {
	g := gen{scalar: r.single()}
	var names, params []string
	add := func(name, param string) { names = append(names, name); params = append(params, param) }
	add("pos", g.param(argPos, 0))
	var vals []string
	for _, c := range r.cols {
		add(fmt.Sprintf("r%d", c), g.param(argNew, c))
		vals = append(vals, typed(r, "r", c))
	}
	cols, _ := insertCols(r, "")
	g.w("INSERT INTO ", r.p.t.ident, " (", strings.Join(cols, ", "), ")", overriding(r), "\n",
		"SELECT ", strings.Join(vals, ", "), " FROM ")
	g.rows(names, params)
	if r.p.t.Links.Triggers {
		// unnest yields the rows in order and nothing here reorders them;
		// a table's own triggers see the order, so for them it is spelled
		// out, at the cost of a sort.
		g.w(" ORDER BY u.pos")
	}
	sm := g.stmt()
	sm.exec = true
	return sm
}

// fastSets returns the SET list of the fast statement's updates: every
// column the run writes but the key and GENERATED ALWAYS identities.
func fastSets(r *run) []string {
	var sets []string
	for _, c := range r.cols {
		name := r.p.rel.Columns[c].Name
		col, _ := r.p.t.column(name)
		if col.Identity == "a" || slices.Contains(r.p.match, c) {
			continue
		}
		sets = append(sets, fmt.Sprintf("%s = inc.v%d", ident(name), c))
	}
	return sets
}

func truncateStmt(r *run) stmt {
	g := gen{scalar: r.single()}
	g.w("WITH u AS (SELECT * FROM ")
	g.rows([]string{"pos", "ct", "lsn"}, []string{g.param(argPos, 0), g.param(argTime, 0), g.param(argLSN, 0)})
	g.w("),\n",
		"conf AS (INSERT INTO pgcourier.conflicts (source, epoch, seq, position, commit_lsn, commit_time, table_schema, table_name, op, rule, detail)\n",
		"  SELECT ", g.param(argSource, 0), ", ", g.param(argEpoch, 0), ", ", g.param(argSeq, 0), ", u.pos, u.lsn::pg_lsn, u.ct, ",
		literal(r.p.t.Schema), ", ", literal(r.p.t.Name), ", 'truncate', 'truncate', ",
		literal("a TRUNCATE from a source is refused: it would remove every other source's rows upstream; re-apply it by hand if it is really meant"),
		" FROM u RETURNING 1)\n",
		"SELECT true, 0::int8, (SELECT count(*) FROM conf)")
	return g.stmt()
}

// truncateApply truncates the table, for sources allowed to.
func truncateApply(r *run) stmt {
	return stmt{sql: "TRUNCATE " + r.p.t.ident, exec: true}
}

// incCTE writes the inc CTE: the run's changes, raw and cast to the upstream
// column types. Raw new values are r<i>, typed ones v<i>, typed lookup
// values k<i>, for incoming column i.
func (g *gen) incCTE(r *run, withKeys bool) {
	var names, params, sel []string
	add := func(name, param string) { names = append(names, name); params = append(params, param) }
	add("pos", g.param(argPos, 0))
	add("ct", g.param(argTime, 0))
	add("lsn", g.param(argLSN, 0))
	sel = append(sel, "u.pos", "u.ct", "u.lsn")
	if withKeys {
		add("op", g.param(argOp, 0))
		add("oj", g.param(argOld, 0))
		sel = append(sel, "u.op", "u.oj")
	}
	sel = g.values(r, withKeys, true, add, sel)
	g.w("inc AS (\n  SELECT ", strings.Join(sel, ", "), "\n    FROM ")
	g.rows(names, params)
	g.w("\n)")
}

// values adds the run's new values, typed (v<i>) and, with raw, as sent
// (r<i>), and with keys its typed lookup values (k<i>), to the parameters
// (through add) and the select list sel of an inc CTE, and returns sel.
func (g *gen) values(r *run, keys, raw bool, add func(name, param string), sel []string) []string {
	for _, c := range r.cols {
		add(fmt.Sprintf("r%d", c), g.param(argNew, c))
		if raw {
			sel = append(sel, fmt.Sprintf("u.r%d", c))
		}
		sel = append(sel, typed(r, "r", c)+fmt.Sprintf(" AS v%d", c))
	}
	if keys {
		for _, c := range r.p.match {
			add(fmt.Sprintf("q%d", c), g.param(argKey, c))
			sel = append(sel, typed(r, "q", c)+fmt.Sprintf(" AS k%d", c))
		}
	}
	return sel
}

// typed is parameter column u.<prefix><c> cast to the type of incoming
// column c's upstream column.
func typed(r *run, prefix string, c int) string {
	col, _ := r.p.t.column(r.p.rel.Columns[c].Name)
	return fmt.Sprintf("u.%s%d::%s", prefix, c, col.Type)
}

// matchCond is the condition that finds the stored row t of the incoming
// row in alias src: equality on a key, or on every identity column, NULL
// matching NULL, compared as upstream text.
func matchCond(r *run, src string) string {
	var conds []string
	for _, c := range r.p.match {
		name := ident(r.p.rel.Columns[c].Name)
		if r.p.keyed {
			conds = append(conds, fmt.Sprintf("t.%s = %s.k%d", name, src, c))
		} else {
			conds = append(conds, fmt.Sprintf("t.%s::text IS NOT DISTINCT FROM %s.k%d::text", name, src, c))
		}
	}
	if len(conds) == 0 {
		return "true"
	}
	return strings.Join(conds, " AND ")
}

// overriding returns OVERRIDING SYSTEM VALUE if the run writes a GENERATED
// ALWAYS identity column: values made on the source are kept.
func overriding(r *run) string {
	for _, c := range r.cols {
		if col, _ := r.p.t.column(r.p.rel.Columns[c].Name); col.Identity == "a" {
			return " OVERRIDING SYSTEM VALUE"
		}
	}
	return ""
}

// insertCols returns the quoted upstream columns the run writes and the
// expressions that give their values from alias src.
func insertCols(r *run, src string) (cols, vals []string) {
	for _, c := range r.cols {
		cols = append(cols, ident(r.p.rel.Columns[c].Name))
		vals = append(vals, fmt.Sprintf("%s.v%d", src, c))
	}
	return cols, vals
}

// plainInsert inserts rows into a table without a key: there is nothing to
// collide with, and duplicates are separate rows.
func plainInsert(r *run) stmt {
	g := gen{scalar: r.single()}
	g.w("WITH ")
	g.incCTE(r, false)
	cols, vals := insertCols(r, "inc")
	g.w(",\nins AS (\n  INSERT INTO ", r.p.t.ident, " (", strings.Join(cols, ", "), ")", overriding(r),
		"\n  SELECT ", strings.Join(vals, ", "), " FROM inc ORDER BY inc.pos\n  RETURNING 1\n)\n",
		"SELECT true, (SELECT count(*) FROM ins), 0::int8")
	return g.stmt()
}

// lockKeyless locks every row that matches the run's (one) change, so that
// the statement after it sees them as they are and nobody changes them.
func lockKeyless(r *run) stmt {
	g := gen{scalar: r.single()}
	var names, params, typed []string
	for _, c := range r.p.match {
		names = append(names, fmt.Sprintf("q%d", c))
		params = append(params, g.param(argKey, c))
		col, _ := r.p.t.column(r.p.rel.Columns[c].Name)
		typed = append(typed, fmt.Sprintf("u.q%d::%s AS k%d", c, col.Type, c))
	}
	if len(names) == 0 {
		// Nothing identifies a row: lock the table's rows all the same.
		g.w("SELECT true, count(*), 0::int8 FROM (SELECT 1 FROM ", r.p.t.ident, " t FOR UPDATE OF t) x")
		return stmt{sql: g.sb.String(), lock: true}
	}
	g.w("SELECT true, count(*), 0::int8 FROM (\n  SELECT 1 FROM (SELECT ", strings.Join(typed, ", "), " FROM ")
	g.rows(names, params)
	g.w(") i\n  JOIN ", r.p.t.ident, " t ON ", matchCond(r, "i"), "\n  FOR UPDATE OF t\n) x")
	sm := g.stmt()
	sm.lock = true
	return sm
}

// judged applies inserts, updates and deletes (op I, U, D per change) by
// the last-writer rules: it locks the stored rows, judges every change
// against the row version it finds, writes the winners and records the
// others in pgcourier.conflicts, all in one statement.
func judged(r *run) stmt {
	g := gen{scalar: r.single()}
	t := r.p.t
	origin := g.param(argOrigin, 0)
	mine := "t.xmin = pg_catalog.pg_current_xact_id()::xid"
	commit := "pg_catalog.pg_xact_commit_timestamp_origin(t.xmin)"

	// The stored row, as text, for the conflict record and the identical
	// test; only when another writer wrote it.
	var names, exprs []string
	for _, c := range t.Columns {
		names = append(names, c.Name)
		exprs = append(exprs, "t."+ident(c.Name)+"::text")
	}
	stored := jsonObject(names, exprs)

	g.w("WITH ")
	g.incCTE(r, true)
	// Each change's stored row, locked: a lateral lookup per change, by
	// index where there is a key, whatever the table's statistics say.
	g.w(",\nd AS (\n  SELECT inc.*, l.l_tid IS NOT NULL AS found, l.l_toid, l.l_tid,\n",
		"         coalesce(l.l_mine OR (l.l_w).roident = ", origin, ", false) AS ours,\n",
		"         (l.l_w).timestamp AS st_time,\n",
		"         CASE WHEN (l.l_w).roident = 0 THEN ", g.param(argNode, 0), "\n",
		"              WHEN (l.l_w).roident IS NOT NULL THEN (\n",
		"                SELECT CASE WHEN ro.roname LIKE 'pgcourier:%' THEN substr(ro.roname, 11) ELSE ro.roname END\n",
		"                  FROM pg_catalog.pg_replication_origin ro WHERE ro.roident = (l.l_w).roident)\n",
		"         END AS st_source,\n",
		"         l.l_stored AS stored\n",
		"    FROM inc LEFT JOIN LATERAL (\n",
		"      SELECT t.tableoid AS l_toid, t.ctid AS l_tid, ", mine, " AS l_mine, ", commit, " AS l_w,\n",
		"             CASE WHEN ", mine, " OR (", commit, ").roident = ", origin, " THEN NULL\n",
		"                  ELSE ", stored, " END AS l_stored\n",
		"        FROM ", t.ident, " t WHERE ", matchCond(r, "inc"), "\n")
	if !r.p.keyed {
		g.w("       LIMIT 1\n")
	}
	g.w("         FOR UPDATE OF t\n    ) l ON true\n),\n")

	// The verdict per change: insert, update or delete it, or nothing
	// (same, gone), or the rule that refuses it.
	source := g.param(argSource, 0)
	newer := "d.st_time IS NULL OR d.ct > d.st_time OR (d.ct = d.st_time AND " + source + " COLLATE \"C\" > d.st_source COLLATE \"C\")"
	var same []string
	for _, c := range r.cols {
		same = append(same, fmt.Sprintf("(d.stored ->> %s) IS NOT DISTINCT FROM d.v%d::text", literal(r.p.rel.Columns[c].Name), c))
	}
	if len(same) == 0 {
		same = []string{"true"}
	}
	missing := "'insert'"
	if len(r.unchanged) > 0 {
		missing = "'needs_resync'"
	}
	lose := func(verdict string) string {
		if r.p.policy == Reject {
			return "ELSE 'reject'"
		}
		return "WHEN " + newer + " THEN " + verdict + " ELSE 'last_writer'"
	}
	g.w("v AS (\n  SELECT d.*, CASE\n",
		"      WHEN d.op = 'I' THEN CASE WHEN NOT d.found THEN 'insert' WHEN d.ours THEN 'update'\n",
		"                               WHEN ", strings.Join(same, " AND "), " THEN 'same' ELSE 'key_collision' END\n",
		"      WHEN d.op = 'U' THEN CASE WHEN NOT d.found THEN ", missing, " WHEN d.ours THEN 'update'\n",
		"                               WHEN ", strings.Join(same, " AND "), " THEN 'same' ", lose("'update'"), " END\n",
		"      ELSE CASE WHEN NOT d.found THEN 'gone' WHEN d.ours THEN 'delete' ", lose("'delete'"), " END\n",
		"    END AS verdict\n    FROM d\n),\n")

	// Where the stored row is, for the writes.
	at := "t.tableoid = v.l_toid AND t.ctid = v.l_tid"
	if r.p.keyed {
		at = matchCond(r, "v")
	}
	g.w("del AS (\n  DELETE FROM ", t.ident, " t USING v WHERE v.verdict = 'delete' AND ", at, "\n  RETURNING 1\n),\n")
	var sets []string
	for _, c := range r.cols {
		name := r.p.rel.Columns[c].Name
		col, _ := t.column(name)
		isKey := slices.Contains(r.p.match, c)
		if col.Identity == "a" || (isKey && r.p.keyed && !r.keyChange) {
			continue
		}
		sets = append(sets, fmt.Sprintf("%s = v.v%d", ident(name), c))
	}
	if len(sets) == 0 {
		g.w("upd AS (\n  SELECT 1 FROM v WHERE v.verdict = 'update'\n),\n")
	} else {
		g.w("upd AS (\n  UPDATE ", t.ident, " t SET ", strings.Join(sets, ", "), "\n",
			"    FROM v WHERE v.verdict = 'update' AND ", at, "\n  RETURNING 1\n),\n")
	}
	lost := false
	if len(r.cols) == 0 {
		g.w("ins AS (\n  SELECT 1 FROM v WHERE false\n),\n")
	} else {
		cols, vals := insertCols(r, "v")
		g.w("ins AS (\n  INSERT INTO ", t.ident, " (", strings.Join(cols, ", "), ")", overriding(r), "\n",
			"  SELECT ", strings.Join(vals, ", "), " FROM v WHERE v.verdict = 'insert' ORDER BY v.pos\n")
		if r.p.keyed && r.p.arbiter && keyWritten(r) {
			var keyCols, back []string
			for _, c := range r.p.match {
				keyCols = append(keyCols, ident(r.p.rel.Columns[c].Name))
				back = append(back, fmt.Sprintf("ins.%s = v.v%d", ident(r.p.rel.Columns[c].Name), c))
			}
			g.w("  ON CONFLICT (", strings.Join(keyCols, ", "), ") DO NOTHING\n  RETURNING ", strings.Join(keyCols, ", "), "\n),\n")
			// Rows another writer inserted since the statement began.
			g.w("lost AS (\n  SELECT v.* FROM v WHERE v.verdict = 'insert'\n",
				"     AND NOT EXISTS (SELECT 1 FROM ins WHERE ", strings.Join(back, " AND "), ")\n),\n")
			lost = true
		} else {
			g.w("  RETURNING 1\n),\n")
		}
	}

	// The conflicts.
	var newNames, newExprs []string
	for _, c := range r.cols {
		newNames = append(newNames, r.p.rel.Columns[c].Name)
		newExprs = append(newExprs, fmt.Sprintf("x.r%d", c))
	}
	unchanged := "NULL::text[]"
	if len(r.unchanged) > 0 {
		var ls []string
		for _, u := range r.unchanged {
			ls = append(ls, literal(u))
		}
		unchanged = "ARRAY[" + strings.Join(ls, ", ") + "]::text[]"
	}
	g.w("conf AS (\n  INSERT INTO pgcourier.conflicts (source, epoch, seq, position, commit_lsn, commit_time, table_schema, table_name, op, rule,\n",
		"                                   incoming, incoming_old, unchanged, stored, stored_source, stored_commit_time, detail)\n",
		"  SELECT ", source, ", ", g.param(argEpoch, 0), ", ", g.param(argSeq, 0), ", x.pos, x.lsn::pg_lsn, x.ct, ",
		literal(t.Schema), ", ", literal(t.Name), ",\n",
		"         CASE x.op WHEN 'I' THEN 'insert' WHEN 'U' THEN 'update' ELSE 'delete' END, x.rule,\n",
		"         CASE WHEN x.op = 'D' THEN x.oj::jsonb ELSE ", jsonObject(newNames, newExprs), " END,\n",
		"         CASE WHEN x.op = 'D' THEN NULL ELSE x.oj::jsonb END,\n",
		"         CASE WHEN x.op = 'U' THEN ", unchanged, " END, x.stored, x.st_source, x.st_time,\n",
		"         CASE x.rule\n",
		"           WHEN 'last_writer' THEN 'the stored row is newer: ' || coalesce(x.st_source, 'an unknown writer') || ' wrote it at ' || x.st_time::text\n",
		"           WHEN 'reject' THEN 'the table''s policy is reject; the stored row was written by ' || coalesce(x.st_source, 'an unknown writer')\n",
		"           WHEN 'key_collision' THEN CASE WHEN x.found THEN 'the key exists upstream, written by ' || coalesce(x.st_source, 'an unknown writer')\n",
		"                                          ELSE 'another writer inserted the key while this batch applied' END\n",
		"           WHEN 'needs_resync' THEN 'the row is missing upstream and the update left unchanged TOAST values out, so it cannot be inserted: resync the row from the source'\n",
		"         END\n",
		"    FROM (SELECT v.*, v.verdict AS rule FROM v WHERE v.verdict IN ('last_writer', 'reject', 'key_collision', 'needs_resync')")
	if lost {
		g.w("\n          UNION ALL SELECT lost.*, 'key_collision' FROM lost")
	}
	g.w(") x\n  RETURNING 1\n)\n")

	msg := literal(fmt.Sprintf("%s: a row changed under the statement", t.ident))
	g.w("SELECT pgcourier.apply_check((SELECT count(*) FROM upd) = (SELECT count(*) FROM v WHERE v.verdict = 'update')\n",
		"                          AND (SELECT count(*) FROM del) = (SELECT count(*) FROM v WHERE v.verdict = 'delete'), ", msg, "),\n",
		"       (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) + (SELECT count(*) FROM del), (SELECT count(*) FROM conf)")
	return g.stmt()
}

// keyWritten reports whether the run writes every key column, so that an
// inserted row can be told by its key.
func keyWritten(r *run) bool {
	for _, m := range r.p.match {
		found := false
		for _, c := range r.cols {
			found = found || c == m
		}
		if !found {
			return false
		}
	}
	return true
}
