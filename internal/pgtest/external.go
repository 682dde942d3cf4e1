package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// nextServer picks the external servers round-robin.
var nextServer atomic.Uint64

// external is a database on a ready server.
type external struct {
	admin *url.URL // the server's URL as configured

	mu  sync.Mutex
	dbs []string // databases to drop on close, in creation order
}

func newExternal(ctx context.Context, list string, opts Options) (*Cluster, error) {
	if len(opts.Settings) > 0 {
		return nil, fmt.Errorf("settings %v need a local cluster: %w", opts.Settings, ErrExternal)
	}
	var servers []string
	for s := range strings.SplitSeq(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("pgtest: %s lists no servers", envDatabases)
	}
	raw := servers[(nextServer.Add(1)-1)%uint64(len(servers))]
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("pgtest: %s: want postgres:// URLs, got %q", envDatabases, redact(raw))
	}
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %s: %w", envDatabases, err)
	}

	var b [8]byte
	rand.Read(b[:])
	c := &Cluster{
		name: opts.Name,
		host: cfg.Host,
		port: int(cfg.Port),
		db:   "pgtest_" + hex.EncodeToString(b[:]),
		ext:  &external{admin: u},
	}
	if _, err := c.CreateDatabase(ctx, c.db); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// databaseURL returns the server's URL with db as its database.
func (e *external) databaseURL(db string) string {
	u := *e.admin
	u.Path = "/" + db
	u.RawPath = ""
	return u.String()
}

func (e *external) track(db string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dbs = append(e.dbs, db)
}

// close drops the databases, newest first, with their replication slots.
func (e *external) close() error {
	e.mu.Lock()
	dbs := e.dbs
	e.dbs = nil
	e.mu.Unlock()
	if len(dbs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.admin.String())
	if err != nil {
		return fmt.Errorf("pgtest: drop test databases: %w", err)
	}
	defer conn.Close(ctx)
	var errs []error
	for i := len(dbs) - 1; i >= 0; i-- {
		if err := dropSlots(ctx, conn, dbs[i]); err != nil {
			errs = append(errs, err)
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{dbs[i]}.Sanitize()+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: drop database %s: %w", dbs[i], err))
		}
	}
	return errors.Join(errs...)
}

// dropSlots drops the replication slots of database db, terminating the
// backends that use them: DROP DATABASE refuses while any remain.
func dropSlots(ctx context.Context, conn *pgx.Conn, db string) error {
	for {
		rows, err := conn.Query(ctx,
			`SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1`, db)
		if err != nil {
			return fmt.Errorf("pgtest: list slots of %s: %w", db, err)
		}
		type slot struct {
			name string
			pid  *int32
		}
		slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
			var s slot
			return s, r.Scan(&s.name, &s.pid)
		})
		if err != nil {
			return fmt.Errorf("pgtest: list slots of %s: %w", db, err)
		}
		if len(slots) == 0 {
			return nil
		}
		for _, s := range slots {
			// Either may fail in a race with the slot's user; the next
			// round sees what is left.
			if s.pid != nil {
				conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *s.pid)
			} else {
				conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.name)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: drop slots of %s: %w", db, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// redact hides the password of a URL for error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
