package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
)

// ErrSlotLost means the node's replication slot is missing or was
// invalidated while its outbox still refers to it. Changes made since the
// slot was lost cannot be read any more; the recovery is a new epoch and a
// fresh snapshot of the captured tables.
var ErrSlotLost = errors.New("replication slot lost")

// ErrNoIdentity means a selected table has neither a primary key nor a
// replica identity, so its updates and deletes could not be applied
// upstream.
var ErrNoIdentity = errors.New("table has no primary key or replica identity")

// setupLockKey serializes Setup calls on one database ("pgcoslot" in ASCII).
const setupLockKey int64 = 0x7067636f736c6f74

// Table is a table selected for capture, as the catalog describes it.
type Table struct {
	Schema      string
	Name        string
	Quoted      string   // schema.name quoted for SQL where needed, as Postgres's quote_ident does
	Partitioned bool     // published through its root; its leaves are checked
	Identified  bool     // updates and deletes can name their row
	BadLeaves   []string // partitions without identity, quoted, when Partitioned
}

// Ident returns the table's name quoted for SQL where needed.
func (t Table) Ident() string { return t.Quoted }

// Fix returns the statements that give the table (or its partitions) a
// replica identity.
func (t Table) Fix() string {
	names := []string{t.Ident()}
	if t.Partitioned {
		names = t.BadLeaves
	}
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "ALTER TABLE %s REPLICA IDENTITY FULL;", n)
	}
	return b.String()
}

// ListTables returns the ordinary and partitioned tables the filter selects,
// excluding partitions (a partitioned table is published through its root).
func ListTables(ctx context.Context, conn *pgx.Conn, filter pgcourier.TableFilter) ([]Table, error) {
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname, format('%I.%I', n.nspname, c.relname), c.relkind = 'p',
		       c.relreplident IN ('f', 'i') OR (c.relreplident = 'd' AND EXISTS (
		           SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)),
		       coalesce((SELECT array_agg(format('%I.%I', pn.nspname, p.relname) ORDER BY 1)
		                   FROM pg_partition_tree(c.oid) t
		                   JOIN pg_class p ON p.oid = t.relid
		                   JOIN pg_namespace pn ON pn.oid = p.relnamespace
		                  WHERE t.isleaf AND p.relreplident NOT IN ('f', 'i')
		                    AND NOT (p.relreplident = 'd' AND EXISTS (
		                        SELECT 1 FROM pg_index i WHERE i.indrelid = p.oid AND i.indisprimary))),
		                '{}')
		  FROM pg_class c
		  JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
		   AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
		 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	defer rows.Close()
	var tables []Table
	for rows.Next() {
		var t Table
		if err := rows.Scan(&t.Schema, &t.Name, &t.Quoted, &t.Partitioned, &t.Identified, &t.BadLeaves); err != nil {
			return nil, fmt.Errorf("list tables: %w", err)
		}
		if t.Partitioned {
			t.Identified = len(t.BadLeaves) == 0
		}
		if filter.Match(t.Schema, t.Name) {
			tables = append(tables, t)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return tables, nil
}

// SetupOptions name what Setup creates.
type SetupOptions struct {
	Slot        string
	Publication string
	Tables      pgcourier.TableFilter
}

// SetupResult says what Setup found and changed.
type SetupResult struct {
	Published   []Table // tables in the publication after Setup
	Added       []Table // tables Setup added to the publication
	Removed     []string
	Refused     []Table // selected tables without identity, left out of the publication
	Snapshots   []Table // tables whose existing rows capture will copy first
	SlotCreated bool
	Epoch       int64
}

// Setup prepares the node's database for capture, idempotently: the
// publication holds exactly the selected tables that have a replica identity
// (partitioned tables through their root), the logical slot exists with the
// pgoutput plugin, and the capture state records the slot's epoch. The
// pgcourier schema must exist (internal/schema.Migrate).
//
// Selected tables without identity are left out and reported in Refused,
// with the error wrapping ErrNoIdentity; everything else is still set up. A
// slot that the capture state knows but Postgres has lost or invalidated is
// ErrSlotLost: Setup never silently recreates it.
func Setup(ctx context.Context, conn *pgx.Conn, opts SetupOptions) (SetupResult, error) {
	var res SetupResult
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, setupLockKey); err != nil {
		return res, fmt.Errorf("setup capture: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, setupLockKey) //nolint:errcheck // released with the session anyway

	if err := syncPublication(ctx, conn, opts, &res); err != nil {
		return res, err
	}
	if err := ensureSlot(ctx, conn, opts.Slot, &res); err != nil {
		return res, err
	}
	if err := scheduleSnapshots(ctx, conn, opts.Slot, &res); err != nil {
		return res, err
	}
	if len(res.Refused) > 0 {
		var names, fixes []string
		for _, t := range res.Refused {
			names = append(names, t.Ident())
			fixes = append(fixes, t.Fix())
		}
		return res, fmt.Errorf("%w: %s are not captured; add a primary key, or run: %s",
			ErrNoIdentity, strings.Join(names, ", "), strings.Join(fixes, " "))
	}
	return res, nil
}

// scheduleSnapshots makes sure the rows a published table held before
// capture reach the outbox: every published table without a snapshot record
// gets one, pending unless the slot was created just now and the table is
// empty. (The publication was complete before the slot was created, and
// creating it waited for every running transaction, so every row written
// into an empty table from then on is in the stream.) Records of tables no
// longer published are removed, so that a table added again is copied
// again. Keying on the records rather than on what this call added makes a
// crash between the publication change and this step harmless.
func scheduleSnapshots(ctx context.Context, conn *pgx.Conn, slot string, res *SetupResult) error {
	published := make([]string, len(res.Published))
	for i, t := range res.Published {
		published[i] = t.Ident()
	}
	if _, err := conn.Exec(ctx, `DELETE FROM pgcourier.snapshot_progress WHERE slot = $1 AND NOT table_name = ANY ($2)`, slot, published); err != nil {
		return fmt.Errorf("schedule snapshots: %w", err)
	}
	for _, t := range res.Published {
		done := false
		if res.SlotCreated {
			if err := conn.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM `+t.Ident()+`)`).Scan(&done); err != nil {
				return fmt.Errorf("read %s: %w", t.Ident(), err)
			}
		}
		tag, err := conn.Exec(ctx, `
			INSERT INTO pgcourier.snapshot_progress (slot, table_name, done, rows_estimate)
			VALUES ($1, $2::text, $3, (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $2::text::regclass))
			ON CONFLICT (slot, table_name) DO UPDATE
			   SET done = excluded.done, last_key = NULL, key_columns = NULL, rows_done = 0, rows_estimate = excluded.rows_estimate,
			       started_at = now(), updated_at = now()
			 WHERE $4`, slot, t.Ident(), done, res.SlotCreated)
		if err != nil {
			return fmt.Errorf("schedule snapshot of %s: %w", t.Ident(), err)
		}
		if tag.RowsAffected() == 1 && !done {
			res.Snapshots = append(res.Snapshots, t)
		}
	}
	return nil
}

func syncPublication(ctx context.Context, conn *pgx.Conn, opts SetupOptions, res *SetupResult) error {
	tables, err := ListTables(ctx, conn, opts.Tables)
	if err != nil {
		return err
	}
	pub := pgx.Identifier{opts.Publication}.Sanitize()
	var allTables bool
	err = conn.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, opts.Publication).Scan(&allTables)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := conn.Exec(ctx, `CREATE PUBLICATION `+pub+` WITH (publish_via_partition_root = true)`); err != nil {
			return fmt.Errorf("create publication %s: %w", opts.Publication, err)
		}
	case err != nil:
		return fmt.Errorf("read publication %s: %w", opts.Publication, err)
	case allTables:
		return fmt.Errorf("publication %s is FOR ALL TABLES, which would publish pgcourier's own schema: drop it (DROP PUBLICATION %s;) and run pgcourier init again", opts.Publication, pub)
	default:
		if _, err := conn.Exec(ctx, `ALTER PUBLICATION `+pub+` SET (publish_via_partition_root = true, publish = 'insert, update, delete, truncate')`); err != nil {
			return fmt.Errorf("alter publication %s: %w", opts.Publication, err)
		}
	}

	current := map[string]bool{}
	rows, err := conn.Query(ctx, `
		SELECT format('%I.%I', n.nspname, c.relname)
		  FROM pg_publication_rel pr
		  JOIN pg_publication p ON p.oid = pr.prpubid
		  JOIN pg_class c ON c.oid = pr.prrelid
		  JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE p.pubname = $1`, opts.Publication)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", opts.Publication, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read publication %s: %w", opts.Publication, err)
	}
	for _, n := range names {
		current[n] = true
	}

	want := map[string]bool{}
	for _, t := range tables {
		if !t.Identified {
			res.Refused = append(res.Refused, t)
			continue
		}
		want[t.Ident()] = true
		res.Published = append(res.Published, t)
		if !current[t.Ident()] {
			if _, err := conn.Exec(ctx, `ALTER PUBLICATION `+pub+` ADD TABLE `+t.Ident()); err != nil {
				return fmt.Errorf("add %s to publication %s: %w", t.Ident(), opts.Publication, err)
			}
			res.Added = append(res.Added, t)
		}
	}
	for _, n := range names {
		if !want[n] {
			if _, err := conn.Exec(ctx, `ALTER PUBLICATION `+pub+` DROP TABLE `+n); err != nil {
				return fmt.Errorf("drop %s from publication %s: %w", n, opts.Publication, err)
			}
			res.Removed = append(res.Removed, n)
		}
	}
	return nil
}

// ensureSlot creates the slot and the capture state, or checks them.
func ensureSlot(ctx context.Context, conn *pgx.Conn, slot string, res *SetupResult) error {
	st, err := readSlot(ctx, conn, slot)
	if err != nil {
		return err
	}
	var epoch int64
	err = conn.QueryRow(ctx, `SELECT epoch FROM pgcourier.capture_state WHERE slot = $1`, slot).Scan(&epoch)
	hasState := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read capture state: %w", err)
	}
	if err := st.check(slot, hasState); err != nil {
		return err
	}
	if !st.exists {
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
			return fmt.Errorf("create replication slot %s: %w", slot, err)
		}
		res.SlotCreated = true
	}
	if !hasState {
		epoch = time.Now().UnixMicro()
		if _, err := conn.Exec(ctx, `INSERT INTO pgcourier.capture_state (slot, epoch) VALUES ($1, $2)`, slot, epoch); err != nil {
			return fmt.Errorf("record capture state: %w", err)
		}
	}
	res.Epoch = epoch
	return nil
}

// slotState is what pg_replication_slots says of the node's slot.
type slotState struct {
	exists    bool
	plugin    string
	sameDB    bool
	walStatus string // reserved, extended, unreserved or lost
}

func readSlot(ctx context.Context, conn *pgx.Conn, slot string) (slotState, error) {
	var st slotState
	var walStatus *string
	err := conn.QueryRow(ctx, `
		SELECT coalesce(plugin, ''), database = current_database(), wal_status
		  FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&st.plugin, &st.sameDB, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	st.exists = true
	if walStatus != nil {
		st.walStatus = *walStatus
	}
	return st, nil
}

// check returns the error that stops capture for this slot state, if any.
// known says whether the capture state already refers to the slot.
func (st slotState) check(slot string, known bool) error {
	switch {
	case !st.exists && known:
		return fmt.Errorf("%w: slot %s no longer exists; changes made since it was dropped cannot be read. %s", ErrSlotLost, slot, resyncHint(slot))
	case !st.exists:
		return nil
	case st.plugin != "pgoutput" || !st.sameDB:
		return fmt.Errorf("replication slot %s exists but is not a pgoutput slot of this database: choose another [capture] slot, or drop it (SELECT pg_drop_replication_slot('%s');)", slot, slot)
	case st.walStatus == "lost":
		return fmt.Errorf("%w: Postgres invalidated slot %s (max_slot_wal_keep_size was exceeded). %s", ErrSlotLost, slot, resyncHint(slot))
	}
	return nil
}

// resyncHint is the recovery from a lost slot: start a new epoch, whose
// snapshot copies every row again (see Resync). The outbox keeps what it
// holds of the old epoch and still ships it.
func resyncHint(slot string) string {
	return fmt.Sprintf("To start a new epoch of slot %s with a fresh snapshot of every captured table, "+
		"stop pgcourier on this node and run: pgcourier resync -c FILE", slot)
}
