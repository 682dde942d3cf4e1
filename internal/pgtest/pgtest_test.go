package pgtest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
)

// setting returns current_setting(name) on c's default database.
func setting(t *testing.T, c *Cluster, name string) string {
	t.Helper()
	var v string
	if err := c.Connect(t).QueryRow(t.Context(), "SELECT current_setting($1)", name).Scan(&v); err != nil {
		t.Fatalf("current_setting(%s): %v", name, err)
	}
	return v
}

// reachable reports whether c accepts connections.
func reachable(c *Cluster) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		return false
	}
	conn.Close(ctx)
	return true
}

func TestStartN(t *testing.T) {
	t.Parallel()
	cs := StartN(t, 4, Options{Name: "startn"})
	seen := map[int]bool{}
	for _, c := range cs {
		var one int
		if err := c.Connect(t).QueryRow(t.Context(), "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("SELECT 1 on port %d = %d, %v; want 1", c.Port(), one, err)
		}
		for name, want := range map[string]string{
			"wal_level":              "logical",
			"track_commit_timestamp": "on",
			"fsync":                  "off",
			"max_replication_slots":  "20",
			"listen_addresses":       "127.0.0.1",
		} {
			if got := setting(t, c, name); got != want {
				t.Errorf("port %d: %s = %q, want %q", c.Port(), name, got, want)
			}
		}
		if seen[c.Port()] {
			t.Errorf("port %d used by two clusters", c.Port())
		}
		seen[c.Port()] = true
		if c.External() || c.Host() != "127.0.0.1" {
			t.Errorf("External, Host = %v, %q; want false, 127.0.0.1", c.External(), c.Host())
		}
	}

	// Killing one of them (like a power cut) leaves the others running, and
	// the killed one comes back with its data.
	RequireLocal(t, cs[0])
	cs[1].Exec(t, "CREATE TABLE survivor (id int)")
	cs[1].Exec(t, "INSERT INTO survivor VALUES (1)")
	if err := cs[1].Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if reachable(cs[1]) {
		t.Error("killed cluster still answers")
	}
	for _, i := range []int{0, 2, 3} {
		if !reachable(cs[i]) {
			t.Errorf("cluster %d stopped answering when cluster 1 was killed", i)
		}
	}
	if err := cs[1].Start(t.Context()); err != nil {
		t.Fatalf("Start after Kill: %v", err)
	}
	var n int
	if err := cs[1].Connect(t).QueryRow(t.Context(), "SELECT count(*) FROM survivor").Scan(&n); err != nil || n != 1 {
		t.Errorf("after Kill and Start, survivor has %d rows, %v; want 1", n, err)
	}
}

func TestSettingsOverride(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Name: "replica", Settings: map[string]string{"wal_level": "replica", "application_name": "it's"}})
	if got := setting(t, c, "wal_level"); got != "replica" {
		t.Errorf("wal_level = %q, want replica", got)
	}
	if got := setting(t, c, "application_name"); got != "it's" {
		t.Errorf("application_name = %q, want it's", got)
	}
	if got := setting(t, c, "cluster_name"); got != "pgtest-replica" {
		t.Errorf("cluster_name = %q, want pgtest-replica", got)
	}
}

func TestManagedSettingsRefused(t *testing.T) {
	t.Parallel()
	for _, s := range []map[string]string{
		{"port": "5432"},
		{"unix_socket_directories": "/tmp"},
		{"wal_level = logical\nfsync": "on"},
		{"work_mem": "4MB\nfsync = on"},
	} {
		if _, err := New(t.Context(), Options{Settings: s}); err == nil {
			t.Errorf("New with Settings %q succeeded, want error", s)
		}
	}
}

func TestCrash(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Name: "crash"})
	RequireLocal(t, c)
	port := c.Port()
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")

	pid := postmasterPID(c)
	children := childrenOf(pid)
	if len(children) == 0 {
		t.Fatalf("postmaster %d has no children", pid)
	}
	if err := c.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if reachable(c) {
		t.Fatal("server reachable after Kill")
	}
	for _, ch := range children {
		if ch.alive() {
			t.Errorf("child pid %d alive after Kill", ch.pid)
		}
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Kill = %v, want ESRCH", pid, err)
	}
	if err := c.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}

	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("Start after Kill: %v", err)
	}
	if c.Port() != port {
		t.Errorf("Port after Start = %d, want %d", c.Port(), port)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := c.Connect(t).QueryRow(t.Context(), "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatalf("count rows: %v", err)
		}
		return n
	}
	if n := count(); n != 100 {
		t.Errorf("rows after crash = %d, want 100", n)
	}

	c.Exec(t, "INSERT INTO t VALUES ($1)", 101)
	if err := c.Restart(t.Context()); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if n := count(); n != 101 {
		t.Errorf("rows after Restart = %d, want 101", n)
	}
	if c.Port() != port {
		t.Errorf("Port after Restart = %d, want %d", c.Port(), port)
	}
}

func TestStopStart(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Name: "stop"})
	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if reachable(c) {
		t.Fatal("server reachable after Stop")
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after Stop: %v, want not exist", err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Errorf("Start while running: %v", err)
	}
	url, err := c.CreateDatabase(t.Context(), "other db")
	if err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	defer conn.Close(context.Background())
	var db string
	if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&db); err != nil || db != "other db" {
		t.Errorf("current_database() = %q, %v; want other db", db, err)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	for _, kill := range []bool{false, true} {
		c, err := New(t.Context(), Options{Name: "close"})
		if err != nil {
			t.Fatal(err)
		}
		dir, pid := c.dir, postmasterPID(c)
		if !strings.HasPrefix(filepath.Base(dir), "pgcourier-pgtest-close-") {
			t.Errorf("cluster directory %s, want a pgcourier-pgtest-close- prefix", dir)
		}
		shm := -1
		if kill {
			if err := c.Kill(); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			shm = shmID(t, c.dataDir)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close (after Kill: %v): %v", kill, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stat %s after Close: %v, want not exist", dir, err)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("kill(%d, 0) after Close = %v, want ESRCH", pid, err)
		}
		if shm >= 0 && shmExists(shm) {
			t.Errorf("shared memory segment %d left after Kill and Close", shm)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := c.Start(t.Context()); err == nil {
			t.Error("Start after Close succeeded, want error")
		}
	}
}

// shmID returns the System V shared memory id in postmaster.pid.
func shmID(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		t.Fatalf("postmaster.pid has %d lines, want at least 7", len(lines))
	}
	f := strings.Fields(lines[6])
	id := -1
	if len(f) == 2 {
		id, err = strconv.Atoi(f[1])
	}
	if err != nil || id < 0 {
		t.Fatalf("postmaster.pid line 7 = %q, want a key and an id", lines[6])
	}
	return id
}

// shmExists reports whether System V shared memory segment id exists.
func shmExists(id int) bool {
	const ipcStat = 2
	var buf [512]byte // larger than struct shmid_ds
	_, _, errno := syscall.Syscall(syscall.SYS_SHMCTL, uintptr(id), ipcStat, uintptr(unsafe.Pointer(&buf[0])))
	return errno == 0
}

func postmasterPID(c *Cluster) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc.cmd.Process.Pid
}

// TestTemplateReuse checks that New copies the cached template rather than
// building it again.
func TestTemplateReuse(t *testing.T) {
	t.Parallel()
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	acct, err := serverAccount()
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := ensureTemplate(t.Context(), os.TempDir(), bin, acct)
	if err != nil {
		t.Fatal(err)
	}
	stat := func() []os.FileInfo {
		t.Helper()
		var fis []os.FileInfo
		for _, p := range []string{filepath.Dir(tmpl), tmpl, filepath.Join(tmpl, "postgresql.conf")} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			fis = append(fis, fi)
		}
		return fis
	}
	before := stat()
	built := templateBuilds(filepath.Dir(tmpl))

	c := Start(t)
	c.Exec(t, "CREATE TABLE t (id int)")

	if got := templateBuilds(filepath.Dir(tmpl)); got != built {
		t.Errorf("New built the template again (%d builds, was %d)", got, built)
	}
	for i, after := range stat() {
		if !os.SameFile(before[i], after) || !after.ModTime().Equal(before[i].ModTime()) {
			t.Errorf("%s replaced or modified", after.Name())
		}
	}
}

// TestTemplateBuildRace builds a template in an empty cache from several
// goroutines at once: initdb runs once and all get the same template.
func TestTemplateBuildRace(t *testing.T) {
	t.Parallel()
	root, err := os.MkdirTemp("", "pgcourier-pgtemplate-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil { // the postgres account must get in
		t.Fatal(err)
	}
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	acct, err := serverAccount()
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	dirs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { dirs[i], errs[i] = ensureTemplate(t.Context(), root, bin, acct) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("ensureTemplate: %v", errs[i])
		}
		if dirs[i] != dirs[0] {
			t.Errorf("ensureTemplate = %s and %s, want the same", dirs[0], dirs[i])
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	base := filepath.Base(filepath.Dir(dirs[0]))
	if diff := cmp.Diff([]string{base, base + ".lock"}, names); diff != "" {
		t.Errorf("cache directory (-want +got):\n%s", diff)
	}
	if got := templateBuilds(filepath.Dir(dirs[0])); got != 1 {
		t.Errorf("template built %d times, want 1", got)
	}
	if !templateOK(dirs[0]) {
		t.Errorf("template %s incomplete", dirs[0])
	}
}

// TestPortTaken starts a cluster whose first chosen port is already held by
// another process: New moves to another port.
func TestPortTaken(t *testing.T) {
	// Not parallel: it replaces pickPort.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	orig := pickPort
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return orig()
	}
	t.Cleanup(func() { pickPort = orig })
	c := Start(t, Options{Name: "porttaken"})
	if c.Port() == taken {
		t.Fatalf("cluster on taken port %d", taken)
	}
	if calls < 2 {
		t.Errorf("pickPort called %d times, want at least 2", calls)
	}
	if !reachable(c) {
		t.Error("cluster unreachable")
	}
}

// TestExternal runs a cluster on a server named by PGCOURIER_TEST_DATABASES,
// here a local cluster, and checks that Close drops its database and slots.
func TestExternal(t *testing.T) {
	// Not parallel: it sets the environment.
	server := Start(t, Options{Name: "server"})
	RequireLocal(t, server)
	t.Setenv(envDatabases, " "+server.URL()+" ,")

	c, err := New(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.External() || c.Port() != server.Port() || c.Host() != "127.0.0.1" || c.LogFile() != "" {
		t.Errorf("External, Host, Port, LogFile = %v, %q, %d, %q; want true, 127.0.0.1, %d, empty",
			c.External(), c.Host(), c.Port(), c.LogFile(), server.Port())
	}
	conn := c.Connect(t)
	var db string
	if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(db, "pgtest_") {
		t.Errorf("current_database() = %q, want a pgtest_ prefix", db)
	}
	c.Exec(t, "SELECT pg_create_logical_replication_slot('pgtest_slot', 'test_decoding')")
	other, err := c.CreateDatabase(t.Context(), "pgtest_other")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(other, "/pgtest_other") {
		t.Errorf("CreateDatabase URL = %q, want database pgtest_other", other)
	}
	for _, err := range []error{c.Kill(), c.Stop(t.Context()), c.Start(t.Context()), c.Restart(t.Context())} {
		if !errors.Is(err, ErrExternal) {
			t.Errorf("lifecycle call on external cluster = %v, want ErrExternal", err)
		}
	}
	if _, err := New(t.Context(), Options{Settings: map[string]string{"wal_level": "replica"}}); !errors.Is(err, ErrExternal) {
		t.Errorf("New with Settings on external = %v, want ErrExternal", err)
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	var dbs, slots int
	sc := server.Connect(t)
	if err := sc.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtest%'").Scan(&dbs); err != nil {
		t.Fatal(err)
	}
	if err := sc.QueryRow(t.Context(), "SELECT count(*) FROM pg_replication_slots").Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if dbs != 0 || slots != 0 {
		t.Errorf("after Close: %d test databases, %d slots; want 0, 0", dbs, slots)
	}
}

func TestBinDir(t *testing.T) {
	t.Setenv(envBinDir, t.TempDir())
	if _, err := BinDir(); err == nil || !strings.Contains(err.Error(), envBinDir) {
		t.Errorf("BinDir with an empty %s = %v, want an error naming it", envBinDir, err)
	}
}

// TestSweep removes the directory of a cluster whose process died and keeps
// those of live and young clusters.
func TestSweep(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	old := time.Now().Add(-time.Hour)
	mk := func(name string, age time.Time, held bool) string {
		t.Helper()
		dir := filepath.Join(root, clusterPrefix+name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		f, err := lockInUse(dir)
		if err != nil {
			t.Fatal(err)
		}
		if held {
			t.Cleanup(func() { f.Close() })
		} else {
			f.Close()
		}
		if err := os.Chtimes(dir, age, age); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dead := mk("dead", old, false)
	live := mk("live", old, true)
	young := mk("young", time.Now(), false)
	other := filepath.Join(root, clusterPrefix+"other")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(other, old, old); err != nil {
		t.Fatal(err)
	}

	sweep(root, time.Minute)
	for dir, want := range map[string]bool{dead: false, live: true, young: true, other: true} {
		_, err := os.Stat(dir)
		if got := err == nil; got != want {
			t.Errorf("after sweep, %s exists = %v, want %v", filepath.Base(dir), got, want)
		}
	}
}
