package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
)

// The initial snapshot copies the rows a table held before capture started,
// without stopping writers and without a long-lived exported snapshot, so it
// can resume after a crash. It reads a table in key order, one chunk at a
// time, and places each chunk in the stream between two watermarks:
//
//  1. commit a low watermark (a transactional logical message);
//  2. read the next chunk of rows (a fresh snapshot, after the low mark);
//  3. commit a high watermark.
//
// When the stream reaches the high mark, the chunk goes into the outbox as
// one transaction at that position, less every row whose key changed
// between the marks: those changes are already in the stream before it, and
// the chunk's copy could be older than they are. Every other row is exactly
// as of the low mark, and every later change follows it in the stream. The
// chunk's progress is recorded in the same outbox transaction, so a crash
// resumes after the last chunk in the outbox; a chunk in flight is read again.

// snapshotPrefix is the logical message prefix of the watermarks.
const snapshotPrefix = "pgcourier.snapshot"

// DefaultSnapshotChunkRows is the most rows one snapshot chunk reads.
const DefaultSnapshotChunkRows = 10000

// snapshotChunkBytes bounds a chunk's size, whatever the row width; it
// stays below DefaultMaxBatchBytes.
const snapshotChunkBytes = 4 << 20

// snapTable is a table whose snapshot is not finished.
type snapTable struct {
	name     string // quoted schema.table
	rel      *pgcourier.Relation
	keyCols  []int    // indexes into rel.Columns of the chunking key; none for a keyless table
	keyColls []string // the key columns' collations, qualified, "" if none
	lastKey  []string // key of the last row in the outbox; nil before the first chunk
	rowsDone int64
	estimate int64
	query    string // the chunk query; $n are the last key's values
	// originFlag says the chunk query ends with a column telling whether
	// the row's last writer was local (only those rows are this node's).
	originFlag bool
	first      string // the chunk query for the first chunk
}

// chunk is a snapshot chunk between its watermarks.
type chunk struct {
	id      string
	table   *snapTable
	lowSeen bool
	rows    [][]pgcourier.Value
	byKey   map[string]int // key → index in rows
	hits    map[int]*hit   // rows a change between the marks hit; see observe
	touched bool           // read it again: see observe
	settled bool           // no commit before the low mark was still to show when it read (see settle)
	last    bool           // the table has no rows after this chunk
	bytes   int            // size of the rows' values
	lastKey []string
}

// keyNames returns the names of the table's chunking key columns.
func (t *snapTable) keyNames() []string {
	var names []string
	for _, k := range t.keyCols {
		names = append(names, t.rel.Columns[k].Name)
	}
	return names
}

// keyOrder describes the order of the table's chunking key: each column's
// name, type and collation. A last key is good only in the order it was
// read in.
func (t *snapTable) keyOrder() []string {
	var order []string
	for i, k := range t.keyCols {
		col := t.rel.Columns[k]
		o := col.Name + " " + col.Type
		if t.keyColls[i] != "" {
			o += " COLLATE " + t.keyColls[i]
		}
		order = append(order, o)
	}
	return order
}

// hit is a row of a chunk that changes between its marks hit.
type hit struct {
	row     []pgcourier.Value // as those changes left it: nil once deleted or moved to another key
	partial bool              // an update left values of it out: the chunk carries row
	foreign bool              // its last change was relayed: not this node's to carry
}

// snapProgress is a chunk's progress, recorded with the batch that holds it.
type snapProgress struct {
	table    string
	lastKey  []string
	keyOrder []string // the order lastKey is in (snapTable.keyOrder)
	rows     int64
	done     bool
	estimate int64
}

// snapshotter reads chunks on its own connection.
type snapshotter struct {
	conn      *pgx.Conn
	slot      string
	chunkRows int
	log       *slog.Logger
	queue     []*snapTable
	cur       *chunk
	started   time.Time
	lastLog   time.Time // the last progress record
	lastInfo  time.Time // the last one at Info
}

func newSnapshotter(ctx context.Context, url, slot string, chunkRows int, log *slog.Logger) (*snapshotter, error) {
	sn := &snapshotter{slot: slot, chunkRows: chunkRows, log: log, started: time.Now()}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	withValueSettings(cfg.RuntimeParams)
	db, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("snapshot: connect: %w", err)
	}
	sn.conn = db
	rows, err := db.Query(ctx, `
		SELECT table_name, last_key, key_columns, rows_done, rows_estimate
		  FROM pgcourier.snapshot_progress
		 WHERE slot = $1 AND NOT done AND to_regclass(table_name) IS NOT NULL
		 ORDER BY started_at, table_name`, slot)
	if err != nil {
		sn.close(ctx)
		return nil, fmt.Errorf("snapshot: read progress: %w", err)
	}
	var saved [][]string // the order each table's last key was read in
	for rows.Next() {
		t := &snapTable{}
		var order []string
		if err := rows.Scan(&t.name, &t.lastKey, &order, &t.rowsDone, &t.estimate); err != nil {
			rows.Close()
			sn.close(ctx)
			return nil, fmt.Errorf("snapshot: read progress: %w", err)
		}
		sn.queue = append(sn.queue, t)
		saved = append(saved, order)
	}
	if err := rows.Err(); err != nil {
		sn.close(ctx)
		return nil, fmt.Errorf("snapshot: read progress: %w", err)
	}
	for i, t := range sn.queue {
		if err := sn.describe(ctx, t); err != nil {
			sn.close(ctx)
			return nil, err
		}
		if err := sn.checkKey(ctx, t, saved[i]); err != nil {
			sn.close(ctx)
			return nil, err
		}
		sn.log.Info("snapshot pending", "table", t.name, "rows_done", t.rowsDone, "rows_estimate", t.estimate)
	}
	return sn, nil
}

func (sn *snapshotter) close(ctx context.Context) {
	sn.conn.Close(context.WithoutCancel(ctx))
}

// describe reads the table's columns as pgoutput sends them (no dropped or
// generated columns; key flags from the replica identity) and builds the
// chunk queries, ordered by the replica identity's index if it has one (an
// update's old key comes in its columns), else by the primary key. A
// partitioned table's identity does not reach its partitions, whose own
// (most often their primary key) name an update's old key: it is ordered
// by its primary key first.
func (sn *snapshotter) describe(ctx context.Context, t *snapTable) error {
	rows, err := sn.conn.Query(ctx, `
		WITH c AS (SELECT oid, relnamespace, relname, relreplident, relkind FROM pg_class WHERE oid = $1::regclass),
		     ident AS (SELECT i.indkey::int2[] AS k FROM pg_index i, c
		                WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))),
		     chunkkey AS (SELECT i.indkey::int2[] AS k FROM pg_index i, c
		                   WHERE i.indrelid = c.oid AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident))
		                   ORDER BY (c.relkind <> 'p' AND c.relreplident = 'i' AND i.indisreplident) DESC, i.indisprimary DESC LIMIT 1)
		SELECT n.nspname, c.relname, c.relkind = 'p', a.attname, format_type(a.atttypid, a.atttypmod),
		       c.relreplident = 'f' OR a.attnum = ANY (coalesce((SELECT k FROM ident), '{}')),
		       coalesce((SELECT o FROM chunkkey, unnest(k) WITH ORDINALITY u(att, o) WHERE att = a.attnum), 0),
		       CASE WHEN co.oid IS NULL THEN '' ELSE format('%I.%I', cn.nspname, co.collname) END
		  FROM c JOIN pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_attribute a ON a.attrelid = c.oid
		  LEFT JOIN pg_collation co ON co.oid = a.attcollation
		  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
		 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		 ORDER BY a.attnum`, t.name)
	if err != nil {
		return fmt.Errorf("snapshot: describe %s: %w", t.name, err)
	}
	defer rows.Close()
	rel := &pgcourier.Relation{}
	var partitioned bool
	keyPos := map[int]int{} // position in the chunk key → column index
	var colls []string
	for rows.Next() {
		var col pgcourier.Column
		var pos int
		var coll string
		if err := rows.Scan(&rel.Schema, &rel.Name, &partitioned, &col.Name, &col.Type, &col.Key, &pos, &coll); err != nil {
			return fmt.Errorf("snapshot: describe %s: %w", t.name, err)
		}
		if pos > 0 {
			keyPos[pos] = len(rel.Columns)
		}
		rel.Columns = append(rel.Columns, col)
		colls = append(colls, coll)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot: describe %s: %w", t.name, err)
	}
	if len(rel.Columns) == 0 {
		return fmt.Errorf("snapshot: describe %s: no columns", t.name)
	}
	t.rel = rel
	t.keyCols, t.keyColls = nil, nil
	for i := 1; i <= len(keyPos); i++ {
		t.keyCols = append(t.keyCols, keyPos[i])
		t.keyColls = append(t.keyColls, colls[keyPos[i]])
	}

	var cols, keys, params []string
	for _, c := range rel.Columns {
		cols = append(cols, pgx.Identifier{c.Name}.Sanitize())
	}
	for i, k := range t.keyCols {
		keys = append(keys, pgx.Identifier{rel.Columns[k].Name}.Sanitize())
		params = append(params, fmt.Sprintf("$%d::text::%s", i+1, rel.Columns[k].Type))
	}
	from := "ONLY " + t.name
	if partitioned {
		from = t.name
	}
	var tracked string
	if err := sn.conn.QueryRow(ctx, `SELECT current_setting('track_commit_timestamp')`).Scan(&tracked); err != nil {
		return fmt.Errorf("snapshot: describe %s: %w", t.name, err)
	}
	t.originFlag = tracked == "on"
	if t.originFlag {
		// On a node that also applies other sources' batches, rows whose
		// last writer was the applier are not this node's to send. A flag
		// column rather than a filter keeps the key-order index scan and
		// the chunk boundaries.
		cols = append(cols, "coalesce((pg_xact_commit_timestamp_origin(xmin)).roident, 0) = 0")
	}
	base := "SELECT " + strings.Join(cols, ", ") + " FROM " + from
	if len(t.keyCols) == 0 {
		t.first, t.query = base, base
		return nil
	}
	order := " ORDER BY " + strings.Join(keys, ", ") + fmt.Sprintf(" LIMIT %d", sn.chunkRows)
	t.first = base + order
	t.query = base + " WHERE (" + strings.Join(keys, ", ") + ") > (" + strings.Join(params, ", ") + ")" + order
	return nil
}

// checkKey starts t's snapshot over when its last key was read in another
// order than the chunking key's (saved, see snapTable.keyOrder): resuming
// would skip rows. Progress without it (saved nil) was written by a version
// that chunked by the primary key, else by the replica identity's index;
// only the key's columns can be compared then.
func (sn *snapshotter) checkKey(ctx context.Context, t *snapTable, saved []string) error {
	if t.lastKey == nil || slices.Equal(saved, t.keyOrder()) {
		return nil
	}
	names := saved
	if saved == nil {
		err := sn.conn.QueryRow(ctx, `
			SELECT array_agg(a.attname::text ORDER BY k.o)
			  FROM (SELECT i.indrelid, i.indkey FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
			         WHERE i.indrelid = $1::regclass AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident))
			         ORDER BY i.indisprimary DESC LIMIT 1) i
			 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(att, o)
			  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att`, t.name).Scan(&names)
		if err != nil {
			return fmt.Errorf("snapshot: read the key of %s: %w", t.name, err)
		}
	}
	if saved == nil && slices.Equal(names, t.keyNames()) {
		return nil
	}
	sn.log.Warn("snapshot: its progress is in another key order than the table's; copying it again from the start",
		"table", t.name, "progress_key", names, "key", t.keyOrder())
	t.lastKey, t.rowsDone = nil, 0
	return nil
}

// idle reports whether a new chunk may start.
func (sn *snapshotter) idle() bool { return sn.cur == nil && len(sn.queue) > 0 }

// start reads the next chunk of the first pending table between two
// watermarks.
func (sn *snapshotter) start(ctx context.Context) error {
	t := sn.queue[0]
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	ch := &chunk{id: hex.EncodeToString(b[:]), table: t, byKey: map[string]int{}, hits: map[int]*hit{}}
	if err := sn.mark(ctx, "low", ch.id); err != nil {
		return err
	}
	settled, err := sn.settle(ctx)
	if err != nil {
		return err
	}
	ch.settled = settled
	// The table as it is now, after the low mark: a column added before
	// the mark would be missing from the chunk, and from the upstream row
	// if a change that set it came before the mark.
	before := t.keyOrder()
	if err := sn.describe(ctx, t); err != nil {
		return err
	}
	if !slices.Equal(before, t.keyOrder()) {
		sn.log.Warn("snapshot: the table's key changed; copying it again from the start", "table", t.name)
		t.lastKey = nil
	}
	query, args := t.first, []any{}
	if t.lastKey != nil && len(t.keyCols) > 0 {
		query = t.query
		for _, k := range t.lastKey {
			args = append(args, k)
		}
	}
	args = append([]any{pgx.QueryExecModeSimpleProtocol}, args...)
	rows, err := sn.conn.Query(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("snapshot: read %s: %w", t.name, err)
	}
	size, read := 0, 0
	full := false
	var last []pgcourier.Value
	for rows.Next() {
		raw := rows.RawValues()
		read++
		local := true
		if t.originFlag {
			local = string(raw[len(raw)-1]) == "t"
			raw = raw[:len(raw)-1]
		}
		row := make([]pgcourier.Value, len(raw))
		for i, v := range raw {
			if v == nil {
				row[i] = pgcourier.Value{Kind: pgcourier.Null}
			} else {
				row[i] = pgcourier.TextValue(string(v))
			}
		}
		last = row
		if local {
			for _, v := range raw {
				size += len(v)
			}
			if len(t.keyCols) > 0 {
				ch.byKey[rowKey(row, t.keyCols)] = len(ch.rows)
			}
			ch.rows = append(ch.rows, row)
		}
		if len(t.keyCols) > 0 && (read >= sn.chunkRows || size >= snapshotChunkBytes) {
			full = true
			break
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot: read %s: %w", t.name, err)
	}
	ch.last = !full
	ch.bytes = size
	if last != nil && len(t.keyCols) > 0 {
		for _, k := range t.keyCols {
			ch.lastKey = append(ch.lastKey, last[k].Text)
		}
	}
	if err := sn.mark(ctx, "high", ch.id); err != nil {
		return err
	}
	sn.cur = ch
	return nil
}

// settle waits, after the low mark, for the transactions that were running
// when it committed. One of them may have written its commit record before
// the mark and not yet be visible: the stream would then carry its changes
// before the mark, while a chunk read now would not see them and would
// carry rows older than the stream before it. It skips sessions idle in a
// transaction, which are not committing (it sees other roles' sessions
// only with pg_read_all_stats). Committing takes moments, so a transaction
// still running after settleWait is open and its commit, if it comes,
// follows the mark; but one waiting for a synchronous standby has
// committed already: settle waits for those until settleLimit, while the
// replication stream is not read. It reports whether every transaction
// that was running has ended.
func (sn *snapshotter) settle(ctx context.Context) (settled bool, err error) {
	// A transaction of its own first, so that the snapshot's xmax lies past
	// every transaction ID handed out before: a transaction at or above
	// xmax counts as running without being listed.
	if _, err := sn.conn.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		return false, fmt.Errorf("snapshot: read running transactions: %w", err)
	}
	var running []int64
	rows, err := sn.conn.Query(ctx, `SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) x`)
	if err == nil {
		running, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil {
		return false, fmt.Errorf("snapshot: read running transactions: %w", err)
	}
	start := time.Now()
	deadline, pause := start.Add(settleWait), time.Millisecond
	for len(running) > 0 {
		var busy, syncRep int
		err := sn.conn.QueryRow(ctx, `
			SELECT count(*), count(*) FILTER (WHERE a.wait_event = 'SyncRep')
			  FROM unnest($1::int8[]) r
			  LEFT JOIN pg_stat_activity a ON a.backend_xid = pg_catalog.xid(r::text::xid8)
			 WHERE pg_xact_status(r::text::xid8) = 'in progress'
			   AND a.state IS DISTINCT FROM 'idle in transaction'
			   AND a.state IS DISTINCT FROM 'idle in transaction (aborted)'`, running).Scan(&busy, &syncRep)
		if err != nil {
			return false, fmt.Errorf("snapshot: wait for running transactions: %w", err)
		}
		now := time.Now()
		switch {
		case busy == 0:
			return true, nil
		case syncRep > 0 && now.Sub(start) >= settleLimit:
			sn.log.Warn("snapshot chunk read while commits still wait for a synchronous standby; its rows may be older than the stream",
				"count", syncRep, "waited", now.Sub(start).Round(time.Millisecond))
			return false, nil
		case syncRep > 0:
			// Wait on, and a moment past their release, while they
			// leave the running transactions.
			deadline = now.Add(settleWait)
		case now.After(deadline):
			sn.log.Debug("snapshot chunk read beside open transactions", "count", busy)
			return false, nil
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
	return true, nil
}

// settleWait is how long settle waits for transactions to end, and
// settleLimit how long for commits held by a synchronous standby, well
// below the server's wal_sender_timeout (60 s by default).
const (
	settleWait  = time.Second
	settleLimit = 10 * time.Second
)

func (sn *snapshotter) mark(ctx context.Context, which, id string) error {
	if _, err := sn.conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, snapshotPrefix, which+":"+id); err != nil {
		return fmt.Errorf("snapshot: %s watermark: %w", which, err)
	}
	return nil
}

// rowKey joins the key values of a row into one map key.
func rowKey(row []pgcourier.Value, keyCols []int) string {
	var b strings.Builder
	for _, k := range keyCols {
		b.WriteString(row[k].Text)
		b.WriteByte(0)
	}
	return b.String()
}

// observe notes the changes a streamed transaction made to the table of the
// chunk between its watermarks; relayed says the transaction carried
// another source's changes. A row changed there is dropped from the chunk:
// the change is in the stream before the chunk, and the chunk's copy could
// be older. But an update that leaves a large value unchanged reaches the
// stream without it (pgoutput does not send it), so it cannot recreate a
// row the upstream never had. For such a row the chunk carries the row as
// the changes between the marks left it instead: each column as the last
// of them set it, or as the chunk read it if none did (then it did not
// change between the marks; a changed value is always sent). The chunk is
// read again when a keyless table changed or was truncated, when one
// change moved a row between two keys of the chunk, when values were left
// out of a row that moved to another key or was deleted before, and when a
// change showed other columns than the chunk's (every chunk describes the
// table afresh).
func (sn *snapshotter) observe(tx *pgcourier.Transaction, relayed bool) {
	ch := sn.cur
	if ch == nil || !ch.lowSeen {
		return
	}
	t := ch.table
	for _, c := range tx.Changes {
		if c.Rel.Schema != t.rel.Schema || c.Rel.Name != t.rel.Name {
			continue
		}
		if len(t.keyCols) == 0 || c.Op == pgcourier.OpTruncate {
			ch.touched = true
			continue
		}
		at := -1
		for _, img := range [][]pgcourier.Value{c.New, c.Old} {
			if img == nil {
				continue
			}
			if k, ok := keyOf(c.Rel, img, t); ok {
				if i, ok := ch.byKey[k]; ok {
					if at >= 0 && at != i {
						at = -2 // a row moved from one key of the chunk to another
					} else if at != -2 {
						at = i
					}
				}
			}
		}
		if at == -1 {
			continue
		}
		if at < 0 {
			ch.touched = true
			continue
		}
		ch.fold(at, c, relayed)
	}
}

// fold applies change c to the folded image of row i of the chunk, in the
// columns of the snapshot's relation, matched by name (the stream's
// relation may differ after a schema change).
func (ch *chunk) fold(i int, c pgcourier.Change, relayed bool) {
	t := ch.table
	if !sameNames(c.Rel, t.rel) {
		ch.touched = true // read with the table's columns as they are now (start describes it)
		return
	}
	h := ch.hits[i]
	if h == nil {
		h = &hit{row: ch.rows[i]}
		ch.hits[i] = h
	}
	h.foreign = relayed
	if c.Op == pgcourier.OpDelete {
		h.row = nil
		return
	}
	if c.Op == pgcourier.OpUpdate && c.Old != nil {
		oldKey, ok1 := keyOf(c.Rel, c.Old, t)
		newKey, ok2 := keyOf(c.Rel, c.New, t)
		if !ok1 || !ok2 || oldKey != newKey {
			// Moved to another key. With every value sent, the stream
			// carries the row whole; with some left out, start over.
			h.row = nil
			ch.touched = ch.touched || slices.ContainsFunc(c.New, unchangedValue)
			return
		}
	}
	partial := false
	next := make([]pgcourier.Value, len(t.rel.Columns))
	for j, col := range t.rel.Columns {
		k := slices.IndexFunc(c.Rel.Columns, func(cc pgcourier.Column) bool { return cc.Name == col.Name })
		switch {
		case c.New[k].Kind != pgcourier.Unchanged:
			next[j] = c.New[k]
		case h.row != nil:
			next[j], partial = h.row[j], true
		default:
			ch.touched = true // values left out of a row deleted before: start over
			return
		}
	}
	h.row = next
	h.partial = h.partial || partial
}

func unchangedValue(v pgcourier.Value) bool { return v.Kind == pgcourier.Unchanged }

// sameNames reports whether a and b have columns of the same names, in any
// order.
func sameNames(a, b *pgcourier.Relation) bool {
	if len(a.Columns) != len(b.Columns) {
		return false
	}
	for _, c := range a.Columns {
		if !slices.ContainsFunc(b.Columns, func(d pgcourier.Column) bool { return d.Name == c.Name }) {
			return false
		}
	}
	return true
}

// keyOf returns the chunk key of a streamed row image, matching columns by
// name (the stream's relation may differ from the snapshot's after a schema
// change).
func keyOf(rel *pgcourier.Relation, img []pgcourier.Value, t *snapTable) (string, bool) {
	vals, ok := keyValues(rel, img, t)
	if !ok {
		return "", false
	}
	var b strings.Builder
	for _, v := range vals {
		b.WriteString(v)
		b.WriteByte(0)
	}
	return b.String(), true
}

// keyValues returns the texts of the chunk key's columns in a streamed row
// image, matched by name, or false if one is missing or not text.
func keyValues(rel *pgcourier.Relation, img []pgcourier.Value, t *snapTable) ([]string, bool) {
	vals := make([]string, 0, len(t.keyCols))
	for _, k := range t.keyCols {
		i := slices.IndexFunc(rel.Columns, func(c pgcourier.Column) bool { return c.Name == t.rel.Columns[k].Name })
		if i < 0 || img[i].Kind != pgcourier.Text {
			return nil, false
		}
		vals = append(vals, img[i].Text)
	}
	return vals, true
}

// moved looks in tx, this node's own changes, for updates that move a row
// of a table whose snapshot is under way from a key no chunk has read yet
// to a key a chunk has passed, leaving a value out (unchanged TOAST).
// Upstream has no row for such an update and cannot make one without the
// value, and no later chunk reads the key the row moved to: the table's
// snapshot starts over. moved returns the progress that records so, to be
// written with the batch that holds tx, so that a crash cannot undo it.
func (sn *snapshotter) moved(ctx context.Context, tx *pgcourier.Transaction) ([]snapProgress, error) {
	var restarts []snapProgress
	for _, c := range tx.Changes {
		if c.Op != pgcourier.OpUpdate || c.Old == nil || !slices.ContainsFunc(c.New, unchangedValue) {
			continue
		}
		i := slices.IndexFunc(sn.queue, func(t *snapTable) bool { return t.rel.Schema == c.Rel.Schema && t.rel.Name == c.Rel.Name })
		if i < 0 {
			continue
		}
		t := sn.queue[i]
		// The last key in the outbox or, once the stream is past the low
		// watermark of a chunk of t in flight, the last key it read: the
		// chunk may have read before the update committed. (When it read
		// after, it holds the row and a restart is more than needed; a
		// chunk does not know which it was.) Before its low watermark the
		// update committed before the chunk read, and the chunk saw it
		// unless settle gave up waiting. A chunk to be read again starts
		// after the last key in the outbox.
		read := t.lastKey
		if ch := sn.cur; ch != nil && ch.table == t && (ch.lowSeen || !ch.settled) && ch.lastKey != nil && !ch.touched {
			read = ch.lastKey
		}
		if len(t.keyCols) == 0 || read == nil {
			continue // a keyless table is read whole; a table not read yet has every key ahead
		}
		from, ok1 := keyValues(c.Rel, c.Old, t)
		to, ok2 := keyValues(c.Rel, c.New, t)
		if !ok1 || !ok2 || slices.Equal(from, to) {
			continue
		}
		why := "a row moved to a key already copied, with a value left out"
		ahead, passed, err := sn.compareKeys(ctx, t, from, to, read)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "42")) {
			// The key's type or collation changed since describe, say:
			// starting over is always safe.
			why, ahead, passed = "a row's key moved and the keys could not be compared: "+err.Error(), true, true
		} else if err != nil {
			return nil, err
		}
		if !ahead || !passed {
			continue
		}
		sn.log.Warn("snapshot: copying the table again from the start", "table", t.name, "why", why, "rows_done", t.rowsDone)
		t.lastKey, t.rowsDone = nil, 0
		if ch := sn.cur; ch != nil && ch.table == t {
			ch.touched = true // its progress would skip the keys again
		}
		restarts = append(restarts, snapProgress{table: t.name, estimate: t.estimate})
	}
	return restarts, nil
}

// compareKeys reports, in the order of t's chunking key, whether key from
// lies past t's last key in the outbox (any key does before the first
// chunk), and whether key to lies at or before read.
func (sn *snapshotter) compareKeys(ctx context.Context, t *snapTable, from, to, read []string) (ahead, passed bool, err error) {
	var args []any
	row := func(vals []string) string {
		var ps []string
		for i, k := range t.keyCols {
			args = append(args, vals[i])
			p := fmt.Sprintf("$%d::text::%s", len(args), t.rel.Columns[k].Type)
			if t.keyColls[i] != "" {
				p += " COLLATE " + t.keyColls[i] // the order of the chunk query, which compares with the column
			}
			ps = append(ps, p)
		}
		return "(" + strings.Join(ps, ", ") + ")"
	}
	aheadSQL := "true"
	if t.lastKey != nil {
		aheadSQL = row(from) + " > " + row(t.lastKey)
	}
	passedSQL := row(to) + " <= " + row(read)
	if err := sn.conn.QueryRow(ctx, "SELECT "+aheadSQL+", "+passedSQL, args...).Scan(&ahead, &passed); err != nil {
		return false, false, fmt.Errorf("snapshot: compare keys of %s: %w", t.name, err)
	}
	return ahead, passed, nil
}

// marker handles a watermark reached by the stream. For a chunk's high mark
// it returns the chunk as a transaction at the mark's position, and its
// progress. It returns neither when a keyless table changed between the
// marks: that chunk is read again.
func (sn *snapshotter) marker(m string, commit pgcourier.Transaction) (tx *pgcourier.Transaction, p *snapProgress, bytes int) {
	ch := sn.cur
	which, id, _ := strings.Cut(m, ":")
	if ch == nil || id != ch.id {
		return nil, nil, 0 // a mark of a chunk an earlier session read
	}
	if which == "low" {
		ch.lowSeen = true
		return nil, nil, 0
	}
	sn.cur = nil
	t := ch.table
	if ch.touched {
		sn.log.Info("snapshot chunk changed while read; reading it again", "table", t.name)
		return nil, nil, 0
	}
	out := &pgcourier.Transaction{CommitLSN: commit.CommitLSN, CommitTime: commit.CommitTime}
	for i, row := range ch.rows {
		// A row a change hit is in the stream before the chunk, unless
		// the chunk has to carry it (see observe).
		if h, ok := ch.hits[i]; ok {
			if !h.partial || h.row == nil || h.foreign {
				continue
			}
			row = h.row
		}
		out.Changes = append(out.Changes, pgcourier.Change{Rel: t.rel, Op: pgcourier.OpInsert, New: row})
	}
	t.rowsDone += int64(len(ch.rows))
	if ch.lastKey != nil {
		t.lastKey = ch.lastKey
	}
	p = &snapProgress{table: t.name, lastKey: t.lastKey, keyOrder: t.keyOrder(), rows: t.rowsDone, done: ch.last, estimate: t.estimate}
	if ch.last {
		sn.queue = sn.queue[1:]
		elapsed := time.Since(sn.started)
		sn.log.Info("snapshot finished", "table", t.name, "rows", t.rowsDone, "elapsed", elapsed.Round(time.Millisecond))
	} else if time.Since(sn.lastLog) >= time.Second {
		// A log line every 5 s; every second at Debug, for a progress
		// bar on a terminal.
		level := slog.LevelDebug
		if time.Since(sn.lastInfo) >= 5*time.Second {
			level, sn.lastInfo = slog.LevelInfo, time.Now()
		}
		sn.lastLog = time.Now()
		rate := float64(t.rowsDone) / time.Since(sn.started).Seconds()
		sn.log.Log(context.Background(), level, ProgressMessage, "table", t.name, "rows_done", t.rowsDone, "rows_estimate", t.estimate, "rows_per_s", int64(rate))
	}
	return out, p, ch.bytes
}

// ProgressMessage is the message of the log records that report how far a
// table's snapshot has got, with the attributes table, rows_done,
// rows_estimate and rows_per_s: every 5 s at Info, every second at Debug.
const ProgressMessage = "snapshot progress"
