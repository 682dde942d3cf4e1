package apply

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
)

// maxRunRows bounds the rows one statement applies.
const maxRunRows = 5000

// relPlan is how the changes made against one incoming relation are applied
// to its upstream table.
type relPlan struct {
	rel    *pgcourier.Relation
	t      *table
	shape  string // identifies rel's contents and t's catalog state
	policy Policy

	written []bool // per incoming column: exists upstream and is not generated
	match   []int  // incoming columns that find a row: the key's (keyed) or the replica identity's
	keyed   bool   // match is a usable unique key upstream
	arbiter bool   // the key's index can arbitrate ON CONFLICT (it is not deferrable)
	hazard  bool   // another unique index is checked row by row: no grouping of inserts and updates
	// exact: two changes find the same row exactly when their match
	// values are the same text (see exactKey), so changes of rows whose
	// keys differ as text touch different rows.
	exact bool
}

// exactKey reports whether values of a key column of incoming type in and
// upstream type up are equal exactly when their text is: integers and
// uuids, as the source prints them. Not numeric (1.0 and 1.00), text (a
// collation may call different strings equal), floats (0 and -0), nor a
// column whose source type prints values another way than upstream parses
// them.
func exactKey(in, up string) bool {
	switch in {
	case "smallint", "integer", "bigint":
		return up == "pg_catalog.int2" || up == "pg_catalog.int4" || up == "pg_catalog.int8"
	case "uuid":
		return up == "pg_catalog.uuid"
	}
	return false
}

// planRelation matches rel's columns to t's by name. It returns a
// *BlockedError for an incoming column that does not exist upstream.
func planRelation(rel *pgcourier.Relation, t *table, policy Policy) (*relPlan, error) {
	p := &relPlan{rel: rel, t: t, policy: policy, written: make([]bool, len(rel.Columns))}
	var sb strings.Builder
	sb.WriteString(t.fingerprint)
	sb.WriteString("\x00" + string(policy))
	inKey := map[string]int{}
	anyKey := false
	for _, c := range rel.Columns {
		anyKey = anyKey || c.Key
	}
	for i, c := range rel.Columns {
		fmt.Fprintf(&sb, "\x00%s\x01%s\x01%t", c.Name, c.Type, c.Key)
		col, ok := t.column(c.Name)
		if !ok {
			return nil, missingColumn(t, c)
		}
		p.written[i] = !col.Generated
		if (c.Key || !anyKey) && !col.Generated {
			inKey[c.Name] = i
		}
	}
	p.shape = sb.String()

	key := t.chooseKey(func(n string) bool { _, ok := inKey[n]; return ok })
	if key >= 0 {
		p.keyed = true
		p.arbiter = !t.Indexes[key].Deferrable
		for _, n := range t.Indexes[key].Columns {
			p.match = append(p.match, inKey[n])
		}
	} else {
		for i, c := range rel.Columns {
			if _, ok := inKey[c.Name]; ok {
				p.match = append(p.match, i)
			}
		}
	}
	p.hazard = t.immediateUnique(key)
	p.exact = p.keyed
	for _, i := range p.match {
		col, _ := t.column(rel.Columns[i].Name)
		p.exact = p.exact && exactKey(rel.Columns[i].Type, col.Type)
	}
	return p, nil
}

// item is one change of a run.
type item struct {
	pos int32         // the change's index in its batch
	lsn pgcourier.LSN // its transaction's commit LSN
	at  time.Time     // and commit time
	ch  *pgcourier.Change
}

// runKind says which statement applies a run.
type runKind int

const (
	runJudged   runKind = iota // inserts, updates and deletes judged by the last-writer rules
	runPlain                   // inserts into a table without a key
	runTruncate                // a TRUNCATE
)

// run is a sequence of consecutive changes to one table applied by one
// statement. A run of a table with a key may mix inserts, updates and
// deletes, each of another row; inserts and updates in it write the same
// columns.
type run struct {
	p         *relPlan
	kind      runKind
	op        pgcourier.Op // the first change's operation, for messages
	hasIU     bool         // holds an insert or an update
	cols      []int        // incoming columns the inserts and updates write, in relation order
	unchanged []string     // columns the updates left out as unchanged TOAST values
	keyChange bool         // an update that moves its row to another key (alone in its run)
	ops       uint8        // the operations the run holds (opBit)
	items     []item
	// optimistic lets inserts and updates of a table with another unique
	// index share the run; see planRuns.
	optimistic bool
	// judge keeps an optimistic run off the fast statement: its table's
	// changes from this source needed judging lately.
	judge bool

	keys  map[string]bool // rows the run touches, while it is being built
	layer int             // the layer of its changes, or -1 (see shaped)
}

// fast reports whether the run is applied by the fast statement (see
// fast): in an optimistic plan, a run of a table with a key that arbitrates
// inserts, writing the whole key, moving no row to another key, and
// updating some column.
func (r *run) fast() bool {
	if !r.optimistic || r.judge || r.kind != runJudged || !r.p.keyed || !r.p.arbiter || r.keyChange || len(r.cols) == 0 || !keyWritten(r) {
		return false
	}
	return r.hasIU && (!r.has(pgcourier.OpUpdate) || len(fastSets(r)) > 0)
}

// hazardous reports whether the run groups inserts or updates of a table
// with another unique index: only an optimistic plan makes such runs.
func (r *run) hazardous() bool {
	return r.p.hazard && len(r.items) > 1 && (r.hasIU || r.kind == runPlain)
}

// table returns the run's table as schema.name, unquoted, for messages.
func (r *run) table() string { return r.p.t.Schema + "." + r.p.t.Name }

// single reports whether the run has one change: its statement takes
// scalar parameters.
func (r *run) single() bool { return len(r.items) == 1 }

// signature identifies the statement that applies the run.
func (r *run) signature() string {
	var sb strings.Builder
	sb.WriteString(r.p.shape)
	fmt.Fprintf(&sb, "\x00%d%t%t%t%d", r.kind, r.keyChange, r.single(), r.fast(), r.ops)
	for _, c := range r.cols {
		sb.WriteString("\x00" + strconv.Itoa(c))
	}
	for _, u := range r.unchanged {
		sb.WriteString("\x01" + u)
	}
	return sb.String()
}

// lookup returns the image whose match columns find the change's row.
func lookup(ch *pgcourier.Change) []pgcourier.Value {
	if ch.Op == pgcourier.OpInsert || ch.Old == nil {
		return ch.New
	}
	return ch.Old
}

// keyString renders the values of cols for comparison.
func keyString(vs []pgcourier.Value, cols []int) string {
	if len(cols) == 1 && vs[cols[0]].Kind == pgcourier.Text {
		// The usual one-column key, as it is: text never holds a NUL
		// byte, so it cannot equal a string built below.
		return vs[cols[0]].Text
	}
	var sb strings.Builder
	sb.WriteByte(0)
	for _, c := range cols {
		v := vs[c]
		sb.WriteByte(byte(v.Kind))
		sb.WriteString(strconv.Itoa(len(v.Text)))
		sb.WriteByte(':')
		sb.WriteString(v.Text)
	}
	return sb.String()
}

// shaped is what the grouping needs to know of one change.
type shaped struct {
	it        item
	p         *relPlan
	iu        bool // an insert or an update
	cols      []int
	unchanged []string
	keyChange bool
	key       string // the row it touches, for a table with a key
	// layer is the change's layer (see layers) where byTable ordered its
	// table by layer, -1 otherwise.
	layer int
}

func shape(p *relPlan, it item, prev *shaped) shaped {
	ch := it.ch
	c := shaped{it: it, p: p, iu: ch.Op == pgcourier.OpInsert || ch.Op == pgcourier.OpUpdate, layer: -1}
	if c.iu {
		if prev != nil && prev.p == p && prev.iu && sameColumns(p, ch.New, prev.cols, prev.unchanged) {
			// Most changes of a run write the columns the one before did.
			c.cols, c.unchanged = prev.cols, prev.unchanged
		} else {
			for i, v := range ch.New {
				switch {
				case !p.written[i]:
				case v.Kind == pgcourier.Unchanged:
					c.unchanged = append(c.unchanged, p.rel.Columns[i].Name)
				default:
					c.cols = append(c.cols, i)
				}
			}
		}
	}
	if ch.Op == pgcourier.OpUpdate && ch.Old != nil {
		c.keyChange = !p.keyed || keyString(ch.Old, p.match) != keyString(ch.New, p.match)
	}
	if p.keyed && ch.Op != pgcourier.OpTruncate {
		c.key = keyString(lookup(ch), p.match)
	}
	return c
}

// sameColumns reports whether the new image vs writes exactly the columns
// cols and leaves unchanged exactly those named in unchanged.
func sameColumns(p *relPlan, vs []pgcourier.Value, cols []int, unchanged []string) bool {
	nc, nu := 0, 0
	for i, v := range vs {
		switch {
		case !p.written[i]:
		case v.Kind == pgcourier.Unchanged:
			if nu >= len(unchanged) || unchanged[nu] != p.rel.Columns[i].Name {
				return false
			}
			nu++
		default:
			if nc >= len(cols) || cols[nc] != i {
				return false
			}
			nc++
		}
	}
	return nc == len(cols) && nu == len(unchanged)
}

// start returns a new run holding c.
func start(c shaped, optimistic bool) *run {
	r := &run{p: c.p, op: c.it.ch.Op, optimistic: optimistic, layer: c.layer}
	switch {
	case c.it.ch.Op == pgcourier.OpTruncate:
		r.kind = runTruncate
	case !c.p.keyed && c.it.ch.Op == pgcourier.OpInsert:
		r.kind = runPlain
	default:
		r.kind = runJudged
	}
	r.add(c)
	return r
}

func (r *run) add(c shaped) {
	if c.iu && !r.hasIU {
		r.hasIU, r.cols, r.unchanged = true, c.cols, c.unchanged
	}
	r.keyChange = r.keyChange || c.keyChange
	if c.key != "" && c.layer < 0 {
		// A layer touches each row once: no need to remember them.
		if r.keys == nil {
			r.keys = map[string]bool{}
		}
		r.keys[c.key] = true
	}
	r.ops |= opBit(c.it.ch.Op)
	r.items = append(r.items, c.it)
}

// opBit is op's bit in run.ops.
func opBit(op pgcourier.Op) uint8 {
	switch op {
	case pgcourier.OpInsert:
		return 1
	case pgcourier.OpUpdate:
		return 2
	case pgcourier.OpDelete:
		return 4
	}
	return 8
}

// has reports whether the run holds a change with operation op.
func (r *run) has(op pgcourier.Op) bool { return r.ops&opBit(op) != 0 }

// accepts reports whether c can join the run: applying them together has
// the effect of applying them one by one in order.
func (r *run) accepts(c shaped) bool {
	if c.p.shape != r.p.shape || len(r.items) >= maxRunRows || c.keyChange || r.keyChange {
		return false
	}
	switch r.kind {
	case runPlain:
		// Inserts into a table without a key: only another unique
		// constraint could tell their order.
		return c.it.ch.Op == pgcourier.OpInsert && (!r.p.hazard || r.optimistic)
	case runJudged:
		if !r.p.keyed || c.it.ch.Op == pgcourier.OpTruncate {
			// Without a key, one change finds one row of maybe several
			// alike: alone.
			return false
		}
		if c.layer != r.layer || c.layer < 0 && r.keys[c.key] {
			// A run touches each row once: one layer (whose rows all
			// differ), or changes of rows it does not hold yet.
			return false
		}
		if r.p.hazard && (c.iu || r.hasIU) && !r.optimistic {
			// Another unique constraint: the order of inserts and
			// updates can matter; deletes only free values.
			return false
		}
		if c.iu && r.hasIU && !(slices.Equal(c.cols, r.cols) && slices.Equal(c.unchanged, r.unchanged)) {
			return false
		}
		return true
	}
	return false
}

// planRuns splits the batch's changes into runs. plans maps each relation
// to its plan.
//
// Cautious, the changes keep their source order, and inserts and updates
// of a table with a unique index besides its key go one by one. Otherwise
// the plan is optimistic in two ways, each of which can only make a batch
// fail where the cautious plan would not, never succeed differently; so
// the writer applies the optimistic plan first and, if it fails, the
// cautious one (see hazardous and reordered):
//
//   - such inserts and updates share runs too: applied together they
//     could trip the other index where one by one they would not (a row
//     freeing a value another takes), but every row appears once in a run,
//     so each verdict is the same either way;
//   - when byTable allows it, the changes are grouped by table, parents
//     first, and each table's changes go by layer (every row's first
//     change, then every row's second, ...) where that has the same effect,
//     so that a batch of interleaved small transactions becomes a few long
//     runs. Where grouping or layers could change what the changes do
//     rather than whether they succeed, byTable keeps the source order.
func planRuns(b *pgcourier.Batch, plans map[*pgcourier.Relation]*relPlan, cautious bool) (runs []*run, reordered bool) {
	shapes := make([]shaped, 0, b.Rows())
	pos := int32(0)
	for ti := range b.Transactions {
		tx := &b.Transactions[ti]
		for ci := range tx.Changes {
			ch := &tx.Changes[ci]
			var prev *shaped
			if len(shapes) > 0 {
				prev = &shapes[len(shapes)-1]
			}
			shapes = append(shapes, shape(plans[ch.Rel], item{pos: pos, lsn: tx.CommitLSN, at: tx.CommitTime, ch: ch}, prev))
			pos++
		}
	}
	if !cautious {
		shapes, reordered = byTable(shapes)
	}
	var cur *run
	for _, c := range shapes {
		if cur != nil && cur.accepts(c) {
			cur.add(c)
			continue
		}
		cur = start(c, !cautious)
		runs = append(runs, cur)
	}
	for _, r := range runs {
		r.keys = nil
	}
	return runs, reordered
}

// byTable returns the changes grouped by table: tables whose rows others
// reference (through foreign keys checked row by row) before those
// referencing them, otherwise in the order the batch first touches them,
// and each table's changes in their source order, or by layer where that
// has the same effect (see layers). It reports whether the order changed.
// It leaves the order alone when grouping could change what
// the changes do, not only whether they succeed: a TRUNCATE; a delete or
// key change of a row other tables may reference, or any change of a table
// whose rows others reference with a cascading action (a cascade would act
// at another moment, and what it writes counts as this batch's own); a
// table with triggers of its own (they may read or write other tables); or
// foreign keys in a cycle.
func byTable(shapes []shaped) ([]shaped, bool) {
	seen := map[*table]bool{}
	var tables []*table // in order of first appearance
	for _, c := range shapes {
		t := c.p.t
		if c.it.ch.Op == pgcourier.OpTruncate {
			return shapes, false
		}
		if t.Links.Referenced && (c.it.ch.Op == pgcourier.OpDelete || c.keyChange) {
			return shapes, false
		}
		if t.Links.Cascades && c.it.ch.Op != pgcourier.OpInsert || t.Links.Triggers {
			return shapes, false
		}
		if !seen[t] {
			seen[t] = true
			tables = append(tables, t)
		}
	}
	// Parents first: repeatedly take the earliest table none of whose
	// parents in the batch is still waiting.
	byOID := map[uint32]*table{}
	for _, t := range tables {
		byOID[t.OID] = t
	}
	order := map[*table]int{}
	for len(order) < len(tables) {
		next := -1
		for i, t := range tables {
			if _, done := order[t]; done {
				continue
			}
			ready := true
			for _, p := range t.Links.Parents {
				if pt, ok := byOID[p]; ok {
					if _, done := order[pt]; !done {
						ready = false
						break
					}
				}
			}
			if ready {
				next = i
				break
			}
		}
		if next < 0 {
			return shapes, false // a cycle
		}
		order[tables[next]] = len(order)
	}
	layers(shapes)
	// Sort by table, then layer, keeping the source order within.
	type sortKey struct{ table, layer, i int }
	keys := make([]sortKey, len(shapes))
	inOrder := true
	for i := range shapes {
		keys[i] = sortKey{order[shapes[i].p.t], max(shapes[i].layer, 0), i}
		if i > 0 && (keys[i].table < keys[i-1].table || keys[i].table == keys[i-1].table && keys[i].layer < keys[i-1].layer) {
			inOrder = false
		}
	}
	if inOrder {
		return shapes, false
	}
	slices.SortFunc(keys, func(a, b sortKey) int {
		if a.table != b.table {
			return a.table - b.table
		}
		if a.layer != b.layer {
			return a.layer - b.layer
		}
		return a.i - b.i
	})
	sorted := make([]shaped, len(shapes))
	for i, k := range keys {
		sorted[i] = shapes[k.i]
	}
	return sorted, true
}

// layers sets the layer of each change: how many changes before it in
// the batch touch the same row. The first change of every row is in layer
// 0, the second in layer 1, and so on. Within a table, byTable orders the
// changes by layer, so that a batch that edits rows it also inserted
// becomes one run per layer instead of a new run at every row touched
// again. Changes of different rows of a table commute, given different
// key text means a different row (relPlan.exact), the table's key is its
// only unique constraint checked row by row (planRelation's hazard), and no
// change moves a row to another key; byTable has ruled out triggers,
// cascades, and deletes or key changes of rows others reference (which
// covers a foreign key of the table to itself: its inserts are all of
// layer 0, in source order). A table that does not meet these keeps its
// source order: its changes keep layer -1.
func layers(shapes []shaped) {
	orderly := map[*table]bool{}
	plan := map[*table]*relPlan{}
	count := map[*table]int{}
	for _, c := range shapes {
		t := c.p.t
		if p, ok := plan[t]; ok && p != c.p {
			orderly[t] = true // two relations of one table: their keys need not compare
		}
		plan[t] = c.p
		count[t]++
		if !c.p.exact || c.p.hazard || c.keyChange {
			orderly[t] = true
		}
	}
	seen := map[*table]map[string]int{}
	for i := range shapes {
		c := &shapes[i]
		t := c.p.t
		if orderly[t] {
			continue
		}
		if seen[t] == nil {
			seen[t] = make(map[string]int, count[t])
		}
		c.layer = seen[t][c.key]
		seen[t][c.key]++
	}
}

// judgeFor is how many runs of a source's changes to a table are applied
// with judged statements after a fast statement on it missed: a source
// whose changes to the table need judging (edits of rows another writer
// wrote) would otherwise pay for both plans every time.
const judgeFor = 16

// missedFast records that a fast statement on table schema.name missed for
// source.
func (w *Writer) missedFast(source, schema, name string) {
	if name == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.judge) >= 4096 {
		clear(w.judge)
	}
	w.judge[source+"\x00"+schema+"."+name] = judgeFor
}

// judging reports whether a run of source's changes to t is to be judged,
// and counts the run.
func (w *Writer) judging(source string, t *table) bool {
	k := source + "\x00" + t.Schema + "." + t.Name
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.judge[k]
	if n == 0 {
		return false
	}
	if n == 1 {
		delete(w.judge, k)
	} else {
		w.judge[k] = n - 1
	}
	return true
}
