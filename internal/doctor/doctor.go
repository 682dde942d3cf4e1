// Package doctor checks that a node's database is ready for the node's role:
// server version and settings, privileges, replica identities of captured
// tables, and the pgcourier schema. Every failed check carries the exact fix,
// written for the operator who has to type it.
package doctor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/internal/schema"
)

// MinServerVersion is the oldest PostgreSQL release pgcourier supports, as
// server_version_num.
const MinServerVersion = 150000

// minSlotWALKeepMB is the smallest max_slot_wal_keep_size accepted when a
// limit is set at all.
const minSlotWALKeepMB = 1024

// Options say what the node does with its database.
type Options struct {
	Role    pgcourier.Role
	Capture bool                  // the node captures changes made in this database
	Tables  pgcourier.TableFilter // the captured tables, when Capture
	Slot    string                // the node's replication slot, when Capture
}

// Check is the outcome of one check.
type Check struct {
	Name   string // short, e.g. "wal_level"
	OK     bool
	Detail string // what was found
	Fix    string // what to run or change; set when !OK
}

// Failed reports whether any of checks failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if !c.OK {
			return true
		}
	}
	return false
}

// Run runs every check that applies to opts against the database conn is
// connected to. An error means a check could not be run at all (the
// connection broke); a failed check is a Check with OK false.
func Run(ctx context.Context, conn *pgx.Conn, opts Options) ([]Check, error) {
	type step struct {
		when bool
		run  func(context.Context, *pgx.Conn, Options) (Check, error)
	}
	steps := []step{
		{true, serverVersion},
		{opts.Capture, requireSetting("wal_level", "logical", "capture needs logical")},
		{opts.Capture, replicationSlots},
		{opts.Capture, walSenders},
		{opts.Capture, slotWALKeepSize},
		{opts.Capture, walSenderTimeout},
		{opts.Capture, replicationPrivilege},
		{opts.Role.Applies(), requireSetting("track_commit_timestamp", "on", "last-writer-wins needs each row's commit time")},
		{opts.Role.Applies(), originPrivilege},
		{opts.Capture, replicaIdentities},
		{opts.Capture, replicationSlot},
		{true, schemaVersion},
	}
	var checks []Check
	for _, s := range steps {
		if !s.when {
			continue
		}
		c, err := s.run(ctx, conn, opts)
		if err != nil {
			return checks, err
		}
		checks = append(checks, c)
	}
	return checks, nil
}

func setting(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var v string
	if err := conn.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v); err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	return v, nil
}

// restartHint ends every fix that needs a server restart.
const restartHint = "then restart Postgres (sudo systemctl restart postgresql)"

func serverVersion(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "server version"}
	var num int
	var version string
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version')`).Scan(&num, &version); err != nil {
		return c, fmt.Errorf("read server version: %w", err)
	}
	c.Detail = "PostgreSQL " + version
	c.OK = num >= MinServerVersion
	if !c.OK {
		c.Fix = fmt.Sprintf("upgrade to PostgreSQL %d or later", MinServerVersion/10000)
	}
	return c, nil
}

// requireSetting returns a check that a setting changed only by a restart
// has the value pgcourier needs; why says what needs it.
func requireSetting(name, want, why string) func(context.Context, *pgx.Conn, Options) (Check, error) {
	return func(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
		c := Check{Name: name}
		v, err := setting(ctx, conn, name)
		if err != nil {
			return c, err
		}
		c.OK, c.Detail = v == want, v
		if !c.OK {
			c.Detail = v + ", " + why
			c.Fix = fmt.Sprintf("ALTER SYSTEM SET %s = %s;  -- %s", name, want, restartHint)
		}
		return c, nil
	}
}

func replicationSlots(ctx context.Context, conn *pgx.Conn, opts Options) (Check, error) {
	c := Check{Name: "max_replication_slots"}
	var max, others int
	err := conn.QueryRow(ctx, `
		SELECT current_setting('max_replication_slots')::int,
		       (SELECT count(*) FROM pg_replication_slots WHERE slot_name <> $1)`, opts.Slot).Scan(&max, &others)
	if err != nil {
		return c, fmt.Errorf("read replication slots: %w", err)
	}
	c.OK = max > others
	c.Detail = fmt.Sprintf("%d, %d taken by other slots", max, others)
	if !c.OK {
		c.Detail += ", none left for pgcourier"
		c.Fix = fmt.Sprintf("ALTER SYSTEM SET max_replication_slots = %d;  -- %s", others+4, restartHint)
	}
	return c, nil
}

func walSenders(ctx context.Context, conn *pgx.Conn, opts Options) (Check, error) {
	c := Check{Name: "max_wal_senders"}
	var max, others int
	err := conn.QueryRow(ctx, `
		SELECT current_setting('max_wal_senders')::int,
		       (SELECT count(*) FROM pg_stat_replication r
		         WHERE r.pid IS DISTINCT FROM (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1))`,
		opts.Slot).Scan(&max, &others)
	if err != nil {
		return c, fmt.Errorf("read wal senders: %w", err)
	}
	c.OK = max > others
	c.Detail = fmt.Sprintf("%d, %d in use by others", max, others)
	if !c.OK {
		c.Detail += ", none left for pgcourier"
		c.Fix = fmt.Sprintf("ALTER SYSTEM SET max_wal_senders = %d;  -- %s", others+4, restartHint)
	}
	return c, nil
}

// slotWALKeepSize accepts no limit (-1, the default) or a generous one. A
// small limit lets Postgres invalidate the slot after a burst of writes while
// pgcourier is stopped; the node then has to resync from a fresh snapshot,
// which loses the deletes and intermediate versions made in between.
func slotWALKeepSize(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "max_slot_wal_keep_size"}
	var mb int64
	if err := conn.QueryRow(ctx, `SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'`).Scan(&mb); err != nil {
		return c, fmt.Errorf("read max_slot_wal_keep_size: %w", err)
	}
	switch {
	case mb < 0:
		c.OK, c.Detail = true, "-1 (no limit; pgcourier status reports retained WAL)"
	case mb >= minSlotWALKeepMB:
		c.OK, c.Detail = true, fmt.Sprintf("%d MB", mb)
	default:
		c.Detail = fmt.Sprintf("%d MB: a burst of writes while pgcourier is stopped can invalidate its slot and force a resync", mb)
		c.Fix = "ALTER SYSTEM SET max_slot_wal_keep_size = -1; SELECT pg_reload_conf();  -- or a limit of at least 1GB"
	}
	return c, nil
}

// walSenderTimeout accepts a wal_sender_timeout of at most two thirds of
// capture's read timeout (the default 60 s), or none. Capture asks a silent
// server for an answer after half its read timeout; a walsender replaying a
// large transaction reads the question only every half of
// wal_sender_timeout, so a longer one can make capture give up its session
// in the middle of every such transaction.
func walSenderTimeout(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "wal_sender_timeout"}
	var ms int64
	if err := conn.QueryRow(ctx, `SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'`).Scan(&ms); err != nil {
		return c, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	limit := capture.DefaultReadTimeout * 2 / 3
	d := time.Duration(ms) * time.Millisecond
	switch {
	case ms == 0:
		c.OK, c.Detail = true, "0 (no timeout)"
	case d <= limit:
		c.OK, c.Detail = true, d.String()
	default:
		c.Detail = fmt.Sprintf("%s: over %s, capture can give up its session while the server replays a large transaction", d, limit)
		c.Fix = "ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();"
	}
	return c, nil
}

func replicationPrivilege(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "replication privilege"}
	var user string
	var ok bool
	err := conn.QueryRow(ctx, `SELECT quote_ident(rolname), rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&user, &ok)
	if err != nil {
		return c, fmt.Errorf("read role: %w", err)
	}
	c.OK = ok
	c.Detail = fmt.Sprintf("role %s", user)
	if !ok {
		c.Detail += " cannot open a replication connection"
		c.Fix = fmt.Sprintf("ALTER ROLE %s REPLICATION;  -- as a superuser", user)
	}
	return c, nil
}

// originFunctions are the replication-origin functions the applier calls.
var originFunctions = []string{
	"pg_replication_origin_create(text)",
	"pg_replication_origin_session_setup(text)",
	"pg_replication_origin_session_reset()",
	"pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
}

func originPrivilege(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "replication origin functions"}
	var user string
	if err := conn.QueryRow(ctx, `SELECT quote_ident(current_user)`).Scan(&user); err != nil {
		return c, fmt.Errorf("read role: %w", err)
	}
	var missing []string
	for _, f := range originFunctions {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT has_function_privilege($1, 'EXECUTE')`, f).Scan(&ok); err != nil {
			return c, fmt.Errorf("read privilege on %s: %w", f, err)
		}
		if !ok {
			missing = append(missing, f)
		}
	}
	c.OK = len(missing) == 0
	c.Detail = fmt.Sprintf("role %s may call them", user)
	if !c.OK {
		c.Detail = fmt.Sprintf("role %s may not call %s", user, strings.Join(missing, ", "))
		c.Fix = fmt.Sprintf("GRANT EXECUTE ON FUNCTION %s TO %s;  -- as a superuser",
			strings.Join(missing, ", "), user)
	}
	return c, nil
}

func schemaVersion(ctx context.Context, conn *pgx.Conn, _ Options) (Check, error) {
	c := Check{Name: "pgcourier schema"}
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return c, err
	}
	latest := schema.Latest()
	switch {
	case v == latest:
		c.OK, c.Detail = true, fmt.Sprintf("version %d", v)
	case v == 0:
		c.Detail, c.Fix = "not created", "pgcourier init -c FILE"
	case v < latest:
		c.Detail, c.Fix = fmt.Sprintf("version %d, this pgcourier needs %d", v, latest), "pgcourier init -c FILE"
	default:
		c.Detail = fmt.Sprintf("version %d, newer than this pgcourier (%d)", v, latest)
		c.Fix = "install the pgcourier release that created it, or a newer one"
	}
	return c, nil
}

// replicaIdentities checks that every captured table can be identified on
// update and delete: a primary key, or REPLICA IDENTITY FULL or USING INDEX.
// Partitioned tables are published through their root, so each leaf
// partition of a selected root is checked too.
func replicaIdentities(ctx context.Context, conn *pgx.Conn, opts Options) (Check, error) {
	tables, err := capture.ListTables(ctx, conn, opts.Tables)
	if err != nil {
		return Check{}, err
	}
	var bad, fixes []string
	for _, t := range tables {
		if t.Identified {
			continue
		}
		if t.Partitioned {
			for _, leaf := range t.BadLeaves {
				bad = append(bad, leaf+" (partition)")
			}
		} else {
			bad = append(bad, t.Ident())
		}
		fixes = append(fixes, t.Fix())
	}
	c := Check{Name: "replica identity", OK: len(bad) == 0}
	switch {
	case len(tables) == 0:
		c.Detail = "no table matches [capture] tables yet"
	case c.OK:
		c.Detail = fmt.Sprintf("all %d captured tables have a primary key or replica identity", len(tables))
	default:
		c.Detail = fmt.Sprintf("no primary key or replica identity: %s", strings.Join(bad, ", "))
		c.Fix = "add a primary key (best), or: " + strings.Join(fixes, " ")
	}
	return c, nil
}

// replicationSlot checks the node's slot: that init created it, that
// Postgres has not invalidated it, and how much WAL it holds back.
func replicationSlot(ctx context.Context, conn *pgx.Conn, opts Options) (Check, error) {
	c := Check{Name: "replication slot"}
	h, err := capture.Health(ctx, conn, opts.Slot)
	if err != nil {
		return c, err
	}
	switch {
	case !h.Exists:
		c.Detail, c.Fix = fmt.Sprintf("%s does not exist", opts.Slot), "pgcourier init -c FILE"
		if v, err := schema.Version(ctx, conn); err == nil && v >= 2 {
			var known bool
			err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgcourier.capture_state WHERE slot = $1)`, opts.Slot).Scan(&known)
			if err != nil {
				return c, fmt.Errorf("read capture state: %w", err)
			}
			if known {
				c.Detail = fmt.Sprintf("%s was dropped after capture began: changes made since cannot be read", opts.Slot)
				c.Fix = "start a new epoch: see the recovery steps pgcourier prints when capture stops, then pgcourier init -c FILE"
			}
		}
	case h.WALStatus == "lost":
		c.Detail = fmt.Sprintf("%s was invalidated by Postgres (max_slot_wal_keep_size exceeded)", opts.Slot)
		c.Fix = "start a new epoch: see the recovery steps pgcourier prints when capture stops, then pgcourier init -c FILE"
	default:
		c.OK = true
		state := "idle"
		if h.Active {
			state = "streaming"
		}
		c.Detail = fmt.Sprintf("%s %s, %s, holding %d MB of WAL", opts.Slot, state, h.WALStatus, h.RetainedBytes>>20)
	}
	return c, nil
}
