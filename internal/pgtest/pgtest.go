// Package pgtest starts throw-away PostgreSQL clusters for tests, benchmarks
// and the demo.
//
// New copies a cached initdb template into a fresh temporary directory and
// starts postgres on a free loopback port with the settings pgcourier needs
// (wal_level=logical, track_commit_timestamp=on, room for replication slots)
// and none of the durability that only slows tests down (fsync=off). A warm
// start takes a fraction of a second, so every test can have its own
// clusters, several at once.
//
// In a test:
//
//	c := pgtest.Start(t) // closed when the test ends
//	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
//	conn := c.Connect(t)
//
// A local cluster is an ordinary child process: Kill crashes it like a power
// loss, Start brings it back through crash recovery on the same port and
// data, and Close removes every trace. When the test binary runs as root, the
// server runs as the unprivileged postgres account, since Postgres refuses to
// run as root.
//
// Two environment variables change where clusters come from:
//
//   - PGCOURIER_TEST_PGBIN names the directory holding initdb and postgres.
//     Without it pgtest tries /usr/lib/postgresql/15/bin, then
//     `pg_config --bindir`, then initdb on the PATH.
//   - PGCOURIER_TEST_DATABASES lists libpq URLs (comma-separated) of ready
//     servers, for example those of docker-compose.test.yml, reached as a
//     superuser and configured like a local cluster. New then creates a fresh
//     database on one of them instead of starting a cluster. Such a cluster
//     is External: Kill, Stop, Start and Restart return ErrExternal, and
//     RequireLocal skips tests that need them.
//
// Clusters live in directories named pgcourier-pgtest-* under os.TempDir(),
// next to the cached template (pgcourier-pgtemplate-*). New copies about a
// thousand files, so a TMPDIR on tmpfs (such as /dev/shm) makes it several
// times faster. A test binary that dies without closing its clusters takes
// their servers with it; the next test binary removes their directories.
//
// The package is Linux-only: it relies on process groups, the parent-death
// signal and /proc.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	envBinDir    = "PGCOURIER_TEST_PGBIN"
	envDatabases = "PGCOURIER_TEST_DATABASES"

	// startTimeout bounds how long Start waits for the server to accept
	// connections, crash recovery included.
	startTimeout = 30 * time.Second
	// stopTimeout bounds how long Stop waits for a fast shutdown.
	stopTimeout = 10 * time.Second
	// closeTimeout bounds how long Close waits before it kills the server.
	closeTimeout = 5 * time.Second
	// portAttempts is how many ports New tries when another process takes
	// the chosen one before postgres binds it.
	portAttempts = 3
	// maxSocketPath is the longest Unix socket path the kernel accepts.
	maxSocketPath = 107
)

// ErrExternal is returned by the operations that need a local cluster (Kill,
// Stop, Start, Restart) when the cluster is a database on a ready server
// named by PGCOURIER_TEST_DATABASES, and by New when Options.Settings cannot
// be applied to such a server.
var ErrExternal = errors.New("pgtest: not a local cluster (" + envDatabases + " is set)")

// baseSettings are the postgresql.conf settings every local cluster runs
// with, before Options.Settings.
var baseSettings = map[string]string{
	"wal_level":              "logical",
	"track_commit_timestamp": "on",
	"max_replication_slots":  "20",
	"max_wal_senders":        "20",
	"max_connections":        "60",
	"shared_buffers":         "32MB",
	"fsync":                  "off",
	"full_page_writes":       "off",
	"listen_addresses":       "127.0.0.1",
	"logging_collector":      "off",
	"log_min_messages":       "warning",
	// Dynamic shared memory in files under the data directory rather than
	// in /dev/shm, where a killed server would leave its segments behind.
	"dynamic_shared_memory_type": "mmap",
}

// managedSettings are chosen by pgtest for each cluster and cannot be
// overridden.
var managedSettings = []string{"port", "unix_socket_directories"}

// Options configure a cluster.
type Options struct {
	// Name labels the cluster in error messages, directory names and the
	// server's process titles (cluster_name). Optional.
	Name string
	// Settings add to or override the postgresql.conf settings every local
	// cluster runs with, e.g. {"wal_level": "replica"}. The port and
	// unix_socket_directories are chosen by pgtest and cannot be set.
	Settings map[string]string
}

// Cluster is a running throw-away PostgreSQL server, or a fresh database on a
// ready server when PGCOURIER_TEST_DATABASES is set. Its methods are safe for
// concurrent use. Close must be called to stop the server and remove its
// files.
type Cluster struct {
	name string
	host string
	port int
	db   string // default test database

	// Local clusters only.
	bin      string
	acct     *account
	dir      string   // per-cluster temporary directory, removed by Close
	dataDir  string   // PGDATA, inside dir
	sockDir  string   // unix_socket_directories, inside dir unless that is too long
	extraDir string   // sockDir when it could not live inside dir
	inUse    *os.File // holds a flock on dir's lock file while the cluster exists
	logPath  string   // postgres's stderr, inside dir
	settings []string // "key = 'value'" lines for pgtest.conf, without the port

	// External clusters only.
	ext *external

	mu     sync.Mutex
	proc   *process // the running postmaster, nil when stopped
	closed bool
}

// New returns a fresh, started cluster. Unlike Start, it needs no testing.TB,
// so programs such as the demo and the benchmarks can use it; the caller must
// Close the cluster.
func New(ctx context.Context, opts Options) (*Cluster, error) {
	if list := os.Getenv(envDatabases); strings.TrimSpace(list) != "" {
		return newExternal(ctx, list, opts)
	}
	return newLocal(ctx, opts)
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// confLines validates the settings and renders them as postgresql.conf
// lines, sorted by name.
func confLines(label string, extra map[string]string) ([]string, error) {
	all := maps.Clone(baseSettings)
	all["cluster_name"] = "pgtest"
	if label != "" {
		all["cluster_name"] = "pgtest-" + label
	}
	for k, v := range extra {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("pgtest: setting name %q is not valid", k)
		}
		if slices.Contains(managedSettings, strings.ToLower(k)) {
			return nil, fmt.Errorf("pgtest: setting %s is chosen by pgtest and cannot be set", k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return nil, fmt.Errorf("pgtest: setting %s: value contains a line break", k)
		}
		all[strings.ToLower(k)] = v
	}
	lines := make([]string, 0, len(all))
	for _, k := range slices.Sorted(maps.Keys(all)) {
		lines = append(lines, confLine(k, all[k]))
	}
	return lines, nil
}

func confLine(k, v string) string {
	return k + " = '" + strings.ReplaceAll(v, "'", "''") + "'"
}

var labelChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// label turns a cluster name into something safe for directory names and
// cluster_name, short enough to keep socket paths short.
func label(name string) string {
	s := labelChars.ReplaceAllString(name, "_")
	if len(s) > 24 {
		s = s[:24]
	}
	return s
}

func newLocal(ctx context.Context, opts Options) (*Cluster, error) {
	lbl := label(opts.Name)
	settings, err := confLines(lbl, opts.Settings)
	if err != nil {
		return nil, err
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}
	tmpl, err := ensureTemplate(ctx, os.TempDir(), bin, acct)
	if err != nil {
		return nil, err
	}

	sweepOnce()
	prefix := clusterPrefix
	if lbl != "" {
		prefix += lbl + "-"
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: create cluster directory: %w", err)
	}
	inUse, err := lockInUse(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: create cluster directory: %w", err)
	}
	c := &Cluster{
		name:     opts.Name,
		host:     "127.0.0.1",
		db:       "postgres",
		bin:      bin,
		acct:     acct,
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		sockDir:  filepath.Join(dir, "s"),
		logPath:  filepath.Join(dir, "postgres.log"),
		settings: settings,
		inUse:    inUse,
	}
	if err := c.prepare(tmpl); err != nil {
		c.Close()
		return nil, c.errorf("prepare cluster: %w", err)
	}

	// Another process may take the chosen port before postmaster binds it;
	// then try another one.
	for attempt := 1; ; attempt++ {
		if c.port, err = reservePort(); err != nil {
			err = fmt.Errorf("choose port: %w", err)
			break
		}
		if err = c.writeConf(); err != nil {
			break
		}
		c.mu.Lock()
		err = c.startLocked(ctx)
		c.mu.Unlock()
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, errPortInUse) || attempt == portAttempts {
			break
		}
		releasePort(c.port)
	}
	c.Close()
	return nil, c.errorf("%w", err)
}

// errorf formats an error that names the cluster when it has a name.
func (c *Cluster) errorf(format string, args ...any) error {
	if c.name == "" {
		return fmt.Errorf("pgtest: "+format, args...)
	}
	return fmt.Errorf("pgtest: cluster %s: "+format, append([]any{c.name}, args...)...)
}

// prepare fills the cluster directory: a copy of the template, the socket
// directory and the log file, all owned by the server account.
func (c *Cluster) prepare(tmpl string) error {
	if err := c.acct.chown(c.dir); err != nil {
		return err
	}
	if err := copyTree(tmpl, c.dataDir, c.acct); err != nil {
		return err
	}
	if len(c.sockDir)+len("/.s.PGSQL.65535") > maxSocketPath {
		// TMPDIR is too long for a Unix socket path: fall back to /tmp.
		d, err := os.MkdirTemp("/tmp", "pgtest-s-")
		if err != nil {
			return err
		}
		c.extraDir, c.sockDir = d, d
	} else if err := os.Mkdir(c.sockDir, 0o700); err != nil {
		return err
	}
	if err := c.acct.chown(c.sockDir); err != nil {
		return err
	}
	f, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return c.acct.chown(c.logPath)
}

// writeConf writes pgtest.conf, which the template's postgresql.conf
// includes at its end.
func (c *Cluster) writeConf() error {
	var b strings.Builder
	b.WriteString("# Written by pgtest for this cluster; overrides postgresql.conf.\n")
	for _, l := range c.settings {
		b.WriteString(l + "\n")
	}
	b.WriteString(confLine("port", strconv.Itoa(c.port)) + "\n")
	b.WriteString(confLine("unix_socket_directories", c.sockDir) + "\n")
	path := filepath.Join(c.dataDir, confInclude)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", confInclude, err)
	}
	return c.acct.chown(path)
}

// URL returns the libpq URL of the cluster's default test database, as
// superuser postgres. For a local cluster that is the postgres database on
// 127.0.0.1 with sslmode=disable; for an external one, the fresh database
// New created.
func (c *Cluster) URL() string { return c.DatabaseURL(c.db) }

// DatabaseURL returns the libpq URL of database db on the cluster's server,
// with the same user and options as URL.
func (c *Cluster) DatabaseURL(db string) string {
	if c.ext != nil {
		return c.ext.databaseURL(db)
	}
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", c.host, c.port, url.PathEscape(db))
}

// CreateDatabase creates database name on the cluster's server and returns
// its URL. On an external server Close drops it again.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	admin := c.URL()
	if c.ext != nil {
		admin = c.ext.admin.String() // the test database may not exist yet
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", c.errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if c.ext != nil {
		// Record it first, so that Close drops it even if a cancelled
		// context leaves its creation in doubt.
		c.ext.track(name)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", c.errorf("create database %s: %w", name, err)
	}
	return c.DatabaseURL(name), nil
}

// Host returns the host name or address of the cluster's server: 127.0.0.1
// for a local cluster.
func (c *Cluster) Host() string { return c.host }

// Port returns the TCP port of the cluster's server. A local cluster keeps
// its port across Kill, Stop and Start.
func (c *Cluster) Port() int { return c.port }

// External reports whether the cluster is a database on a ready server named
// by PGCOURIER_TEST_DATABASES rather than a local cluster.
func (c *Cluster) External() bool { return c.ext != nil }

// LogFile returns the path of the server log of a local cluster, which
// receives postgres's stderr at log_min_messages=warning (which still lets
// LOG lines such as startup and crash recovery through) unless Settings say
// otherwise. It is empty for an external cluster. Close removes it.
func (c *Cluster) LogFile() string { return c.logPath }

// Kill crashes a local cluster like a power loss: it freezes the postmaster
// and every one of its processes, sends them all SIGKILL, and returns once
// they are gone. Committed transactions survive (synchronous_commit stays
// on); Start runs crash recovery. Killing a stopped cluster does nothing.
func (c *Cluster) Kill() error {
	if c.ext != nil {
		return ErrExternal
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killLocked()
}

// Stop shuts a local cluster down cleanly (fast shutdown). If the server has
// not exited within about ten seconds, or ctx ends first, Stop kills it and
// returns an error. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop(ctx context.Context) error {
	if c.ext != nil {
		return ErrExternal
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx, stopTimeout)
}

// Start starts a local cluster again after Kill or Stop, with the same port
// and data, and returns once it accepts connections, after crash recovery
// if it was killed. Starting a running cluster does nothing.
func (c *Cluster) Start(ctx context.Context) error {
	if c.ext != nil {
		return ErrExternal
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.errorf("start postgres: cluster is closed")
	}
	if c.proc != nil && !c.proc.exited() {
		return nil
	}
	c.proc = nil
	if err := c.startLocked(ctx); err != nil {
		return c.errorf("%w", err)
	}
	return nil
}

// Restart stops a local cluster cleanly and starts it again.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx); err != nil {
		return err
	}
	return c.Start(ctx)
}

// Close stops the server, killing it if it does not stop within a few
// seconds, and removes every file of a local cluster. For an external cluster
// it drops the databases New and CreateDatabase created, after dropping
// their replication slots. Close is safe to call more than once; later calls
// do nothing and return nil.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ext != nil {
		if c.closed {
			return nil
		}
		c.closed = true
		return c.ext.close()
	}
	if c.dir == "" {
		return nil
	}
	var errs []error
	if c.proc != nil {
		if err := c.stopLocked(context.Background(), closeTimeout); err != nil && c.proc != nil {
			errs = append(errs, err)
		}
	}
	c.closed = true
	removeSharedMemory(c.dataDir)
	releasePort(c.port)
	for _, d := range []string{c.dir, c.extraDir} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	c.dir, c.extraDir = "", ""
	c.inUse.Close() // releases the flock
	if err := errors.Join(errs...); err != nil {
		return c.errorf("close: %w", err)
	}
	return nil
}
